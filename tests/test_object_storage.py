"""The pipeline with its data, pipeline root and serving directory on object storage (gs://), on a
GCS emulator on 127.0.0.1 (tests.gcs) that Beam, TensorFlow, TFDV and TFMA all use: a whole run
pushes, an identical run reuses everything, a push killed halfway leaves serving consistent.
ML Metadata lives in a local SQLite file (--metadata-config), as it cannot live on gs://."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.gcs import Emulator
from tests.helpers import free_port, run_inputs

pytestmark = pytest.mark.slow  # whole runs


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emulator = Emulator(tmp_path_factory.mktemp("gcs"))
    try:
        emulator.bucket("fer")
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def setup(gcs, tmp_path_factory):
    base = tmp_path_factory.mktemp("object_storage")
    data, gates = run_inputs(base)
    gcs.upload(data, "gs://fer/drops/faces.csv")
    store = base / "metadata.json"
    store.write_text(json.dumps({"sqlite": {"filename_uri": str(base / "metadata.sqlite")}}))
    return base, gates, store


def run(gcs, *args, entry=None, check=True):
    start = [sys.executable, "-m", "tests.inject", *entry, "--"] if entry else [
        sys.executable, "-m", "pipeline.run"]
    result = subprocess.run(start + list(args), capture_output=True, text=True, timeout=900,
                            env={**os.environ, **gcs.environment})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def on_gcs(gcs, code: str):
    """What `code` (Python that prints JSON) finds on the emulator, asked from a process of its
    own: the test process keeps its own environment."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **gcs.environment})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def pipeline_args(setup, serving="gs://fer/serving"):
    base, gates, store = setup
    return ["--data", "gs://fer/drops/faces.csv", "--pipeline-root", "gs://fer/root",
            "--serving-dir", serving, "--metadata-config", str(store),
            "--evaluation-config", str(gates), "--epochs", "1", "--batch-size", "32"]


SERVING_STATE = """
import json, sys
from pipeline import artifacts, metadata, serving
root = sys.argv[1]
print(json.dumps({"versions": serving.versions(root),
                  "folders": artifacts.listdir(root),
                  "contents": {v: serving.model_content(artifacts.join(root, v))
                               for v in artifacts.listdir(root)}}))
"""


def serving_state(gcs, model_root):
    return on_gcs(gcs, SERVING_STATE.replace("sys.argv[1]", repr(model_root)))


@pytest.fixture(scope="module")
def first(gcs, setup):
    return run(gcs, *pipeline_args(setup)).stdout


def test_a_run_on_object_storage_pushes_and_an_identical_one_reuses_everything(gcs, setup,
                                                                               first):
    assert "ExampleGen: 900 rows read from 1 file(s)" in first
    assert "Evaluator: BLESSED" in first and "now serving version 1: gs://fer/serving/fer/1" in first
    state = serving_state(gcs, "gs://fer/serving/fer")
    assert state["versions"] == [1] and state["folders"] == ["1"]
    trained = on_gcs(gcs, "import json; from pipeline import artifacts, metadata; print(json.dumps("
                          "metadata.tree_fingerprint('gs://fer/root/Trainer/1/serving_model')))")
    assert state["contents"]["1"] == trained  # the model pushed whole

    again = run(gcs, *pipeline_args(setup)).stdout
    for component in ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer"):
        assert f"{component}: reusing gs://fer/root/{component}/1" in again
    assert "Nothing new" in again
    assert serving_state(gcs, "gs://fer/serving/fer")["versions"] == [1]

    lineage = subprocess.run(
        [sys.executable, "-m", "pipeline.lineage", "--pipeline-root", "gs://fer/root",
         "--serving-dir", "gs://fer/serving", "--metadata-config", str(setup[2])],
        capture_output=True, text=True, timeout=300, env={**os.environ, **gcs.environment})
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    assert lineage.stdout.startswith("gs://fer/serving/fer/1 came from:")
    assert "input file gs://fer/drops/faces.csv sha256" in lineage.stdout


def test_a_push_killed_halfway_leaves_serving_consistent(gcs, setup, first):
    """kill -9 after the first file of the model is copied into its version folder; the
    half-copied folder is never a version, and the next run pushes the model whole."""
    serving = "gs://fer/serving-killed"
    killed = run(gcs, *pipeline_args(setup, serving),
                 entry=["tensorflow.io.gfile:copy@2", "kill"], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "Trainer: reusing" in killed.stdout and "Pusher: started" in killed.stdout
    assert "Pusher: pushed" not in killed.stdout and "Pusher: done" not in killed.stdout
    half = serving_state(gcs, f"{serving}/fer")
    assert half["versions"] == [] and half["folders"] == ["1"]  # there, but not a version

    rerun = run(gcs, *pipeline_args(setup, serving)).stdout
    assert f"now serving version 1: {serving}/fer/1" in rerun
    state = serving_state(gcs, f"{serving}/fer")
    assert state["versions"] == [1] and state["folders"] == ["1"]
    assert state["contents"]["1"] == serving_state(gcs, "gs://fer/serving/fer")["contents"]["1"]


def test_a_chief_and_a_worker_train_on_examples_in_object_storage(gcs, first):
    """The README's multi-worker recipe, on loopback: both read gs://, only the chief writes."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = []
    for index, output in enumerate((["--output", "gs://fer/multi-worker"], [])):
        env = {**os.environ, **gcs.environment, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "components.trainer", "--examples", "gs://fer/root/ExampleGen/1",
             *output, "--distribution", "multi_worker", "--epochs", "1", "--batch-size", "32",
             "--data", "gs://fer/drops/faces.csv"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1])["replicas"] == 2
    written = on_gcs(gcs, "import json; from pipeline import artifacts; print(json.dumps("
                          "[artifacts.listdir('gs://fer/multi-worker'), json.loads("
                          "artifacts.read_text('gs://fer/multi-worker/training.json'))]))")
    assert "serving_model" in written[0] and written[1]["replicas"] == 2


def test_folders_and_spans_on_object_storage_are_read_as_locally(gcs, setup, tmp_path):
    """--data gs://bucket/folder reads the folder's shards; --spans picks the newest span folders
    there, as for a local drops folder."""
    from pipeline import default_data

    base, gates, store = setup
    for day, rows in (("20261201", 40), ("20261202", 30)):
        csv = default_data.write_csv(tmp_path / f"{day}.csv", rows=rows, seed=int(day[-1]))
        gcs.upload(csv, f"gs://fer/spans/span-{day}/faces.csv")
    common = ["--metadata-config", str(store), "--stop-after", "ExampleGen"]
    folder = run(gcs, "--data", "gs://fer/drops", "--pipeline-root", "gs://fer/root-folder",
                 *common).stdout
    assert "ExampleGen: 900 rows read from 1 file(s)" in folder
    spans = run(gcs, "--data", "gs://fer/spans", "--spans", "1", "--pipeline-root",
                "gs://fer/root-spans", *common).stdout
    assert "Spans: span-20261202 (the newest 1 of 2 in gs://fer/spans)" in spans
    assert "ExampleGen: 30 rows read from 1 file(s)" in spans
