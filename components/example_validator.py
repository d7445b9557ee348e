"""ExampleValidator: stop the run before training when the data is not what the schema says.

Four checks, each run by TFDV or read from its statistics, each set to stop or
warn in schemas/validation.json:
  schema         every split against the schema (types, presence, value counts, domains)
  skew           train against eval and test (the schema's skew_comparator thresholds)
  drift          train against the previous successful run's train (drift_comparator)
  missing_class  every class of the label's domain occurs in every split
Comparators are checked in separate TFDV calls so that each finding is
attributed to exactly one check.

A skew or drift finding counts only when the difference is both large (TFDV's
distance above the schema's threshold) and real: sampling alone would give it
with probability below the policy's significance_level, tested on the counts in
the two statistics. Small samples differ by chance: 63 test faces cannot match
477 train faces' class shares within 0.1 (L-infinity), while large samples
differ significantly by amounts nobody cares about, which is why TFDV's
thresholds alone or a test alone each misjudge one end (Evidently switches from
tests to distances at 1,000 rows for the same reason). The tests, on what TFDV
keeps exactly: the label, Fisher's exact test on each class's share with a
Bonferroni correction over the classes, which is the bound sampling alone puts
on the L-infinity distance the schema gates (more powerful against one class
that moved than the chi-square test Evidently and alibi-detect use on the whole
table); a numeric feature, Welch's t-test on the means and an F-test on the
variances (Bonferroni over the two); a share a feature may stray by
(distribution_constraints), a binomial test. A finding sampling explains is kept
with action "noise": shown, never stopping.

Output layout (output_dir):
    Split-<split>/SchemaDiff.pbtxt   TFDV's Anomalies for the split against the schema
    anomalies.json                   every finding: check, split, feature, what, action
"""
import json

import tensorflow_data_validation as tfdv
from scipy import stats as scipy_stats
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from pipeline import artifacts
from pipeline.artifact_types import ANOMALIES
from pipeline.config import LABEL_FEATURE
from pipeline.errors import UserError

class DataValidationError(UserError):
    """The data breaks the schema or drifted: the run must not train on it."""


def run(statistics: dict[str, str], schema_path: str, output_dir: str, policy: dict,
        previous_train_statistics: str | None = None, stop: bool = True,
        train_split: str = "train") -> list[dict]:
    """Validate each split's statistics; return the findings, and raise if one must stop the run
    (stop=False: leave that to the caller, after the findings are shown; see stop_error)."""
    stats = {split: tfdv.load_stats_binary(path) for split, path in statistics.items()}
    schema = tfdv.load_schema_text(schema_path)
    findings = []

    plain = _without(schema, "skew_comparator", "drift_comparator")
    level = policy["significance_level"]
    for split, split_stats in stats.items():
        anomalies = tfdv.validate_statistics(split_stats, plain)
        artifacts.makedirs(artifacts.split_dir(output_dir, split))
        tfdv.write_anomalies_text(anomalies, ANOMALIES.path(output_dir, "schema_diff", split))
        findings += _shares_tested(_findings(anomalies, "schema", split, comparators=False),
                                   schema, split_stats, level)

    train, skew_only = stats.get(train_split), _without(schema, "drift_comparator")
    for split in policy["skew_against_train"]:
        if train is not None and split in stats:
            anomalies = tfdv.validate_statistics(train, skew_only, serving_statistics=stats[split])
            findings += _tested(_findings(anomalies, "skew", f"{train_split} vs {split}", True),
                                train, stats[split], level)

    drift_split, previous = policy["drift_split"], None
    if previous_train_statistics and drift_split in stats:
        previous = tfdv.load_stats_binary(previous_train_statistics)
        anomalies = tfdv.validate_statistics(
            stats[drift_split], _without(schema, "skew_comparator"), previous_statistics=previous)
        findings += _tested(_findings(anomalies, "drift", f"{drift_split} vs previous run", True),
                            previous, stats[drift_split], level)

    findings += _missing_classes(stats, schema, previous, level)
    for finding in findings:
        finding.setdefault("action", policy["on_anomaly"][finding["check"]])
    report = ANOMALIES.path(output_dir, "anomalies")
    artifacts.write_text(report, json.dumps(
        {"statistics": statistics, "schema": schema_path,
         "previous_statistics": previous_train_statistics, "findings": findings}, indent=2))

    error = stop_error(findings, report, schema_path)
    if error and stop:
        raise error
    return findings


def stop_error(findings: list[dict], report: str, schema_path: str
               ) -> "DataValidationError | None":
    """The error that stops the run for the findings whose action is "stop", or None."""
    stopping = [f for f in findings if f["action"] == "stop"]
    if not stopping:
        return None
    listed = "; ".join(f"[{f['check']}] {f['split']}, feature '{f['feature']}': {f['what']}"
                       for f in stopping)
    return DataValidationError(
        f"ExampleValidator stopped the run before training: {len(stopping)} anomal"
        f"{'y' if len(stopping) == 1 else 'ies'}: {listed}. Full report: {report}. Fix the "
        f"data; or, if the change is intended, update the schema {schema_path} (thresholds, "
        f"domains; --schema for a copy of your own) or set the check to \"warn\" in the "
        f"validation config (--validation-config).")


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


def _tested(findings: list[dict], before, now, level: float) -> list[dict]:
    """Each comparator finding with the chance that sampling alone made it (p_value)."""
    for finding in findings:
        p, sizes = _p_value(finding["feature"], before, now)
        _weigh(finding, p, level, f"{sizes} examples")
    return findings


def _shares_tested(findings: list[dict], schema, statistics, level: float) -> list[dict]:
    """A schema finding on a feature whose values may stray a little (distribution_constraints:
    "at most 1% badly exposed images") weighed by a binomial test: one dark face of 30 is 3%,
    and a split with 1% of them holds one or more with probability 0.26."""
    for finding in findings:
        feature = next((f for f in schema.feature if f.name == finding["feature"]), None)
        if feature is None or not feature.HasField("distribution_constraints"):
            continue
        domain = next((d for d in schema.string_domain if d.name == feature.domain), None)
        counts = _counts(statistics, feature.name)
        size = sum(counts.values())
        strays = sum(n for value, n in counts.items()
                     if domain is None or value not in domain.value)
        allowed = 1 - feature.distribution_constraints.min_domain_mass
        p = float(scipy_stats.binom.sf(strays - 1, size, allowed)) if strays else 1.0
        _weigh(finding, p, level, f"{strays} of {size:,} examples, {allowed:.0%} allowed")
    return findings


def _weigh(finding: dict, p: float, level: float, evidence: str) -> None:
    """Record the finding's p-value; one that chance explains (p >= level) gets action
    "noise": shown, never stopping."""
    finding["p_value"] = p
    if p >= level:
        finding["action"] = "noise"
        finding["what"] += (f"; within sampling noise for {evidence} (p = {p:.3g}, not below "
                            f"{level:g})")
    else:
        finding["what"] += f"; not sampling noise ({evidence}, p = {p:.2g})"


def _p_value(feature: str, before, now) -> tuple[float, str]:
    """(p, "n1 vs n2"): how likely sampling alone gives a difference this large between the two
    statistics of `feature`."""
    a, b = _feature(before, feature), _feature(now, feature)
    if a.HasField("string_stats"):  # categorical: each value's share, Fisher's exact test
        counts = [_counts(before, feature), _counts(now, feature)]
        values = sorted(set(counts[0]) | set(counts[1]))
        totals = [sum(c.values()) for c in counts]
        sizes = f"{totals[0]:,} vs {totals[1]:,}"
        if len(values) < 2 or min(totals) == 0:
            return 1.0, sizes
        smallest = min(scipy_stats.fisher_exact(
            [[c.get(v, 0), total - c.get(v, 0)] for c, total in zip(counts, totals)]).pvalue
            for v in values)
        return float(min(1.0, len(values) * smallest)), sizes  # Bonferroni: the largest of them
    (m1, s1, n1), (m2, s2, n2) = [(f.num_stats.mean, f.num_stats.std_dev,
                                   f.num_stats.common_stats.num_non_missing) for f in (a, b)]
    sizes = f"{n1:,} vs {n2:,}"
    if min(n1, n2) < 2:
        return 1.0, sizes
    if s1 == 0 and s2 == 0:
        return (1.0 if m1 == m2 else 0.0), sizes
    mean = scipy_stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue
    if s1 == 0 or s2 == 0:
        return float(min(1.0, 2 * mean)), sizes
    ratio = scipy_stats.f(n1 - 1, n2 - 1)
    spread = 2 * min(ratio.cdf(s1 ** 2 / s2 ** 2), ratio.sf(s1 ** 2 / s2 ** 2))
    return float(min(1.0, 2 * min(mean, spread))), sizes


def _feature(statistics, name: str):
    return next((f for f in statistics.datasets[0].features
                 if list(f.path.step) == [name] or f.name == name), None)


def _counts(statistics, name: str) -> dict[str, int]:
    """How many examples hold each value of a categorical feature (TFDV's exact counts); none
    for statistics or a feature that are not there."""
    feature = _feature(statistics, name) if statistics is not None else None
    if feature is None or not feature.HasField("string_stats"):
        return {}
    return {b.label: int(b.sample_count)
            for b in feature.string_stats.rank_histogram.buckets if b.sample_count > 0}


def _missing_classes(stats: dict, schema: schema_pb2.Schema, previous, level: float
                     ) -> list[dict]:
    """Classes of the label's int domain with no example in a split (read from TFDV's counts).
    A rare class can be absent from a small split by chance: 63 faces hold no Disgust face
    (1.5% of FER2013) with probability 0.38. So each absence is weighed by the chance of it,
    (1 - share)^n, with the class's share in the previous validated train split (else in all
    splits now); a class seen nowhere is missing for real."""
    feature = tfdv.get_feature(schema, LABEL_FEATURE)
    if not feature.HasField("int_domain") or not feature.int_domain.is_categorical:
        return []
    domain = range(feature.int_domain.min, feature.int_domain.max + 1)
    counts = {split: _label_counts(s) for split, s in stats.items()}
    reference = _label_counts(previous) if previous is not None else {}
    if not sum(reference.values()):
        reference = {c: sum(n.get(c, 0) for n in counts.values()) for c in domain}
    total = sum(reference.values())
    found = []
    for split, seen in counts.items():
        size = sum(seen.values())
        missing = [c for c in domain if not seen.get(c)]
        if not missing or not size:
            continue
        chance = {c: (1 - reference.get(c, 0) / total) ** size if total else 1.0
                  for c in missing}
        real = [c for c in missing if chance[c] < level or not reference.get(c)]
        finding = {"check": "missing_class", "split": split, "feature": LABEL_FEATURE,
                   "type": "MISSING_CLASS", "p_value": max(chance.values()),
                   "what": f"no example of class(es) {missing} (domain {domain.start}-"
                           f"{domain.stop - 1})"}
        if real:
            finding["what"] += (f"; not chance: {real} would be absent from "
                                f"{size:,} examples with probability below {level:g}")
        else:
            finding["action"] = "noise"
            finding["what"] += (f"; within sampling noise: {size:,} examples lack them by chance "
                                f"with probability {max(chance.values()):.3g}")
        found.append(finding)
    return found


def _label_counts(statistics) -> dict[int, int]:
    return {int(label): n for label, n in _counts(statistics, LABEL_FEATURE).items()}
