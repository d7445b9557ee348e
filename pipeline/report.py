"""One HTML page per run, to look at rather than read: the blessing, the confusion matrix, per-class
accuracy against its gates, training curves, and a link to the TFDV statistics."""
import base64
import csv
import html
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

from pipeline import artifacts  # noqa: E402


def write(path: str, evaluation: dict, history_csv: str, data_page: str,
          pushed: dict, training: dict, examples_dir: str | None = None) -> str:
    """The page, at `path` (local or object storage); its links are relative, so the pipeline
    root can be moved or copied whole. With examples_dir: the faces the model got most wrong."""
    classes = evaluation["classes"]
    metrics = evaluation["metrics"]
    verdict = "BLESSED" if evaluation["blessed"] else "NOT BLESSED"
    outcome = (f"pushed as version {pushed['version']}: {pushed['path']}" if pushed["pushed"]
               else "not pushed; the serving model is unchanged")
    if pushed.get("why"):  # refused after the blessing: by the InfraValidator
        outcome = f"not pushed. {pushed['why'].rstrip('.')}"
    outcome += "".join(f". TensorFlow Lite {name}: {how}"
                       for name, how in (pushed.get("exports") or {}).items())
    if pushed.get("model_card"):
        outcome += f". Model card: {pushed['model_card']}"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in evaluation["reasons"])
    link = os.path.relpath(data_page, os.path.dirname(path))
    figures = [("Confusion matrix", _confusion(evaluation["confusion_matrix"], classes)),
               ("Per-class accuracy", _per_class(evaluation, classes)),
               ("Training", _curves(history_csv, training.get("best_epoch"))),
               (f"Most confident mistakes on the {evaluation['split']} split",
                _mistakes(evaluation, examples_dir) if examples_dir else None)]
    models = ["candidate", *(["baseline"] if "baseline" in metrics else [])]
    header = "".join(f"<th>{'this model' if m == 'candidate' else 'serving model'}</th>"
                     for m in models)
    numbers = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{_number(metrics[m].get(key))}</td>"
                                          for m in models)
        + "</tr>" for key, label in (("accuracy", "overall accuracy"),
                                     ("macro_accuracy", "macro-averaged accuracy")))
    sources = evaluation.get("examples_from") or []
    unjudged = evaluation.get("not_judged") or {}
    evidence = (f"<p>Judged on the {evaluation['split']} split of " + (
        "this run's data" if len(sources) <= 1 else
        f"this run's data and of {len(sources) - 1} earlier validated run(s) on other data "
        f"(the gates ask for {evaluation['gates']['min_examples']:,} examples)")
        + ": " + ", ".join(html.escape(s) for s in sources) + ". A floor fails only when the "
        f"whole {evaluation['gates']['confidence']:.0%} interval lies below it; a drop against "
        f"the serving model only when it is beyond the allowed one and its paired interval "
        f"lies wholly below 0."
        + ("".join(f"<br>Not judged: class {html.escape(c)}, only {n} {evaluation['split']} "
                   f"example(s) (fewer than {evaluation['gates']['min_class_examples']})"
                   for c, n in unjudged.items())) + "</p>") if sources else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>FER run: {verdict}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
.ok{{color:#1a7f37}}.no{{color:#c0392b}}img{{max-width:100%}}td,th{{padding:2px 10px}}
th{{text-align:left}}</style>
</head><body>
<h1 class="{'ok' if evaluation['blessed'] else 'no'}">{verdict}</h1>
<p>Model {html.escape(evaluation['model'])}: {html.escape(outcome)}.<br>
Compared with {html.escape(evaluation['baseline'] or 'no serving model (first push)')}.<br>
The data it was trained on: <a href="{html.escape(link)}">{html.escape(link)}</a></p>
{f'<h2>Why not</h2><ul>{reasons}</ul>' if reasons else ''}{evidence}
<table><tr><th>{evaluation['examples']:,} {evaluation['split']} examples</th>{header}</tr>
{numbers}{_training_rows(training)}</table>
{''.join(f'<h2>{t}</h2><p><img src="data:image/png;base64,{f}"></p>' for t, f in figures if f)}
</body></html>"""
    artifacts.makedirs(os.path.dirname(path))
    artifacts.write_text(path, page)
    return path


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _training_rows(training: dict) -> str:
    """How the model was trained: its start, and the batch-norm gap on eval (training-mode minus
    inference-mode accuracy at the best epoch; near 0 when the statistics fit the weights)."""
    start = (training.get("warm_start") or {}).get("base_model")
    rows = [("started from", html.escape(start) if start else "random weights (from scratch)"),
            ("best epoch", f"{training['best_epoch']} of {training['epochs_run']}")]
    gap = training.get("batch_norm_gap")
    if gap:
        rows.append(("eval accuracy, batch-norm in inference / training mode",
                     f"{gap['inference_mode']:.3f} / {gap['training_mode']:.3f} "
                     f"(gap {gap['gap']:+.3f})"))
    return "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)


def figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _confusion(matrix, classes) -> str:
    """Counts, and shares of each actual class (rows sum to 100%), side by side."""
    counts = np.array(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, values, title, text in (
            (axes[0], shares, "examples", lambda i, j: f"{counts[i, j]}"),
            (axes[1], shares, "share of the actual class", lambda i, j: f"{shares[i, j]:.0%}")):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=1)
        for (i, j), share in np.ndenumerate(shares):
            ax.text(j, i, text(i, j), ha="center", va="center", fontsize=8,
                    color="white" if share > 0.5 else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
               ylabel="actual", title=title)
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
    figure.tight_layout()
    return figure_png(figure)


def _per_class(evaluation, classes) -> str:
    values = [evaluation["metrics"]["candidate"]["class_accuracy"][c] for c in classes]
    floors = evaluation["gates"]["floors"].get("class_accuracy", {})
    x = np.arange(len(classes))
    figure, ax = plt.subplots(figsize=(9, 4))
    baseline = evaluation["metrics"].get("baseline")
    width = 0.4 if baseline else 0.7
    intervals = evaluation.get("intervals", {})
    spans = np.array([[(v or 0) - intervals[c]["low"], intervals[c]["high"] - (v or 0)]
                      if c in intervals else [0, 0] for c, v in zip(classes, values)]).T
    spans = np.maximum(spans, 0)  # a class all right: its Wilson bound is 1 - 2e-16 in floats
    bars = ax.bar(x - (width / 2 if baseline else 0), [v or 0 for v in values], width,
                  label="this model", yerr=spans if intervals else None, capsize=3,
                  ecolor="#555555")
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    if baseline:
        served = ax.bar(x + width / 2, [baseline["class_accuracy"][c] or 0 for c in classes],
                        width, label="serving model", color="#bbbbbb")
        ax.bar_label(served, fmt="%.2f", fontsize=8, padding=2)
    bounds = [floors.get(c, floors.get("default")) for c in classes]
    if any(b is not None for b in bounds):
        ax.scatter(x, [b if b is not None else np.nan for b in bounds], marker="_", s=900,
                   color="#c0392b", label="floor (gate)", zorder=3)
    ax.set(xticks=x, ylim=(0, 1.1), ylabel="accuracy (top-1 recall)")
    ax.set_xticklabels(classes)
    ax.legend(ncols=3, loc="upper left", bbox_to_anchor=(0, -0.08), frameon=False)
    return figure_png(figure)


def _curves(history_csv: str, best_epoch: int | None) -> str | None:
    if not artifacts.exists(history_csv):
        return None
    rows = list(csv.DictReader(io.StringIO(artifacts.read_text(history_csv))))
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [float(r[metric]) for r in rows], "o-", label="train")
        ax.plot(epochs, [float(r["val_" + metric]) for r in rows], "o-", label="eval")
        if metric == "accuracy" and rows[0].get("val_accuracy_batch_stats"):
            ax.plot(epochs, [float(r["val_accuracy_batch_stats"]) for r in rows], "--",
                    label="eval, batch-norm in training mode")
        if best_epoch:
            ax.axvline(best_epoch, color="#888888", linestyle=":",
                       label=f"best epoch ({best_epoch}): the model kept")
        ax.set(xlabel="epoch", title=metric)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def _mistakes(evaluation: dict, examples_dir: str, per_class: int = 4) -> str | None:
    """For each actual class, the faces the model put in another class most confidently."""
    import tensorflow as tf

    from pipeline import serving
    from pipeline.config import LABEL_FEATURE, PIXELS_FEATURE

    files = artifacts.example_files(examples_dir, evaluation["split"])
    if not files:
        return None
    model = serving.load(evaluation["model"])
    labels, images, answers = [], [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256):
        answer = model.signatures["serving_default"](examples=batch)
        parsed = tf.io.parse_example(batch, {LABEL_FEATURE: tf.io.FixedLenFeature([], tf.int64),
                                             PIXELS_FEATURE: tf.io.VarLenFeature(tf.int64)})
        labels.append(parsed[LABEL_FEATURE].numpy())
        images.append(tf.sparse.to_dense(parsed[PIXELS_FEATURE]).numpy())
        answers.append(answer["probabilities"].numpy())
    labels, images, probabilities = map(np.concatenate, (labels, images, answers))
    predicted = probabilities.argmax(axis=1)
    classes = evaluation["classes"]
    chosen = most_confident_mistakes(labels, probabilities, len(classes), per_class)
    side = int(round(np.sqrt(images.shape[1])))
    return face_grid([[(images[k].reshape(side, side),
                        f"as {classes[predicted[k]]} {probabilities[k].max():.2f}")
                       for k in found] for found in chosen], classes, per_class, cell=1.5)


def face_grid(rows: list[list[tuple]], labels, columns: int, cell: float = 1.0) -> str:
    """Faces in rows of `columns`, one row per label; each face is (image, title or None); a row
    with fewer faces leaves its cells blank."""
    figure, axes = plt.subplots(len(rows), columns, figsize=(columns * cell, len(rows) * cell),
                                squeeze=False)
    for label, faces, row in zip(labels, rows, axes):
        for i, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if i < len(faces):
                image, title = faces[i]
                ax.imshow(image, cmap="gray", vmin=0, vmax=255)
                if title:
                    ax.set_title(title, fontsize=7)
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    figure.tight_layout()
    return figure_png(figure)


def most_confident_mistakes(labels, probabilities, n_classes: int, per_class: int) -> list:
    """For each actual class, the indices of its examples predicted as another class, the most
    confident first (stable for ties)."""
    predicted = probabilities.argmax(axis=1)
    chosen = []
    for c in range(n_classes):
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        chosen.append(wrong[np.argsort(-probabilities[wrong].max(axis=1), kind="stable")]
                      [:per_class].tolist())
    return chosen
