"""Evaluator: TFMA on one split (test); overall, per-class and macro accuracy, the confusion matrix,
and the blessing: every gate of schemas/evaluation.json passed, fixed floors and, when a model is
serving, the allowed drop against it (TFMA evaluates both models on the same examples).

Per-class accuracy is top-1 recall: of the examples of class c, the share whose argmax is c,
read off TFMA's multi-class confusion matrix (row c: its diagonal over its sum); macro accuracy
is their mean. Configurations that look right are not: binarize + SparseCategoricalAccuracy is
one-vs-rest accuracy (about 0.86 for a model that knows nothing); Recall with class_id thresholds
the softmax at 0.5; and Recall(top_k=1) with class_id reads 1.0 for a class the model never
predicts (measured with TFMA 0.47.1), so it would let such a model through.

Output layout (output_dir):
    tfma/                TFMA's metrics, plots and validation result (tfma.load_eval_result)
    evaluation.json      metrics of the candidate (and baseline), confusion matrix, blessing, reasons
    BLESSED | NOT_BLESSED  marker file, as TFX's Evaluator writes
"""
import json
import logging

import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import artifacts, serving
from pipeline.config import LABEL_FEATURE, EvaluationConfig
from pipeline.errors import UserError

CANDIDATE, BASELINE = "candidate", "baseline"
# TFMA's notices that say nothing to the user: its "support for TF 2.0 is in beta" (the pinned
# TFMA 0.47 is the release built for TF 2.16) and TensorFlow's deprecation note about the
# tf_record_iterator TFMA's own writer calls.
_NOTICES = ("TFMA support for TF 2.0 is currently in beta", "tf_record_iterator")
for _logger in ("absl", "tensorflow"):
    logging.getLogger(_logger).addFilter(
        lambda record: not any(n in record.getMessage() for n in _NOTICES))
_LABELS = {"accuracy": "overall accuracy", "macro_accuracy": "macro-averaged accuracy"}


def run(model_dir: str, examples_dir: str, output_dir: str, gates: EvaluationConfig,
        classes: tuple[str, ...], baseline_dir: str | None = None, beam_args=()) -> dict:
    """Evaluate model_dir (and the serving baseline_dir) on gates.split; returns evaluation.json."""
    tfma_dir = artifacts.join(output_dir, "tfma")
    if baseline_dir:
        try:
            serving.load(baseline_dir)
        except UserError as e:
            raise UserError(f"{e} Nothing was pushed; run again afterwards: the trained model is "
                            f"kept and will be reused.") from None
    eval_config = _eval_config(gates, baseline=baseline_dir is not None)
    models = [tfma.default_eval_shared_model(model_dir, model_name=CANDIDATE,
                                             eval_config=eval_config)]
    if baseline_dir:
        models.append(tfma.default_eval_shared_model(baseline_dir, model_name=BASELINE,
                                                     eval_config=eval_config))
    tfma.run_model_analysis(
        eval_shared_model=models if baseline_dir else models[0], eval_config=eval_config,
        data_location=artifacts.examples_pattern(examples_dir, gates.split),
        output_path=tfma_dir, pipeline_options=PipelineOptions(list(beam_args)))

    # TFMA drops the name of a lone model.
    metrics = {name: _metrics(tfma_dir, name if baseline_dir else None, classes)
               for name in ([CANDIDATE, BASELINE] if baseline_dir else [CANDIDATE])}
    validation = tfma.load_validation_result(tfma_dir)
    reasons = [_reason(failure) for per_slice in validation.metric_validations_per_slice
               for failure in per_slice.failures]
    if not validation.validation_ok and not reasons:
        reasons.append(f"TFMA's validation failed: {validation.missing_slices or 'see tfma/'}")
    reasons += _class_reasons(gates, metrics, classes)
    evaluation = {
        "model": model_dir,
        "baseline": baseline_dir,
        "split": gates.split,
        "examples": metrics[CANDIDATE]["examples"],
        "blessed": not reasons,
        "reasons": reasons,
        "metrics": {name: m["values"] for name, m in metrics.items()},
        "confusion_matrix": metrics[CANDIDATE]["confusion_matrix"],
        "classes": list(classes),
        "gates": {"floors": gates.floors, "max_drop_vs_serving": gates.max_drop_vs_serving},
    }
    artifacts.write_text(artifacts.join(output_dir, "evaluation.json"),
                         json.dumps(evaluation, indent=2))
    artifacts.write_text(artifacts.join(output_dir, "BLESSED" if evaluation["blessed"]
                                        else "NOT_BLESSED"), "")
    return evaluation


def _eval_config(gates: EvaluationConfig, baseline: bool) -> tfma.EvalConfig:
    """TFMA computes the metrics and gates overall accuracy. Per-class and macro accuracy come
    from its confusion matrix (see the module docstring), so _class_reasons gates them."""
    threshold = tfma.MetricThreshold()
    floor = gates.bound("floors", "accuracy")
    drop = gates.bound("max_drop_vs_serving", "accuracy") if baseline else None
    if floor is not None:
        threshold.value_threshold.lower_bound.value = floor
    if drop is not None:
        threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
        threshold.change_threshold.absolute.value = -drop
    specs = [
        tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy", threshold=threshold,
                              config=json.dumps({"name": "accuracy"})),
            tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            tfma.MetricConfig(class_name="ExampleCount")]),
    ]
    spec = dict(signature_name="serving_default", label_key=LABEL_FEATURE,
                prediction_key="probabilities")
    model_specs = [tfma.ModelSpec(name=CANDIDATE, **spec)]
    if baseline:
        model_specs.append(tfma.ModelSpec(name=BASELINE, is_baseline=True, **spec))
    return tfma.EvalConfig(model_specs=model_specs, metrics_specs=specs,
                           slicing_specs=[tfma.SlicingSpec()])


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
    known = [v for v in per_class.values() if v is not None]
    return {"values": {"accuracy": values["accuracy"]["doubleValue"],
                       "macro_accuracy": sum(known) / len(known) if known else None,
                       "class_accuracy": per_class},
            "confusion_matrix": matrix,
            "examples": int(values["example_count"]["doubleValue"])}


def _class_reasons(gates: EvaluationConfig, metrics: dict, classes) -> list[str]:
    """The macro and per-class gates, on the values from TFMA's confusion matrix."""
    now = metrics[CANDIDATE]["values"]
    before = metrics.get(BASELINE, {}).get("values")
    checks = [("macro_accuracy", None, now["macro_accuracy"],
               before and before["macro_accuracy"])]
    checks += [("class_accuracy", name, now["class_accuracy"][name],
                before and before["class_accuracy"][name]) for name in classes]
    reasons = []
    for metric, name, value, baseline in checks:
        label = _LABELS.get(metric) or f"accuracy of class {name}"
        if value is None:
            reasons.append(f"class {name} has no examples in the {gates.split} split, so its "
                           f"accuracy cannot be checked")
            continue
        floor = gates.bound("floors", metric, name)
        if floor is not None and value < floor:
            reasons.append(_below(label, value, floor))
        allowed = gates.bound("max_drop_vs_serving", metric, name)
        if baseline is not None and allowed is not None and baseline - value > allowed + 1e-9:
            reasons.append(_dropped(label, value - baseline, allowed))
    return reasons


def _below(label, value, floor) -> str:
    return f"{label} is {value:.3f}, below its floor of {floor:.3f}"


def _dropped(label, change, allowed) -> str:
    return (f"{label} dropped by {-change:.3f} against the serving model "
            f"(at most {allowed:.3f} allowed)")


def _reason(failure) -> str:
    """A failed TFMA threshold (overall accuracy) in the same words as the others."""
    if not failure.HasField("metric_value"):
        return f"{_LABELS.get(failure.metric_key.name, failure.metric_key.name)}: {failure.message}"
    value = failure.metric_value.double_value.value
    label = _LABELS[failure.metric_key.name]
    if failure.metric_key.is_diff:
        return _dropped(label, value, -failure.metric_threshold.change_threshold.absolute.value)
    return _below(label, value, failure.metric_threshold.value_threshold.lower_bound.value)
