"""A model card for each pushed version, as JSON and as an offline HTML page, written by the
Pusher into the version's folder (model_card.json, model_card.html).

The fields are those of the Model Card Toolkit's schema (model_details, model_parameters with its
datasets, quantitative_analysis.performance_metrics with slices, intervals and thresholds,
considerations), written here because the toolkit is not among the pinned dependencies: each
dataset also carries its counts per class, and each gated metric its gate as `threshold`.
"""
import datetime
import html
import json

from pipeline import artifacts
from pipeline.artifact_types import SERVING_MODEL

SCHEMA = ("Model Card Toolkit's fields (model_card_toolkit, schema v0.0.2), written without the "
          "toolkit; datasets carry counts per class and metrics their gates as thresholds")

INTENDED_USE = [
    "Recognising one of the trained expression classes on a frontal, roughly centred face, cut "
    "out and scaled to 48x48 grayscale pixels (pipeline.predict finds and cuts out faces in "
    "photos), in data like FER2013: web images of posed and spontaneous expressions.",
    "Research, teaching and aggregate, consented uses, such as measuring how a pipeline change "
    "moves accuracy, or counting expressions over many frames.",
]
LIMITATIONS = [
    "Only frontal faces at 48x48 grayscale: profiles, occlusions (masks, hands, glasses), extreme "
    "lighting, very small or blurred faces and crops that are not centred on one face are outside "
    "what it was trained on, and its answers there are not measured.",
    "It names a displayed expression, not what a person feels: expressions differ between people, "
    "cultures and situations, and FER2013's labels are single annotators' readings.",
    "Accuracy differs between classes (see the per-class accuracies; Disgust and Fear are the "
    "weakest on FER2013) and is measured only on data like the evaluation split below.",
    "Its accuracy across age, gender, skin tone and other groups of people has not been "
    "measured: the data carries no such attributes.",
]
ETHICS = [
    {"name": "Not for decisions about people.",
     "mitigation_strategy": "Do not use it to hire, admit, grade, police, diagnose, price or "
                            "otherwise decide anything about a person, nor to infer emotions "
                            "for surveillance: such uses are outside its intended use."},
    {"name": "Faces are personal data.",
     "mitigation_strategy": "Process faces only with the consent and legal basis their owners' "
                            "laws require; the pipeline keeps no images beyond its own data "
                            "folders."},
]


def build(model_name: str, evaluation: dict, training: dict, examples: dict,
          infra: dict | None, exports: dict | None, commit: str, classes: tuple[str, ...],
          split_roles: dict) -> dict:
    """The card of a model about to be pushed (Pusher fills in its version with `complete`).
    evaluation: evaluation.json; training: training.json; examples: ExampleGen's counts.json;
    infra: infra_blessing.json; exports: the Exporter's exports.json; split_roles:
    ingest.json's (which split trained the model, which chose its epoch)."""
    classes = list(classes)
    tested = dict(zip(classes, (sum(row) for row in evaluation["confusion_matrix"])))
    candidate = evaluation["metrics"]["candidate"]
    floors = evaluation["gates"]["floors"]
    intervals = evaluation.get("intervals", {})

    def floor(metric, name=None):
        bound = floors.get(metric)
        return bound.get(name, bound.get("default")) if isinstance(bound, dict) else bound

    def metric(kind, value, part, interval=None, threshold=None, description=""):
        entry = {"type": kind, "value": value, "slice": part}
        if interval:
            entry["confidence_interval"] = {"lower_bound": interval["low"],
                                            "upper_bound": interval["high"]}
        if threshold is not None:
            entry["threshold"] = threshold
        if description:
            entry["description"] = description
        return entry

    level = f"{evaluation['gates']['confidence']:.0%}"
    gate = f"floor, judged on the {level} interval"
    metrics = [metric("accuracy", candidate["accuracy"], "overall", intervals.get("accuracy"),
                      floor("accuracy"), gate)]
    if candidate.get("macro_accuracy") is not None:
        metrics.append(metric("macro_accuracy", candidate["macro_accuracy"], "overall",
                              intervals.get("macro_accuracy"), floor("macro_accuracy"), gate))
    for name in classes:
        judged = name not in evaluation.get("not_judged", {})
        metrics.append(metric(
            "accuracy (top-1 recall)", candidate["class_accuracy"].get(name), f"class={name}",
            intervals.get(name), floor("class_accuracy", name),
            gate if judged else f"not judged: fewer than "
                                f"{evaluation['gates']['min_class_examples']} examples"))
    baseline = evaluation["metrics"].get("baseline")
    if baseline:
        metrics.append(metric("accuracy of the model serving before", baseline["accuracy"],
                              "overall", description=f"{evaluation['baseline']}; largest drop "
                              f"allowed: {evaluation['gates']['max_drop_vs_serving']}"))
    for name, export in ((exports or {}).get("exports") or {}).items():
        parity = exports["parity"]
        metrics.append(metric(
            f"accuracy, {export['format']}", export.get("accuracy"), "overall",
            threshold=f"not shown behind the SavedModel by more than {parity['accuracy']} "
                      f"overall, {parity['class_accuracy']} in each judged class",
            description=("shipped in exports/" if export["shipped"] else
                         "not shipped: " + "; ".join(export["reasons"]))))
    for name, signature in ((infra or {}).get("signatures") or {}).items():
        for batch, timed in ((signature.get("latency_ms") or {}).items()):
            if isinstance(timed, dict):
                metrics.append(metric("latency ms, median / p99", [timed["median"],
                                                                    timed["p99"]],
                                      f"signature={name}, {batch}",
                                      description="measured by the InfraValidator on the "
                                                  "pipeline's machine"))

    def dataset(name, description, counts, link):
        return {"name": name, "link": link, "description": description,
                "counts": {"total": sum(counts.values()), **counts},
                "sensitive": {"sensitive_data": ["faces"]}}

    sources = ", ".join(examples.get("files") or [examples.get("input", "")])
    written = examples.get("written", {})
    fit, watched = split_roles["train"], split_roles["eval"]
    trained_on = dataset(
        f"{fit} split", f"{written.get(fit, '?')} faces of {sources} (ExampleGen's {fit} "
        f"split; {training['examples_per_split'].get(watched, '?')} more, the {watched} split, "
        f"chose the best epoch)", training.get("train_class_counts", {}), training.get("examples"))
    evaluated_on = dataset(
        f"{evaluation['split']} split", f"{evaluation['examples']} faces: the {evaluation['split']}"
        f" split of {', '.join(evaluation['examples_from'])}", tested,
        evaluation["examples_from"][0])
    blessed = "BLESSED by the Evaluator" + (
        ", INFRA_BLESSED by the InfraValidator" if infra and infra.get("blessed") else "")
    return {
        "schema": SCHEMA,
        "model_details": {
            "name": model_name,
            "overview": (f"A convolutional network that names the facial expression of a 48x48 "
                         f"grayscale face as one of {', '.join(classes)}. {blessed}: accuracy "
                         f"{candidate['accuracy']:.3f} on {evaluation['examples']} "
                         f"{evaluation['split']} faces."),
            "version": {"name": None, "date": None, "diff": (
                f"fine-tuned from {training['warm_start'].get('base_model')}"
                if training.get("warm_start") else "trained from random weights")},
            "documentation": "README.md and ARCHITECTURE.md of the pipeline that made it",
            "references": [{"reference": f"pipeline code at commit {commit}"}],
            "path": None,
        },
        "model_parameters": {
            "model_architecture": "the seed CNN (ARCHITECTURE.md, 'The model'): four convolution "
                                  "blocks, two dense blocks, softmax; per-image standardisation "
                                  "inside the model",
            "input_format": "serving_default: serialized tf.Examples with 'pixels' (2304 "
                            "integers 0-255); serve_images: uint8 [N, 48, 48, 1]; serve_pixels: "
                            "the CSV's space-separated pixel strings",
            "output_format": "probabilities [N, classes], class_id [N], class_name [N]",
            "data": [trained_on, evaluated_on],
            "training": {k: training.get(k) for k in ("epochs_run", "best_epoch", "best_eval",
                                                      "config")},
        },
        "quantitative_analysis": {"performance_metrics": metrics},
        "considerations": {
            "users": [{"description": "Engineers and researchers who build and evaluate "
                                      "expression recognition."}],
            "use_cases": [{"description": d} for d in INTENDED_USE],
            "limitations": [{"description": d} for d in LIMITATIONS],
            "tradeoffs": [{"description": d} for d in _tradeoffs(exports)],
            "ethical_considerations": ETHICS,
        },
    }


def _tradeoffs(exports: dict | None) -> list[str]:
    found = (exports or {}).get("exports") or {}
    small, large = found.get("int8") or {}, found.get("float32") or {}
    if not (small.get("bytes") and large.get("bytes") and small.get("latency_ms")
            and large.get("latency_ms")):
        return ["The SavedModel is what was evaluated; on-device exports were not measured."]
    return [f"The int8 TensorFlow Lite model is {large['bytes'] / small['bytes']:.1f} times "
            f"smaller than the float32 one ({small['bytes'] / 1e6:.1f} MB against "
            f"{large['bytes'] / 1e6:.1f} MB) and answers one image in "
            f"{small['latency_ms']['median']:.1f} ms against {large['latency_ms']['median']:.1f}"
            f" ms (median, one thread, the pipeline's machine), at the accuracies shown above."]


def complete(card: dict, version: int, path: str) -> dict:
    """The card with its version: number, date (UTC) and where it is served from."""
    details = card["model_details"]
    return {**card, "model_details": {
        **details, "path": path,
        "version": {**details["version"], "name": str(version),
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                        "%Y-%m-%d %H:%M:%S UTC")}}}


def write(folder: str, card: dict) -> None:
    """model_card.json and model_card.html into a version's folder."""
    artifacts.write_text(SERVING_MODEL.path(folder, "card"), json.dumps(card, indent=2))
    artifacts.write_text(SERVING_MODEL.path(folder, "card_page"), page(card))


def page(card: dict) -> str:
    """The card as one offline HTML page (no scripts, no links out)."""
    e = html.escape
    details, parameters = card["model_details"], card["model_parameters"]
    considerations = card["considerations"]

    def value(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list):
            return " / ".join(value(x) for x in v)
        return "n/a" if v is None else e(str(v))

    def interval(m):
        bounds = m.get("confidence_interval")
        return value([bounds["lower_bound"], bounds["upper_bound"]]) if bounds else ""

    rows = "".join(
        f"<tr><td>{e(m['type'])}</td><td>{e(m['slice'])}</td><td>{value(m['value'])}</td>"
        f"<td>{interval(m)}</td><td>{value(m.get('threshold', ''))}</td>"
        f"<td>{e(m.get('description', ''))}</td></tr>"
        for m in card["quantitative_analysis"]["performance_metrics"])
    data = "".join(
        f"<h3>{e(d['name'])}</h3><p>{e(d['description'])}</p><table><tr>"
        + "".join(f"<th>{e(k)}</th>" for k in d["counts"]) + "</tr><tr>"
        + "".join(f"<td>{n:,}</td>" for n in d["counts"].values()) + "</tr></table>"
        for d in parameters["data"])

    def items(entries, key="description"):
        return "<ul>" + "".join(f"<li>{e(x[key])}</li>" for x in entries) + "</ul>"

    ethics = "<ul>" + "".join(f"<li><b>{e(x['name'])}</b> {e(x['mitigation_strategy'])}</li>"
                              for x in considerations["ethical_considerations"]) + "</ul>"
    version = details["version"]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Model card: {e(details['name'])} version {e(str(version['name']))}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:2px 8px;
text-align:left;vertical-align:top}}table{{border-collapse:collapse}}tr:nth-child(even){{
background:#f4f4f4}}</style></head><body>
<h1>Model card: {e(details['name'])}, version {e(str(version['name']))}</h1>
<p>{e(details['overview'])}</p>
<p>Pushed {e(str(version['date']))} to {e(str(details['path']))}; {e(version['diff'])};
{e(details['references'][0]['reference'])}.</p>
<h2>Intended use</h2>{items(considerations['use_cases'])}
<h2>Limits</h2>{items(considerations['limitations'])}
<h2>Ethical considerations</h2>{ethics}
<h2>Model</h2><p>{e(parameters['model_architecture'])}.<br>Input: {e(parameters['input_format'])}.
<br>Output: {e(parameters['output_format'])}.</p>
<h2>Data</h2>{data}
<h2>Performance and gates</h2>
<table><tr><th>metric</th><th>slice</th><th>value</th><th>interval</th><th>gate</th><th></th>
</tr>{rows}</table>
<h2>Trade-offs</h2>{items(considerations['tradeoffs'])}
<p><small>{e(card['schema'])}.</small></p>
</body></html>"""
