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


def write(path: str, evaluation: dict, history_csv: str, statistics_html: str,
          pushed: dict, training: dict) -> str:
    """The page, at `path` (local or object storage); its links are relative, so the pipeline
    root can be moved or copied whole."""
    classes = evaluation["classes"]
    metrics = evaluation["metrics"]["candidate"]
    verdict = "BLESSED" if evaluation["blessed"] else "NOT BLESSED"
    outcome = (f"pushed as version {pushed['version']}: {pushed['path']}" if pushed["pushed"]
               else "not pushed; the serving model is unchanged")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in evaluation["reasons"])
    link = os.path.relpath(statistics_html, os.path.dirname(path))
    figures = [_confusion(evaluation["confusion_matrix"], classes),
               _per_class(evaluation, classes), _curves(history_csv)]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>FER run: {verdict}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
.ok{{color:#1a7f37}}.no{{color:#c0392b}}img{{max-width:100%}}td{{padding:2px 10px}}</style>
</head><body>
<h1 class="{'ok' if evaluation['blessed'] else 'no'}">{verdict}</h1>
<p>Model {html.escape(evaluation['model'])}: {html.escape(outcome)}.<br>
Compared with {html.escape(evaluation['baseline'] or 'no serving model (first push)')}.</p>
{f'<h2>Why not</h2><ul>{reasons}</ul>' if reasons else ''}
<table><tr><td>{evaluation['split']} examples</td><td>{evaluation['examples']:,}</td></tr>
<tr><td>overall accuracy</td><td>{metrics['accuracy']:.3f}</td></tr>
<tr><td>macro-averaged accuracy</td><td>{metrics['macro_accuracy']:.3f}</td></tr>
{_training_rows(training)}</table>
{''.join(f'<p><img src="data:image/png;base64,{f}"></p>' for f in figures if f)}
<p>Data statistics (TFDV): <a href="{html.escape(link)}">{html.escape(link)}</a></p>
</body></html>"""
    artifacts.makedirs(os.path.dirname(path))
    artifacts.write_text(path, page)
    return path


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


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _confusion(matrix, classes) -> str:
    counts = np.array(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, n, ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="actual", title="Confusion matrix (counts; colour: share of the actual class)")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    figure.colorbar(image, ax=ax)
    return _png(figure)


def _per_class(evaluation, classes) -> str:
    values = [evaluation["metrics"]["candidate"]["class_accuracy"][c] for c in classes]
    floors = evaluation["gates"]["floors"].get("class_accuracy", {})
    x = np.arange(len(classes))
    figure, ax = plt.subplots(figsize=(8, 4))
    baseline = evaluation["metrics"].get("baseline")
    width = 0.4 if baseline else 0.7
    ax.bar(x - (width / 2 if baseline else 0), values, width, label="this model")
    if baseline:
        ax.bar(x + width / 2, [baseline["class_accuracy"][c] for c in classes], width,
               label="serving model", color="#bbbbbb")
    bounds = [floors.get(c, floors.get("default")) for c in classes]
    if any(b is not None for b in bounds):
        ax.scatter(x, [b if b is not None else np.nan for b in bounds], marker="_", s=900,
                   color="#c0392b", label="floor", zorder=3)
    ax.set(xticks=x, ylim=(0, 1), ylabel="accuracy (top-1 recall)",
           title="Per-class accuracy against its gate")
    ax.set_xticklabels(classes)
    ax.legend(loc="lower right")
    return _png(figure)


def _curves(history_csv: str) -> str | None:
    if not artifacts.exists(history_csv):
        return None
    rows = list(csv.DictReader(io.StringIO(artifacts.read_text(history_csv))))
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [float(r[metric]) for r in rows], "o-", label="train")
        ax.plot(epochs, [float(r["val_" + metric]) for r in rows], "o-", label="eval")
        if metric == "accuracy" and rows[0].get("val_accuracy_batch_stats"):
            ax.plot(epochs, [float(r["val_accuracy_batch_stats"]) for r in rows], "--",
                    label="eval, batch-norm in training mode")
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    return _png(figure)
