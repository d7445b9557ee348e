"""The data page: what went into training, to look at, offline (TFDV's own HTML loads its viewer
from the web). Made from TFDV's statistics of each split, the validation findings and a few
examples: class counts, the per-image features (brightness, contrast, saturated share, exposure)
with the splits overlaid, sample faces of each class, and the anomalies, drift and skew found.
Pictures are embedded and links relative, so the page can be moved with the pipeline root."""
import html
import os

import numpy as np

from pipeline import artifacts
from pipeline.report import face_grid, figure_png, plt

FACES_PER_CLASS = 8
_FEATURES = (("mean_brightness", "mean brightness (0-255)"), ("contrast", "contrast (std of pixels)"),
             ("saturated_share", "share of pixels near 0 or 255"))


def write(path: str, statistics: dict[str, str], examples_dir: str, classes, image_size: int,
          findings: list[dict] | None, tfdv_pages: dict[str, str],
          train_split: str = "train") -> str:
    """The page at `path`: statistics {split: FeatureStats.pb}, the examples they describe, the
    findings of the ExampleValidator (None: it did not get to judge), TFDV's pages by split."""
    import tensorflow_data_validation as tfdv

    stats = {split: tfdv.load_stats_binary(p).datasets[0] for split, p in statistics.items()}
    counts = {split: _class_counts(s, len(classes)) for split, s in stats.items()}
    here = os.path.dirname(path)
    figures = [("Examples per class", _bars(counts, classes)),
               ("Per-image features, train vs eval vs test", _histograms(stats)),
               ("Exposure", _bars({s: _categories(d, "exposure") for s, d in stats.items()},
                                  None)),
               (f"Sample faces of the {train_split} split ({FACES_PER_CLASS} per class)",
                _faces(examples_dir, classes, image_size, train_split))]
    rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{int(d.num_examples):,}</td>"
        + "".join(f"<td>{n:,}</td>" for n in counts[s]) + "</tr>" for s, d in stats.items())
    links = " | ".join(f'<a href="{html.escape(os.path.relpath(p, here))}">{html.escape(s)}</a>'
                       for s, p in tfdv_pages.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>FER data</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
td,th{{padding:2px 10px;text-align:right}} td:first-child{{text-align:left}}
.stop{{color:#c0392b}}.warn{{color:#b9770e}}.noise{{color:#888888}}</style></head><body>
<h1>Data</h1>
<table><tr><th>split</th><th>examples</th>{''.join(f'<th>{html.escape(c)}</th>' for c in classes)}</tr>
{rows}</table>
<h2>Validation</h2>{_findings(findings)}
{''.join(f'<h2>{t}</h2><p><img src="data:image/png;base64,{f}"></p>' for t, f in figures if f)}
<p>TFDV's own statistics pages (they load their viewer from the web, so they are blank
offline): {links}</p>
</body></html>"""
    artifacts.makedirs(here)
    artifacts.write_text(path, page)
    return path


def _feature(dataset, name):
    return next((f for f in dataset.features if list(f.path.step) == [name] or f.name == name),
                None)


def _class_counts(dataset, n_classes: int) -> list[int]:
    """Examples per class, from the label's categorical statistics."""
    from pipeline.config import LABEL_FEATURE

    counts = [0] * n_classes
    label = _feature(dataset, LABEL_FEATURE)
    for bucket in label.string_stats.rank_histogram.buckets if label is not None else []:
        if bucket.label.isdigit() and int(bucket.label) < n_classes:
            counts[int(bucket.label)] = int(bucket.sample_count)
    return counts


def _categories(dataset, name: str) -> dict[str, int]:
    feature = _feature(dataset, name)
    if feature is None:
        return {}
    return {b.label: int(b.sample_count) for b in feature.string_stats.rank_histogram.buckets}


def _bars(values: dict[str, list[int] | dict[str, int]], classes) -> str | None:
    """Grouped bars, one group per class (or category), one bar per split, its count on it."""
    labels = list(classes) if classes else sorted({k for v in values.values() for k in v})
    if not labels:
        return None
    figure, ax = plt.subplots(figsize=(min(10, 2.5 + 1.3 * len(labels)), 3.8))
    width = 0.8 / len(values)
    x = np.arange(len(labels))
    for i, (split, counts) in enumerate(values.items()):
        heights = counts if classes else [counts.get(k, 0) for k in labels]
        bars = ax.bar(x + (i - (len(values) - 1) / 2) * width, heights, width, label=split)
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_ylabel("examples")
    ax.margins(y=0.15)
    ax.legend(ncols=len(values), loc="upper left", bbox_to_anchor=(0, -0.12), frameon=False)
    return figure_png(figure)


def _histograms(stats: dict) -> str | None:
    """Each numeric image feature as a histogram per split, as shares, overlaid."""
    figure, axes = plt.subplots(1, len(_FEATURES), figsize=(13, 3.5))
    drawn = False
    for ax, (name, title) in zip(axes, _FEATURES):
        for split, dataset in stats.items():
            feature = _feature(dataset, name)
            standard = [h for h in feature.num_stats.histograms if h.type == 0] if (
                feature is not None) else []
            if not standard or not standard[0].buckets:
                continue
            buckets = standard[0].buckets
            counts = np.array([b.sample_count for b in buckets])
            edges = [buckets[0].low_value] + [b.high_value for b in buckets]
            ax.stairs(counts / max(counts.sum(), 1), edges, label=split, linewidth=1.6)
            drawn = True
        ax.set(title=title, ylabel="share of the split")
        ax.legend(fontsize=8)
    if not drawn:
        plt.close(figure)
        return None
    figure.tight_layout()
    return figure_png(figure)


def _faces(examples_dir: str, classes, image_size: int, train_split: str) -> str | None:
    """The first faces of each class in the train split, one row per class."""
    import tensorflow as tf

    from pipeline.config import LABEL_FEATURE, PIXELS_FEATURE

    files = artifacts.example_files(examples_dir, train_split)
    if not files:
        return None
    spec = {LABEL_FEATURE: tf.io.FixedLenFeature([], tf.int64),
            PIXELS_FEATURE: tf.io.FixedLenFeature([image_size * image_size], tf.int64)}
    found = {c: [] for c in range(len(classes))}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(20000)
    for record in records:
        example = tf.io.parse_single_example(record, spec)
        label = int(example[LABEL_FEATURE])
        if label in found and len(found[label]) < FACES_PER_CLASS:
            found[label].append(example[PIXELS_FEATURE].numpy().reshape(image_size, image_size))
        if all(len(f) == FACES_PER_CLASS for f in found.values()):
            break
    return face_grid([[(image, None) for image in found[c]] for c in range(len(classes))],
                     classes, FACES_PER_CLASS, cell=0.95)


def _findings(findings: list[dict] | None) -> str:
    if findings is None:
        return "<p>Not validated.</p>"
    if not findings:
        return "<p>No anomaly, skew or drift found.</p>"
    rows = "".join(
        f'<tr class="{html.escape(f.get("action", ""))}"><td>{html.escape(f["check"])}</td>'
        f'<td>{html.escape(f["split"])}</td><td>{html.escape(f["feature"])}</td>'
        f'<td style="text-align:left">{html.escape(f["what"])}</td>'
        f'<td>{html.escape(f.get("action", ""))}</td></tr>' for f in findings)
    return (f"<table><tr><th>check</th><th>split</th><th>feature</th><th>what</th>"
            f"<th>action</th></tr>{rows}</table>")
