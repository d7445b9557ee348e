"""Every entry of every config file is bounded and checked before any work: for each entry of each
shipped file, values out of its bounds and of the wrong kind, written into a copy of the file and
passed by the file's flag, are refused with one UserError naming the file, the entry and the
value. The table below must name every entry of the shipped files (a test fails otherwise), so an
entry added to a file comes with its refusals."""
import dataclasses
import json
import subprocess
import sys

import pytest

from pipeline import config, run
from pipeline.config import SCHEMAS_DIR, resolve
from pipeline.errors import UserError

# How a run is given each file: its flag, or (the built-in data's recipe) FER_SCHEMAS_DIR.
FLAGS = {
    "ingest.json": ["--ingest-config"],
    "trainer.json": ["--trainer-config"],
    "evaluation.json": ["--evaluation-config"],
    "validation.json": ["--validation-config"],
    "tuner.json": ["--tune", "1", "--tuner-config"],
    "default_data.json": None,
    "deployment.json": ["--deployment-config"],
}
NAN, INF = float("nan"), float("inf")
_GATE = [-0.1, 1.5, NAN]

# Per file, per entry (its path of keys), values out of its bounds. Values of the wrong kind are
# added to each from the kind of the shipped value (wrong_kinds).
OUT_OF_BOUNDS = {
    "ingest.json": {
        ("classes",): [["Angry"], ["Angry", "Angry"], ["Angry", ""], ["Angry", 5], ["x" * 65, "y"],
                       [f"c{i}" for i in range(1001)]],
        ("image_size",): [0, 47, 64, 48.0],
        ("columns", "label"): ["", "x" * 65, "PIXELS"],
        ("columns", "pixels"): ["", "Emotion"],
        ("columns", "usage"): ["", "pixels"],
        ("usage_to_split", "Training"): ["holdout", ""],
        ("usage_to_split", "PublicTest"): ["holdout"],
        ("usage_to_split", "PrivateTest"): ["train"],
        ("hash_split", "train"): [-0.1, 1.5, 0.5, NAN],
        ("hash_split", "eval"): [-0.1, 0.3],
        ("hash_split", "test"): [-0.1, 0.3],
        ("split_roles", "train"): ["holdout", "eval", "x" * 65],
        ("split_roles", "eval"): ["holdout", "train"],
        ("max_bad_row_fraction",): [-0.01, 1.01, NAN, INF],
        ("chunk_bytes",): [-100, 0, 1023, 2**30 + 1, 8388608.5],
        ("records_per_shard",): [-1, 0, 10_000_001, 1.5],
        ("max_line_bytes",): [0, 10_000, 65_535, 2**26 + 1],
        ("quarantine_row_chars",): [-1, 0, 99, 2**20 + 1],
    },
    "trainer.json": {
        ("seed",): [-1, 2**31, 1.5],
        ("epochs",): [0, 10_001, 2.5],
        ("batch_size",): [0, 65_537, 16.0],
        ("learning_rate",): [0, 1, -0.001, NAN],
        ("warmup_epochs",): [-1, 10_001, 0.5],
        ("final_learning_rate_fraction",): [0, 1.01],
        ("batch_norm_momentum",): [-0.1, 1],
        ("batch_norm_population_images",): [-1, 10_000_001, 1.5],
        ("early_stopping", "monitor"): ["val_auc", ""],
        ("early_stopping", "patience"): [-1, 10_001, 2.5],
        ("augmentation", "horizontal_flip"): [],
        ("augmentation", "shift"): [-0.1, 1],
        ("augmentation", "rotation"): [-0.1, 1],
        ("augmentation", "zoom"): [-0.1, 1, INF],
        ("class_weight",): ["inverse", "Balanced"],
        ("warm_start", "learning_rate_factor"): [0, 1.5],
        ("shuffle_buffer",): [0, 10_000_001],
        ("cache_max_bytes",): [-1, 2**40 + 1, 1.5],
        ("deterministic",): [],
    },
    "evaluation.json": {
        ("model_name",): ["../evil", "", "x" * 65],
        ("split",): ["holdout", ""],
        ("confidence",): [0.49, 1, 0.3],
        ("min_class_examples",): [0, 10_000_001, 2.5],
        ("min_examples",): [-1, 10_000_001],
        ("max_earlier_runs",): [-1, 1001],
        ("floors", "accuracy"): _GATE,
        ("floors", "macro_accuracy"): _GATE,
        ("floors", "class_accuracy", "default"): _GATE,
        ("floors", "class_accuracy", "Fear"): _GATE,
        ("floors", "class_accuracy", "Sad"): _GATE,
        ("floors", "class_accuracy", "Disgust"): _GATE,
        ("max_drop_vs_serving", "accuracy"): _GATE,
        ("max_drop_vs_serving", "macro_accuracy"): _GATE,
        ("max_drop_vs_serving", "class_accuracy", "default"): _GATE,
        ("max_drop_vs_serving", "class_accuracy", "Disgust"): _GATE,
        ("export_parity", "accuracy"): _GATE,
        ("export_parity", "class_accuracy"): _GATE,
    },
    "validation.json": {
        ("exposure", "dark_mean_below"): [-1, 256],
        ("exposure", "bright_mean_above"): [-1, 256],
        ("exposure", "flat_contrast_below"): [-1, 256],
        ("exposure", "saturated_value_margin"): [-1, 256],
        ("on_anomaly", "schema"): ["ignore", "STOP"],
        ("on_anomaly", "skew"): ["ignore"],
        ("on_anomaly", "drift"): ["ignore"],
        ("on_anomaly", "missing_class"): ["ignore"],
        ("skew_against_train",): [["train"], ["eval", "eval"], ["holdout"], [5]],
        ("drift_split",): ["holdout", ""],
        ("significance_level",): [0, 0.5, 0.7, -0.1],
    },
    "tuner.json": {
        ("epochs_per_trial",): [0, 10_001, 1.5],
        ("parameters", "learning_rate", "low"): [0, -0.001, 0.01],
        ("parameters", "learning_rate", "high"): [0.0001, 3],
        ("parameters", "learning_rate", "log"): [],
        ("parameters", "batch_size", "choices"): [[], [0], [32, 100_000], [[32]]],
        ("parameters", "warmup_epochs", "low"): [-1, 3],
        ("parameters", "warmup_epochs", "high"): [0, 10_001],
        ("parameters", "augmentation.shift", "low"): [-0.1],
        ("parameters", "augmentation.shift", "high"): [1.5],
    },
    "default_data.json": {
        ("rows",): [0, 99, 1_000_001, 100.5],
        ("seed",): [-1, 2**32],
        ("fer2013_train_class_counts",): [[1, 2, 3], [0] * 7, [-1] + [1] * 6, [1] * 8],
        ("usage_counts", "Training"): [-1, 10**8 + 1],
        ("usage_counts", "PublicTest"): [-1],
        ("usage_counts", "PrivateTest"): [-1],
        ("epochs",): [0, 10_001],
    },
    "deployment.json": {
        ("infra_validation", "timeout_seconds"): [0, 9, 86_401, 30.5],
        ("infra_validation", "memory_limit_mib"): [0, 1023, 2**20 + 1],
        ("infra_validation", "canary_examples"): [0, 10_001, 2.5],
        ("infra_validation", "tolerance"): [0, -1e-4, 0.2, NAN],
        ("infra_validation", "latency_requests"): [0, 100_001],
        ("exports", "representative_images"): [0, 100_001, 1.5],
        ("exports", "latency_requests"): [0, 100_001],
    },
}


def shipped(name: str) -> dict:
    return json.loads((SCHEMAS_DIR / name).read_text())


def entries(value, path=()):
    """The paths of every entry of a config file, down to its values (not into lists)."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from entries(inner, (*path, key))
    else:
        yield path


def wrong_kinds(value) -> list:
    """Values of another kind than the shipped `value`; true/false is not a number here."""
    if isinstance(value, bool):
        return [1, "true", None]
    if isinstance(value, (int, float)):
        return [True, str(value), None]
    if isinstance(value, str):
        return [5, [value], None]
    return [value[0] if value and not isinstance(value[0], list) else "x", None]


def cases():
    for name, table in OUT_OF_BOUNDS.items():
        raw = shipped(name)
        for path, values in table.items():
            for value in [*values, *wrong_kinds(get(raw, path))]:
                yield pytest.param(name, path, value, id=f"{name}:{'.'.join(path)}={value!r:.30}")


def get(raw: dict, path: tuple):
    for key in path:
        raw = raw[key]
    return raw


def changed(raw: dict, path: tuple, value) -> dict:
    head, *rest = path
    return {**raw, head: changed(raw[head], tuple(rest), value) if rest else value}


def refusal(tmp_path, monkeypatch, name: str, raw) -> tuple[str, str]:
    """(the UserError's message, the file's path) for a run given `raw` as config file `name`."""
    folder = tmp_path / "etc"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    if FLAGS[name] is None:  # read from FER_SCHEMAS_DIR when no --data is given
        monkeypatch.setenv("FER_SCHEMAS_DIR", str(folder))
        flags = []
    else:
        flags = [*FLAGS[name], str(path), "--data", "fer2013.csv"]
    with pytest.raises(UserError) as caught:
        resolve(run.parse_args(flags)[0])
    return str(caught.value), str(path)


@pytest.mark.parametrize("name, path, value", list(cases()))
def test_each_entry_refuses_values_out_of_bounds_or_of_the_wrong_kind(tmp_path, monkeypatch,
                                                                       name, path, value):
    message, where = refusal(tmp_path, monkeypatch, name, changed(shipped(name), path, value))
    assert where in message
    assert all(key in message for key in path), message  # the entry, e.g. floors.accuracy
    assert repr(value) in message, message  # the value given
    assert "\n" not in message


def test_the_table_names_every_entry_of_every_shipped_file():
    """An entry added to a shipped file (or a file added) needs its row above."""
    assert set(OUT_OF_BOUNDS) == set(FLAGS) == {p.name for p in SCHEMAS_DIR.glob("*.json")}
    for name, table in OUT_OF_BOUNDS.items():
        assert set(entries(shipped(name))) == set(table), name


def test_each_config_class_has_a_spec_for_each_of_its_fields():
    """Adding a field to a config class means adding its bounds (pipeline/config.py)."""
    for spec, cls in ((config.TRAINER, config.TrainerConfig),
                      (config.EVALUATION, config.EvaluationConfig),
                      (config.TUNER, config.TunerConfig),
                      (config.DEPLOYMENT, config.DeploymentConfig)):
        assert set(spec.fields) == {f.name for f in dataclasses.fields(cls)}, cls
    assert set(config.INGEST.fields) == set(config.IngestConfig.load().as_json())


def test_the_shipped_files_pass():
    settings = resolve(run.parse_args(["--tune", "1"])[0])  # the built-in data's recipe too
    assert settings.ingest.image_size == config.IMAGE_SIZE and settings.tuner is not None


@pytest.mark.parametrize("name", list(FLAGS))
@pytest.mark.parametrize("text, kind", [("[]", "a list"), ("3", "a number"), ('"x"', "a string"),
                                        ("null", "null")])
def test_a_file_that_is_not_one_json_object_is_refused(tmp_path, monkeypatch, name, text, kind):
    message, where = refusal(tmp_path, monkeypatch, name, text)
    assert f"{where} must hold one JSON object" in message and f"not {kind}." in message


@pytest.mark.parametrize("name", list(FLAGS))
def test_unknown_and_missing_entries_are_refused(tmp_path, monkeypatch, name):
    raw = shipped(name)
    message, where = refusal(tmp_path, monkeypatch, name, {**raw, "bogus": 1})
    assert f"{where} does not have the expected entries (missing: none; unknown: ['bogus'])" \
        in message
    first = next(iter(raw))
    message, _ = refusal(tmp_path, monkeypatch, name,
                         {k: v for k, v in raw.items() if k != first})
    assert f"(missing: ['{first}']; unknown: none)" in message


@pytest.mark.parametrize("name, path, value, words", [
    ("ingest.json", ("columns",), {"label": "emotion", "pixels": "pixels"}, "missing: ['usage']"),
    ("ingest.json", ("columns", "extra"), "x", "unknown: ['extra']"),
    ("ingest.json", ("hash_split",), {}, "hash_split must be an object of 1 to 100"),
    ("trainer.json", ("early_stopping", "min_delta"), 0.1, "unknown: ['min_delta']"),
    ("trainer.json", ("augmentation", "flip"), True, "augmentation needs"),
    ("validation.json", ("exposure", "gamma"), 1, "exposure needs"),
    ("tuner.json", ("parameters", "learning_rate", "step"), 0.1, "parameters.learning_rate"),
    ("tuner.json", ("parameters", "learning_rte"), {"low": 0.1, "high": 0.2}, "learning_rte"),
    ("tuner.json", ("parameters",), {}, "parameters must name at least one"),
    ("evaluation.json", ("floors", "auc"), 0.5, "floors names the metric 'auc'"),
    ("evaluation.json", ("floors", "class_accuracy", "Contempt"), 0.5, "the class 'Contempt'"),
    ("default_data.json", ("usage_counts", "Validation"), 10, "usage_counts names ['Validation']"),
])
def test_entries_inside_objects_are_checked_too(tmp_path, monkeypatch, name, path, value, words):
    raw = shipped(name)
    if len(path) > 1 and path[-1] not in get(raw, path[:-1]):  # a new entry
        parent = get(raw, path[:-1])
        raw = changed(raw, path[:-1], {**parent, path[-1]: value})
    else:
        raw = changed(raw, path, value)
    message, _ = refusal(tmp_path, monkeypatch, name, raw)
    assert words in message


def test_the_built_in_data_must_fit_the_ingestion_config(tmp_path):
    """Without --data the built-in faces are read with the ingestion config: their classes and
    Usage values must be its."""
    raw = shipped("ingest.json")
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps({**raw, "classes": raw["classes"][:5]}))
    with pytest.raises(UserError, match="fer2013_train_class_counts gives 7 classes, more than "
                                        "the 5 of the ingestion config"):
        resolve(run.parse_args(["--ingest-config", str(path)])[0])
    resolve(run.parse_args(["--ingest-config", str(path), "--data", "five.csv"])[0])


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "10001"], "--epochs 10001"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--max-bad-rows", "nan"], "--max-bad-rows nan"),
    (["--tune", "-1"], "--tune takes a number of trials from 0 to 10000 (got -1)"),
    (["--tune", "10001"], "(got 10001)"),
])
def test_flags_are_bounded_as_the_entries_they_replace(flags, words):
    with pytest.raises(UserError) as caught:
        resolve(run.parse_args(flags)[0])
    assert words in str(caught.value)


def test_a_tuner_search_beyond_the_trainers_bounds_is_refused_before_any_trial(tmp_path):
    path = tmp_path / "tuner.json"
    path.write_text(json.dumps({"epochs_per_trial": 2, "parameters": {
        "batch_size": {"low": 16, "high": 100_000}}}))
    with pytest.raises(UserError, match=r"parameters\.batch_size\.high is 100000, which the "
                                        r"Trainer refuses: batch_size must be a whole number"):
        resolve(run.parse_args(["--tune", "2", "--tuner-config", str(path)])[0])
    config.TunerConfig.load(path)  # without the Trainer's config: its own bounds only


def test_a_bad_entry_stops_the_command_line_before_any_work(tmp_path):
    """The issue's case: a negative chunk_bytes made ExampleGen loop forever, memory growing."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**shipped("ingest.json"), "chunk_bytes": -100}))
    data = tmp_path / "tiny.csv"
    data.write_text("emotion,pixels,Usage\n" + f"0,{' '.join(['7'] * 2304)},Training\n")
    root = tmp_path / "root"
    result = subprocess.run([sys.executable, "-m", "pipeline.run", "--ingest-config", str(bad),
                             "--data", str(data), "--pipeline-root", str(root)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    paragraph = " ".join(result.stderr.split())
    assert f"Ingestion config {bad} is inconsistent: chunk_bytes must be a whole number >= 1024 " \
           f"and <= 1073741824" in paragraph and "(got -100)" in paragraph
    assert "\n\n" not in result.stderr.strip()  # one paragraph
    assert not (root / "ExampleGen").exists() and not root.exists()  # nothing ran

