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
    ({"skew_against_train": ["train"]}, "skew_against_train must list splits other than the train split train"),
    ({"exposure": {"dark_mean_below": 30}}, "exposure needs dark_mean_below"),
])
def test_the_validation_policy_is_checked(tmp_path, change, complaint):
    path = tmp_path / "validation.json"
    path.write_text(json.dumps({**json.loads((SCHEMAS_DIR / "validation.json").read_text()),
                                **change}))
    with pytest.raises(UserError, match=complaint):
        load_validation(("train", "eval", "test"), path)


def test_the_significance_level_is_checked(tmp_path):
    path = tmp_path / "validation.json"
    path.write_text(json.dumps({**load_json("validation.json"), "significance_level": 0.7}))
    with pytest.raises(UserError, match=f"Validation config {path} is inconsistent: "
                                        f"significance_level must be a probability"):
        resolve(run.parse_args(["--validation-config", str(path)])[0])


def test_configuration_from_a_folder_outside_the_checkout(tmp_path, monkeypatch):
    """FER_SCHEMAS_DIR holds only the files a user changed; the rest are the shipped ones, and
    an error names the file actually used."""
    mine = tmp_path / "etc-fer"
    mine.mkdir()
    (mine / "evaluation.json").write_text(json.dumps({**load_json("evaluation.json"),
                                                      "confidence": 0.9}))
    monkeypatch.setenv("FER_SCHEMAS_DIR", str(mine))
    settings = resolve(run.parse_args([])[0])
    assert settings.evaluation.confidence == 0.9  # the user's file
    assert settings.validation == json.loads((SCHEMAS_DIR / "validation.json").read_text())
    assert settings.schema == str((SCHEMAS_DIR / "schema.pbtxt").resolve())
    (mine / "evaluation.json").write_text(json.dumps({**load_json("evaluation.json"),
                                                      "confidence": 2}))
    with pytest.raises(UserError, match=f"Gating config {mine / 'evaluation.json'} is wrong: "
                                        f"confidence must lie in"):
        resolve(run.parse_args([])[0])
    (mine / "evaluation.json").unlink()

    policy, schema = tmp_path / "policy.json", tmp_path / "my_schema.pbtxt"
    policy.write_text(json.dumps({**load_json("validation.json"), "significance_level": 0.01}))
    schema.write_text((SCHEMAS_DIR / "schema.pbtxt").read_text())
    settings = resolve(run.parse_args(["--validation-config", str(policy),
                                       "--schema", str(schema)])[0])
    assert settings.validation["significance_level"] == 0.01
    assert settings.schema == str(schema.resolve())
    with pytest.raises(UserError, match=f"Schema file {tmp_path / 'none.pbtxt'} \\(--schema\\) "
                                        f"does not exist"):
        resolve(run.parse_args(["--schema", str(tmp_path / "none.pbtxt")])[0])
    (mine / "validation.json").write_text("{not json")
    with pytest.raises(UserError, match=f"Config file {mine / 'validation.json'} is not valid"):
        resolve(run.parse_args([])[0])


def test_the_command_printed_for_other_workers_survives_a_shell(tmp_path):
    """Run through a shell, the printed worker command gives the worker the chief's very flags:
    a quoted glob stays a glob (here it would match a file), a space stays inside its word."""
    import subprocess
    import sys

    (tmp_path / "drops dir").mkdir()
    (tmp_path / "drops dir" / "a.csv.gz").write_bytes(b"")
    flags = ["--data", "drops dir/*.csv.gz", "--epochs", "2", "--batch-size", "16"]
    chief = run.parse_args(flags)[0]
    context = run.Context(resolve(chief), chief, (), "/root")
    examples = run.Output("/root/ExampleGen/1", {}, 1, "f")
    line = run._worker_command(context, examples, None, "/s/fer/1")
    assert line.startswith("python -m components.trainer ")
    echo = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    shown = subprocess.run(["bash", "-c", line.replace("python -m components.trainer", echo)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    argv = json.loads(shown.stdout)
    assert argv[argv.index("--data") + 1] == "drops dir/*.csv.gz"
    assert resolve(trainer.parse_args(argv)) == resolve(chief)


def test_importing_the_package_changes_no_environment_and_no_logger():
    """Only a command's main quiets anything (pipeline.quiet): a program that imports the
    package keeps its own environment and logging."""
    import os
    import subprocess
    import sys

    code = ("import logging, os, pipeline, components.example_gen\n"
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ.get('PYTHONWARNINGS'),\n"
            "      logging.getLogger('apache_beam.io.tfrecordio').level)\n"
            "pipeline.quiet()\n"
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'),\n"
            "      logging.getLogger('apache_beam.io.tfrecordio').level)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stdout.split("\n")
    assert out[0] == "None None 0" and out[1] == "3 40"
