"""pipeline.run as a whole: ML Metadata lineage, caching of unchanged executions, resuming a run
killed during training, and one run at a time per pipeline root. Real components throughout."""
import fcntl
import hashlib
import json
import signal
import subprocess
import sys

import pytest

from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline import metadata, serving
from tests.helpers import run_inputs

pytestmark = pytest.mark.slow  # whole runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("orchestration")
    return (base, *run_inputs(base))


def command(base, data, gates, root="root", *extra, serving="serving", entry=None):
    """pipeline.run with pipeline root base/<root>; entry: tests.inject's arguments, to run it
    with a fault injected."""
    start = [sys.executable, "-m", "tests.inject", *entry, "--"] if entry else [
        sys.executable, "-m", "pipeline.run"]
    return start + ["--data", str(data), "--pipeline-root", str(base / root), "--serving-dir",
                    str(base / serving), "--evaluation-config", str(gates), "--batch-size", "32",
                    *extra]


def run(*args):
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def first(setup):
    base, data, gates = setup
    return run(*command(base, data, gates, "root", "--epochs", "1"))


def test_an_identical_second_run_reuses_everything_and_trains_nothing(setup, first):
    base, data, gates = setup
    assert "now serving version 1" in first
    again = run(*command(base, data, gates, "root", "--epochs", "1"))
    for component in ("StatisticsGen", "SchemaGen", "ExampleValidator", "DataPage", "Trainer"):
        assert f"{component}: reusing {base / 'root' / component / '1'}" in again
    assert "Nothing new" in again and "already serves as" in again
    assert not (base / "root" / "Trainer" / "2").exists()
    assert serving.versions(base / "serving" / "fer") == [1]


def test_one_changed_hyperparameter_reruns_only_the_trainer_and_what_follows(setup):
    """On a root of its own (it pushes a second version, which the other tests must not see)."""
    base, data, gates = setup
    root, serving_dir = "changed", "changed-serving"
    run(*command(base, data, gates, root, "--epochs", "1", serving=serving_dir))
    changed = run(*command(base, data, gates, root, "--epochs", "2", serving=serving_dir))
    for component in ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                      "DataPage"):
        assert f"{component}: reusing" in changed
    assert "Trainer: reusing" not in changed and "Trainer: 2 epoch(s)" in changed
    assert (base / root / "Trainer" / "2" / "_COMPLETE").exists()
    assert (base / root / "Evaluator" / "2" / "_COMPLETE").exists()
    # A model serves, so the retrain starts from it, and the lineage of the new version says so.
    serving_v1 = base / serving_dir / "fer" / "1"
    assert f"Trainer: starting from the weights of {serving_v1}" in changed
    assert "now serving version 2" in changed
    out = run(sys.executable, "-m", "pipeline.lineage", "--pipeline-root", str(base / root),
              "--serving-dir", str(base / serving_dir), "--version", "2")
    assert f"base model {serving_v1}" in out and "warm_start = true" in out
    assert "and went into: Report (execution" in out


def test_lineage_names_the_data_and_parameters_of_a_served_version(setup, first):
    base, data, _ = setup
    out = run(sys.executable, "-m", "pipeline.lineage", "--pipeline-root", str(base / "root"),
              "--serving-dir", str(base / "serving"), "--version", "1")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    assert out.startswith(f"{base / 'serving' / 'fer' / '1'} came from:")
    assert f"input file {data} sha256 {sha}" in out
    for component in ("Pusher", "Evaluator", "Trainer", "ExampleValidator", "SchemaGen",
                      "StatisticsGen", "ExampleGen"):  # and what the pushed model went into:
        assert f"{component} (execution" in out
    assert "config.epochs = 1" in out and "config.batch_size = 32" in out and "COMPLETE" in out
    assert "and went into: Report (execution" in out


def test_a_second_run_on_a_busy_root_exits_with_a_clear_message(setup, first):
    base, data, gates = setup
    with open(base / "root" / ".run.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = subprocess.run(command(base, data, gates), capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Another run is using the pipeline root" in " ".join(result.stderr.split())


def test_a_run_killed_during_training_continues_where_it_stopped(setup):
    base, data, gates = setup
    args = ("killed", "--epochs", "4")
    # Killed as the second epoch is logged: the first one's backup is on disk.
    killed = subprocess.run(command(base, data, gates, *args, serving="killed-serving", entry=(
        "tf_keras.callbacks:CSVLogger.on_epoch_end@2", "kill")), capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (base / "killed" / "Trainer" / "1" / "_COMPLETE").exists()

    resumed = run(*command(base, data, gates, *args, serving="killed-serving"))
    assert "ExampleGen: reusing" in resumed and "ExampleValidator: reusing" in resumed
    assert f"Trainer: continuing the unfinished execution {base / 'killed' / 'Trainer' / '1'}" \
        in resumed
    assert "resuming after epoch" in resumed and "Trainer: 4 epoch(s)" in resumed
    assert not (base / "killed" / "Trainer" / "2").exists()


def test_tuner_runs_before_the_trainer_and_from_scratch_ignores_the_serving_model(setup, first):
    base, data, gates = setup
    search = base / "tuner.json"
    search.write_text(json.dumps({"epochs_per_trial": 1, "parameters": {
        "learning_rate": {"low": 0.0005, "high": 0.002, "log": True}}}))
    args = command(base, data, gates, "tuned", "--epochs", "1", "--tune", "2", "--tuner-config",
                   str(search), "--from-scratch", "--stop-after", "Trainer")
    out = run(*args)
    assert "Tuner: trial 2/2" in out and "Tuner: 2 trial(s); best eval accuracy" in out
    assert "starting from the weights" not in out  # a model serves, but --from-scratch
    best = json.loads((base / "tuned" / "Tuner" / "1" / "best_hyperparameters.json").read_text())
    training = json.loads((base / "tuned" / "Trainer" / "1" / "training.json").read_text())
    assert training["config"]["learning_rate"] == best["learning_rate"]
    assert training["warm_start"] is None
    store = metadata.Store.read_only(base / "tuned")
    [trainer] = store.get_executions_by_type("Trainer")
    inputs = [e.artifact_id for e in store.get_events_by_execution_ids([trainer.id])
              if e.type == mlmd.Event.INPUT]
    kinds = {store.get_artifact_types_by_id([a.type_id])[0].name
             for a in store.get_artifacts_by_id(inputs)}
    # Its examples, the Tuner's values, the validation they passed, and the model serving then,
    # which lineage names as such, not as a base model (--from-scratch).
    assert kinds == {"Examples", "HyperParameters", "ExampleAnomalies", "ServingModel"}
    traced = run(sys.executable, "-m", "pipeline.lineage", "--pipeline-root",
                 str(base / "tuned"), "--execution", str(base / "tuned" / "Trainer" / "1"))
    assert f"serving model then {base / 'serving' / 'fer' / '1'}" in traced
    assert "base model" not in traced
    again = run(*args)  # cached like every other step
    assert "Tuner: reusing" in again and "Trainer: reusing" in again


def test_a_not_blessed_rerun_says_nothing_new_rewrites_nothing_and_is_traceable(tmp_path):
    """Gates nothing passes: NOT BLESSED; the identical run again says "Nothing new", why
    nothing was pushed, and rewrites no report; lineage traces the unpushed Trainer."""
    data, gates = run_inputs(tmp_path)
    impossible = tmp_path / "impossible.json"
    impossible.write_text(json.dumps({**json.loads(gates.read_text()),
                                      "floors": {"accuracy": 1.0}, "min_examples": 0}))
    first = run(*command(tmp_path, data, impossible, "root", "--epochs", "1"))
    assert "Evaluator: NOT BLESSED" in first and "not pushed (not blessed)" in first
    [report] = (tmp_path / "root" / "Report").glob("*/report.html")
    stamp = report.stat().st_mtime_ns
    again = run(*command(tmp_path, data, impossible, "root", "--epochs", "1"))
    assert "Evaluator: reusing" in again and "Nothing new" in again
    assert "was NOT BLESSED for the reasons above, so nothing was pushed" in again
    assert "overall accuracy is" in again  # the reasons, said again
    assert f"Report: reusing {report.parent}" in again and f"Its report: {report}" in again
    assert report.stat().st_mtime_ns == stamp and not (tmp_path / "serving").exists()
    assert list((tmp_path / "root" / "Report").glob("*/report.html")) == [report]
    trainer = tmp_path / "root" / "Trainer" / "1"
    assert f"--execution {trainer}" in first
    traced = run(sys.executable, "-m", "pipeline.lineage", "--pipeline-root",
                 str(tmp_path / "root"), "--execution", str(trainer))
    assert traced.startswith(f"{trainer} came from:")
    assert "ExampleValidator (execution" in traced and f"input file {data}" in traced


def test_a_small_span_is_judged_with_the_test_data_of_earlier_runs(tmp_path):
    """After a run on 900 faces, a run on 150 other faces is evaluated on both test splits
    (min_examples 1,000 is not reached by 150 alone), resolved through ML Metadata."""
    from pipeline import default_data

    data, gates = run_inputs(tmp_path)
    run(*command(tmp_path, data, gates, "root", "--epochs", "1"))
    span = default_data.write_csv(tmp_path / "span.csv", rows=150, seed=12)
    out = run(*command(tmp_path, span, gates, "root", "--epochs", "1"))
    evaluation = json.loads((tmp_path / "root" / "Evaluator" / "2" / "evaluation.json")
                            .read_text())
    assert evaluation["examples_from"] == [str(tmp_path / "root" / "ExampleGen" / "2"),
                                           str(tmp_path / "root" / "ExampleGen" / "1")]
    counts = [json.loads((tmp_path / "root" / "ExampleGen" / n / "counts.json").read_text())
              for n in ("1", "2")]
    assert evaluation["examples"] == sum(c["written"]["test"] for c in counts)
    assert "(this run's and those of 1 earlier validated run(s))" in out


def test_an_eight_class_dataset_needs_only_its_ingestion_and_gating_configs(tmp_path):
    """FER+ style: an 8th class (Contempt). No schema edit, no environment variable; predict
    names the 8 classes with no configuration at all."""
    from pipeline.config import load_json

    data, gates = run_inputs(tmp_path)
    header, *rows = data.read_text().splitlines()
    rows = [f"7,{row.split(',', 1)[1]}" if i % 8 == 0 else row for i, row in enumerate(rows)]
    data.write_text("\n".join([header, *rows]) + "\n")
    ingest = tmp_path / "ingest.json"
    classes = [*load_json("ingest.json")["classes"], "Contempt"]
    ingest.write_text(json.dumps({**load_json("ingest.json"), "classes": classes}))
    out = run(*command(tmp_path, data, gates, "root", "--epochs", "1",
                       "--ingest-config", str(ingest)))
    assert "now serving version 1" in out
    answer = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model",
                             str(tmp_path / "serving" / "fer"), "--json", str(data)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr[-2000:]
    faces = json.loads(answer.stdout)["faces"]
    assert len(faces) == 900 and list(faces[0]["probabilities"]) == classes


def test_splits_named_otherwise_run_end_to_end_by_their_roles(tmp_path):
    """Splits called training/validation/testing: ingest.json names which is which (split_roles),
    the validation and gating configs name theirs; nothing else assumes train/eval/test."""
    from pipeline.config import load_json

    data, gates = run_inputs(tmp_path)
    names = {"train": "training", "eval": "validation", "test": "testing"}
    ingest = {**load_json("ingest.json"), "split_roles": {"train": "training",
                                                          "eval": "validation"}}
    ingest["usage_to_split"] = {k: names[v] for k, v in ingest["usage_to_split"].items()}
    ingest["hash_split"] = {names[k]: v for k, v in ingest["hash_split"].items()}
    validation = {**load_json("validation.json"), "drift_split": "training",
                  "skew_against_train": ["validation", "testing"]}
    files = {"ingest.json": ingest, "validation.json": validation,
             "gates.json": {**json.loads(gates.read_text()), "split": "testing"}}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    out = run(*command(tmp_path, data, tmp_path / "gates.json", "root", "--epochs", "1",
                       "--ingest-config", str(tmp_path / "ingest.json"),
                       "--validation-config", str(tmp_path / "validation.json")))
    assert "now serving version 1" in out and "testing examples" in out
    training = json.loads((tmp_path / "root" / "Trainer" / "1" / "training.json").read_text())
    assert set(training["examples_per_split"]) == {"training", "validation"}
    assert (tmp_path / "root" / "StatisticsGen" / "1" / "training_vs_testing.html").exists()
