"""ExampleValidator: stop the run before training when the data is not what the schema says.

Four checks, each run by TFDV or read from its statistics, each set to stop or
warn in schemas/validation.json:
  schema         every split against the schema (types, presence, value counts, domains)
  skew           train against eval and test (the schema's skew_comparator thresholds)
  drift          train against the previous successful run's train (drift_comparator)
  missing_class  every class of the label's domain occurs in every split
Comparators are checked in separate TFDV calls so that each finding is
attributed to exactly one check.

Output layout (output_dir):
    Split-<split>/SchemaDiff.pbtxt   TFDV's Anomalies for the split against the schema
    anomalies.json                   every finding: check, split, feature, what, action
"""
import json
import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from pipeline import artifacts
from pipeline.errors import UserError

LABEL = "emotion"


class DataValidationError(UserError):
    """The data breaks the schema or drifted: the run must not train on it."""


def run(statistics: dict[str, str], schema_path: str, output_dir: str, policy: dict,
        previous_train_statistics: str | None = None) -> list[dict]:
    """Validate each split's statistics; return the findings, raise if one must stop the run."""
    stats = {split: tfdv.load_stats_binary(path) for split, path in statistics.items()}
    schema = tfdv.load_schema_text(schema_path)
    findings = []

    plain = _without(schema, "skew_comparator", "drift_comparator")
    for split, split_stats in stats.items():
        anomalies = tfdv.validate_statistics(split_stats, plain)
        artifacts.makedirs(artifacts.split_dir(output_dir, split))
        tfdv.write_anomalies_text(anomalies, os.path.join(artifacts.split_dir(output_dir, split),
                                                          "SchemaDiff.pbtxt"))
        findings += _findings(anomalies, "schema", split, comparators=False)

    train, skew_only = stats.get("train"), _without(schema, "drift_comparator")
    for split in policy["skew_against_train"]:
        if train is not None and split in stats:
            anomalies = tfdv.validate_statistics(train, skew_only, serving_statistics=stats[split])
            findings += _findings(anomalies, "skew", f"train vs {split}", comparators=True)

    drift_split = policy["drift_split"]
    if previous_train_statistics and drift_split in stats:
        anomalies = tfdv.validate_statistics(
            stats[drift_split], _without(schema, "skew_comparator"),
            previous_statistics=tfdv.load_stats_binary(previous_train_statistics))
        findings += _findings(anomalies, "drift", f"{drift_split} vs previous run",
                              comparators=True)

    findings += _missing_classes(stats, schema)
    for finding in findings:
        finding["action"] = policy["on_anomaly"][finding["check"]]
    report = os.path.join(output_dir, "anomalies.json")
    artifacts.write_text(report, json.dumps(
        {"statistics": statistics, "schema": schema_path,
         "previous_statistics": previous_train_statistics, "findings": findings}, indent=2))

    stopping = [f for f in findings if f["action"] == "stop"]
    if stopping:
        listed = "; ".join(f"[{f['check']}] {f['split']}, feature '{f['feature']}': {f['what']}"
                           for f in stopping)
        raise DataValidationError(
            f"ExampleValidator stopped the run before training: {len(stopping)} anomal"
            f"{'y' if len(stopping) == 1 else 'ies'}: {listed}. Full report: {report}. Fix the "
            f"data; or, if the change is intended, update schemas/schema.pbtxt (thresholds, "
            f"domains) or set the check to \"warn\" in schemas/validation.json.")
    return findings


def _without(schema: schema_pb2.Schema, *comparators: str) -> schema_pb2.Schema:
    copy = schema_pb2.Schema()
    copy.CopyFrom(schema)
    for feature in copy.feature:
        for field in comparators:
            feature.ClearField(field)
    return copy


def _findings(anomalies: anomalies_pb2.Anomalies, check: str, split: str,
              comparators: bool) -> list[dict]:
    found = []
    infos = list(anomalies.anomaly_info.items())
    if anomalies.HasField("dataset_anomaly_info"):
        infos.append(("(dataset)", anomalies.dataset_anomaly_info))
    for feature, info in infos:
        for reason in info.reason:
            kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            if kind.startswith("COMPARATOR_") == comparators:
                found.append({"check": check, "split": split, "feature": feature, "type": kind,
                              "what": (reason.description or reason.short_description
                                       ).strip().rstrip(".")})
    return found


def _missing_classes(stats: dict, schema: schema_pb2.Schema) -> list[dict]:
    """Classes of the label's int domain with no example in a split (read from TFDV's counts)."""
    feature = tfdv.get_feature(schema, LABEL)
    if not feature.HasField("int_domain") or not feature.int_domain.is_categorical:
        return []
    domain = range(feature.int_domain.min, feature.int_domain.max + 1)
    found = []
    for split, split_stats in stats.items():
        label_stats = next((f for f in split_stats.datasets[0].features
                            if f.path.step == [LABEL] or f.name == LABEL), None)
        if label_stats is None or not label_stats.HasField("string_stats"):
            continue
        seen = {int(b.label) for b in label_stats.string_stats.rank_histogram.buckets
                if b.sample_count > 0}
        missing = [c for c in domain if c not in seen]
        if missing:
            found.append({"check": "missing_class", "split": split, "feature": LABEL,
                          "type": "MISSING_CLASS",
                          "what": f"no example of class(es) {missing} (domain {domain.start}-"
                                  f"{domain.stop - 1})"})
    return found
