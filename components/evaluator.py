"""Evaluator: TFMA on the evaluation examples (the test split); overall, per-class and macro
accuracy, the confusion matrix, and the blessing: every gate of the gating config passed, fixed
floors and, when a model is serving, the allowed drop against it, judged on the evidence the
examples give.

Per-class accuracy is top-1 recall: of the examples of class c, the share whose argmax is c,
read off TFMA's multi-class confusion matrix (row c: its diagonal over its sum); macro accuracy
is their mean. Configurations that look right are not: binarize + SparseCategoricalAccuracy is
one-vs-rest accuracy (about 0.86 for a model that knows nothing); Recall with class_id thresholds
the softmax at 0.5; and Recall(top_k=1) with class_id reads 1.0 for a class the model never
predicts (measured with TFMA 0.47.1), so it would let such a model through.

Gates on evidence. An accuracy measured on k examples is uncertain by about 1/sqrt(k): one Disgust
face of 63 must not decide a blessing. So a floor blocks only when the Wilson interval (at the
config's `confidence`) lies wholly below it, and the comparison with the serving model is paired,
on the same examples: of the examples only one of the two models gets right, how many each gets
(TFMA's flip-rate idea, per class, PairedOutcomes below); the candidate is blocked when it fell
behind by more than the allowed drop and the whole interval of its accuracy minus the serving
model's (Wald with Agresti and Min's +0.5 per cell, the interval of McNemar's setting) lies below
0: a drop both too large and real, as validation asks of a change. A class with fewer than
`min_class_examples` examples is not judged at all, and says so; macro accuracy is the mean over
the judged classes.

Output layout (output_dir):
    tfma/                TFMA's metrics, plots and validation result (tfma.load_eval_result)
    evaluation.json      metrics of the candidate (and baseline), confusion matrix, intervals,
                         the classes not judged, the blessing and its reasons
    BLESSED | NOT_BLESSED  marker file, as TFX's Evaluator writes
"""
import dataclasses
import json
import math

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions
from scipy.stats import norm
from tfx_bsl.public import tfxio
from tensorflow_model_analysis.metrics import metric_types, metric_util

from pipeline import artifacts, serving
from pipeline.artifact_types import EVALUATION
from pipeline.config import LABEL_FEATURE, EvaluationConfig
from pipeline.errors import UserError
from pipeline.evidence import paired_change

CANDIDATE, BASELINE = "candidate", "baseline"
PAIRED = "paired_outcomes"  # stored by TFMA as paired_outcomes_diff (a cross-model metric)
_LABELS = {"accuracy": "overall accuracy", "macro_accuracy": "macro-averaged accuracy"}


def run(model_dir: str, examples: str | list[str], output_dir: str, gates: EvaluationConfig,
        classes: tuple[str, ...], baseline_dir: str | None = None, beam_args=()) -> dict:
    """Evaluate model_dir (and the serving baseline_dir) on the gates' split of one or more
    ExampleGen outputs (`examples`, newest first); returns evaluation.json's content."""
    sources = [examples] if isinstance(examples, str) else list(examples)
    tfma_dir = EVALUATION.path(output_dir, "tfma")
    if baseline_dir:
        try:
            serving.load(baseline_dir)
        except UserError as e:
            raise UserError(f"{e} Nothing was pushed; run again afterwards: the trained model is "
                            f"kept and will be reused.") from None
    eval_config = _eval_config(baseline=baseline_dir is not None)
    models = [tfma.default_eval_shared_model(model_dir, model_name=CANDIDATE,
                                             eval_config=eval_config)]
    if baseline_dir:
        models.append(tfma.default_eval_shared_model(baseline_dir, model_name=BASELINE,
                                                     eval_config=eval_config))
    patterns = [artifacts.examples_pattern(s, gates.split) for s in sources]
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        _ = (pipeline
             | "Read" >> tfxio.TFExampleRecord(
                 file_pattern=patterns, raw_record_column_name=tfma.ARROW_INPUT_COLUMN,
                 telemetry_descriptors=["fer-pipeline"]).BeamSource()
             | "Evaluate" >> tfma.ExtractEvaluateAndWriteResults(
                 eval_shared_model=models if baseline_dir else models[0],
                 eval_config=eval_config, output_path=tfma_dir,
                 display_only_data_location=",".join(patterns)))

    # TFMA drops the name of a lone model.
    metrics = {name: _metrics(tfma_dir, name if baseline_dir else None, classes)
               for name in ([CANDIDATE, BASELINE] if baseline_dir else [CANDIDATE])}
    sizes = dict(zip(classes, metrics[CANDIDATE]["per_class_examples"]))
    judged = [name for name, n in sizes.items() if n >= gates.min_class_examples]
    for m in metrics.values():  # macro accuracy: the mean over the judged classes
        known = [m["values"]["class_accuracy"][name] for name in judged]
        m["values"]["macro_accuracy"] = sum(known) / len(known) if known else None
    reasons, intervals = _judge(gates, metrics, classes, judged)
    unjudged = {name: n for name, n in sizes.items() if name not in judged}
    evaluation = {
        "model": model_dir,
        "baseline": baseline_dir,
        "split": gates.split,
        "examples_from": sources,
        "examples": metrics[CANDIDATE]["examples"],
        "blessed": not reasons,
        "reasons": reasons,
        "not_judged": unjudged,
        "metrics": {name: m["values"] for name, m in metrics.items()},
        "intervals": intervals,
        "confusion_matrix": metrics[CANDIDATE]["confusion_matrix"],
        "classes": list(classes),
        "gates": {"confidence": gates.confidence, "min_class_examples": gates.min_class_examples,
                  "min_examples": gates.min_examples, "floors": gates.floors,
                  "max_drop_vs_serving": gates.max_drop_vs_serving},
    }
    artifacts.write_text(EVALUATION.path(output_dir, "evaluation"),
                         json.dumps(evaluation, indent=2))
    artifacts.write_text(EVALUATION.path(output_dir, "blessed" if evaluation["blessed"]
                                          else "not_blessed"), "")
    return evaluation


def _eval_config(baseline: bool) -> tfma.EvalConfig:
    """TFMA computes the counts; _judge gates on them (TFMA's thresholds compare point values,
    which is what the gates must not do on small samples)."""
    metrics = [tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                                 config=json.dumps({"name": "accuracy"})),
               tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
               tfma.MetricConfig(class_name="ExampleCount")]
    if baseline:
        metrics.append(tfma.MetricConfig(class_name="PairedOutcomes", module=__name__))
    spec = dict(signature_name="serving_default", label_key=LABEL_FEATURE,
                prediction_key="probabilities")
    model_specs = [tfma.ModelSpec(name=CANDIDATE, **spec)]
    if baseline:
        model_specs.append(tfma.ModelSpec(name=BASELINE, is_baseline=True, **spec))
    return tfma.EvalConfig(model_specs=model_specs,
                           metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
                           slicing_specs=[tfma.SlicingSpec()])


class PairedOutcomes(metric_types.Metric):
    """Per actual class, the candidate and the baseline on the same examples: [both right, only
    the candidate right, only the baseline right, both wrong] (top-1). A cross-model metric in
    the manner of TFMA's flip rates: one combiner sees both models' predictions of an example."""

    def __init__(self, name: str = PAIRED):
        super().__init__(_paired_computations, name=name)


def _paired_computations(name, eval_config, model_names, example_weighted=False):
    baseline = tfma.utils.model_util.get_baseline_model_spec(eval_config).name
    computations = []
    for model_name in model_names:
        if model_name == baseline:
            continue
        key = metric_types.MetricKey(name=name, model_name=model_name, is_diff=True,
                                     example_weighted=example_weighted)
        computations.append(metric_types.MetricComputation(
            keys=[key], preprocessors=None,
            combiner=_PairedCombiner(key, eval_config, model_name, baseline)))
    return computations


class _PairedCombiner(beam.CombineFn):
    def __init__(self, key, eval_config, model_name, baseline_name):
        self._key, self._config = key, eval_config
        self._models = (model_name, baseline_name)

    def create_accumulator(self):
        return {}

    def add_input(self, counts, element):
        label, right = None, []
        for model in self._models:
            label, prediction, _ = next(metric_util.to_label_prediction_example_weight(
                element, eval_config=self._config, model_name=model, flatten=False,
                squeeze=False))
            label = int(np.asarray(label).reshape(-1)[0])
            right.append(int(np.argmax(np.asarray(prediction).reshape(-1))) == label)
        cell = {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}
        row = counts.setdefault(label, [0, 0, 0, 0])
        row[cell[tuple(right)]] += 1
        return counts

    def merge_accumulators(self, accumulators):
        merged = {}
        for counts in accumulators:
            for label, row in counts.items():
                merged[label] = [a + b for a, b in zip(merged.get(label, [0] * 4), row)]
        return merged

    def extract_output(self, counts):
        size = max(counts, default=-1) + 1
        table = np.zeros((size, 4), np.float64)
        for label, row in counts.items():
            table[label] = row
        return {self._key: table}


def _metrics(tfma_dir: str, model_name: str | None, classes) -> dict:
    result = tfma.load_eval_result(tfma_dir, model_name=model_name)
    values = dict(result.slicing_metrics)[()][""][""]
    plot = dict(result.plots)[()][""][""]["multiClassConfusionMatrixAtThresholds"]["matrices"][0]
    matrix = [[0] * len(classes) for _ in classes]
    for entry in plot["entries"]:  # proto JSON: fields equal to 0 are left out
        actual, predicted = entry.get("actualClassId", 0), entry.get("predictedClassId", 0)
        matrix[actual][predicted] = int(entry.get("numWeightedExamples", 0))
    per_class = {name: (row[i] / sum(row) if sum(row) else None)
                 for i, (name, row) in enumerate(zip(classes, matrix))}
    paired = np.zeros((len(classes), 4))
    if PAIRED + "_diff" in values:
        array = values[PAIRED + "_diff"]["arrayValue"]
        found = np.asarray(array.get("float64Values", []), float).reshape(-1, 4)
        paired[:len(found)] = found
    return {"values": {"accuracy": values["accuracy"]["doubleValue"],
                       "class_accuracy": per_class},
            "confusion_matrix": matrix,
            "per_class_examples": [sum(row) for row in matrix],
            "paired": paired,
            "examples": int(values["example_count"]["doubleValue"])}


@dataclasses.dataclass
class _Measure:
    """One gated quantity: its value, its interval, and (against the serving model) the interval
    of the paired difference."""

    label: str
    metric: str
    name: str | None
    value: float
    low: float
    high: float
    change: float | None = None
    change_low: float | None = None
    change_high: float | None = None


def _judge(gates: EvaluationConfig, metrics: dict, classes, judged_names: list[str]
           ) -> tuple[list[str], dict]:
    """(the reasons a gate failed, the intervals by metric), judging only `judged_names`."""
    z = norm.ppf(0.5 + gates.confidence / 2)
    matrix = np.asarray(metrics[CANDIDATE]["confusion_matrix"])
    sizes, right = matrix.sum(axis=1), np.diag(matrix)
    judged = [classes.index(name) for name in judged_names]

    overall = _proportion(_LABELS["accuracy"], "accuracy", None, right.sum(), sizes.sum(), z)
    per_class = [_proportion(f"accuracy of class {classes[c]}", "class_accuracy", classes[c],
                             right[c], sizes[c], z) for c in judged]
    measures = [overall, *per_class]
    if judged:  # the mean of independent accuracies: their variances add
        value = metrics[CANDIDATE]["values"]["macro_accuracy"]
        spread = math.sqrt(sum(_accuracy_variance(right[c], sizes[c]) for c in judged)) / len(
            judged)
        macro = _Measure(_LABELS["macro_accuracy"], "macro_accuracy", None, value,
                         max(0.0, value - z * spread), min(1.0, value + z * spread))
        measures.insert(1, macro)
    if BASELINE in metrics:
        table = metrics[CANDIDATE]["paired"]
        _against_serving(overall, *paired_change(table.sum(axis=0)), z)
        changes = [paired_change(table[c]) for c in judged]
        for measure, change in zip(per_class, changes):
            _against_serving(measure, *change, z)
        if judged:
            _against_serving(macro, float(np.mean([d for d, _ in changes])),
                             math.sqrt(sum(e ** 2 for _, e in changes)) / len(judged), z)

    reasons, intervals = [], {}
    level = f"{gates.confidence:.0%}"
    for m in measures:
        intervals[m.name or m.metric] = {"value": m.value, "low": m.low, "high": m.high,
                                         **({"change": m.change, "change_low": m.change_low,
                                             "change_high": m.change_high}
                                            if m.change is not None else {})}
        floor = gates.bound("floors", m.metric, m.name)
        if floor is not None and m.high < floor:
            reasons.append(f"{m.label} is {m.value:.3f} ({level} interval {m.low:.3f}-"
                           f"{m.high:.3f}), below its floor of {floor:.3f}")
        allowed = gates.bound("max_drop_vs_serving", m.metric, m.name)
        if m.change is not None and allowed is not None and -m.change > allowed + 1e-9 and (
                m.change_high < 0):
            reasons.append(f"{m.label} dropped by {-m.change:.3f} against the serving model "
                           f"(at most {allowed:.3f} allowed; {level} interval of the change "
                           f"{m.change_low:+.3f} to {m.change_high:+.3f}, wholly below 0)")
    return reasons, intervals


def _proportion(label, metric, name, k, n, z) -> _Measure:
    """The Wilson score interval of k right of n."""
    k, n = float(k), float(n)
    if n == 0:
        return _Measure(label, metric, name, 0.0, 0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return _Measure(label, metric, name, p, max(0.0, centre - half), min(1.0, centre + half))


def _accuracy_variance(k, n) -> float:
    """The variance of a class's accuracy, with Agresti and Coull's +2/+4 so that 0 of n and n
    of n are not taken as certain."""
    p = (k + 2) / (n + 4)
    return p * (1 - p) / (n + 4)


def _against_serving(measure: _Measure, change: float, error: float, z: float) -> None:
    measure.change, measure.change_low, measure.change_high = (
        change, change - z * error, change + z * error)
