"""One configuration resolution: pipeline.run and the Trainer's worker entry resolve the same
settings from the same flags, a bad value is blamed on the flag or file that holds it, and every
config file is checked before any work."""
import json

import pytest

from components import trainer
from pipeline import run
from pipeline.config import SCHEMAS_DIR, load_json, load_validation, resolve
from pipeline.errors import UserError


@pytest.mark.parametrize("flags", [
    [],  # the built-in data, with its own epoch budget
    ["--data", "fer2013.csv"],
    ["--data", "fer2013.csv", "--epochs", "3", "--batch-size", "16", "--max-bad-rows", "0.2"],
])
def test_the_chief_and_a_worker_resolve_the_same_settings(flags):
    chief = resolve(run.parse_args(flags)[0])
    worker = resolve(trainer.parse_args(["--examples", "root/ExampleGen/1", *flags]))
    assert chief == worker
    if not flags:
        assert worker.trainer.epochs == load_json("default_data.json")["epochs"]


def test_a_bad_flag_is_named_not_the_file(tmp_path):
    with pytest.raises(UserError) as caught:
        resolve(run.parse_args(["--epochs", "0"])[0])
    message = str(caught.value)
    assert "--epochs 0" in message and "epochs must be a whole number >= 1" in message
    assert "trainer.json" not in message


def test_a_bad_file_is_named(tmp_path):
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps({**load_json("trainer.json"), "batch_size": 0}))
    with pytest.raises(UserError, match=f"Trainer config {path} is inconsistent: batch_size"):
        resolve(run.parse_args(["--trainer-config", str(path)])[0])


@pytest.mark.parametrize("change, complaint", [
    ({"on_anomaly": {"schema": "stop", "skew": "stop", "drift": "ignore",
                     "missing_class": "stop"}}, "on_anomaly must set each of"),
    ({"drift_split": "holdout"}, "drift_split must be one of the splits"),
    ({"skew_against_train": ["train"]}, "skew_against_train must list splits other than train"),
    ({"exposure": {"dark_mean_below": 30}}, "exposure needs dark_mean_below"),
])
def test_the_validation_policy_is_checked(tmp_path, change, complaint):
    path = tmp_path / "validation.json"
    path.write_text(json.dumps({**json.loads((SCHEMAS_DIR / "validation.json").read_text()),
                                **change}))
    with pytest.raises(UserError, match=complaint):
        load_validation(("train", "eval", "test"), path)
