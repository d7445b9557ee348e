"""Faults injected into real runs (tests/inject.py): kill -9 inside every component, input that
changes or vanishes while it is read, damaged TFRecords, a damaged serving model, a full disk and a
read-only serving directory (a small tmpfs and a read-only bind mount, in a mount namespace).

After each: a clear message (no traceback) or recovery; only complete models in the serving
directory; a consistent metadata store (tests/consistency.py); and a re-run that succeeds."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import consistency
from tests.helpers import refused, run_inputs

pytestmark = pytest.mark.slow  # whole runs, killed and run again

REPO = Path(__file__).resolve().parent.parent
# (component, where the kill happens): each point is inside the component's own work.
KILL_POINTS = [
    ("ExampleGen", "components.example_gen:_GzipWriter.close"),  # Beam writing a shard
    ("StatisticsGen", "components.statistics_gen:_write_html"),  # statistics written, not html
    ("SchemaGen", "tensorflow_data_validation:write_schema_text@2"),  # inferred written, not final
    ("ExampleValidator", "components.example_validator:_findings"),
    ("Trainer", "components.trainer:_export"),  # trained, not exported
    ("Evaluator", "components.evaluator:_metrics"),  # TFMA done, blessing not written
    ("Pusher", "pipeline.artifacts:publish"),  # model copied, not renamed into place
    # Renamed into place, push not yet recorded (the Evaluator finished in the run before).
    ("Pusher", "pipeline.metadata:Store.finish"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    return (base, *run_inputs(base))


def pipeline_args(base, data, gates, root, *extra):
    """A run with pipeline root base/<root> and serving directory base/<root>-serving."""
    return ["--data", str(data), "--pipeline-root", str(base / root), "--serving-dir",
            str(base / f"{root}-serving"), "--evaluation-config", str(gates), "--epochs", "1",
            "--batch-size", "32", *extra]


def epochs(args, n):
    """The same run, training for n epochs: a new model."""
    changed = list(args)
    changed[changed.index("--epochs") + 1] = str(n)
    return changed


def run(args, inject=None, cwd=REPO, env=None):
    command = [sys.executable, "-m", "tests.inject", *inject, "--"] if inject else [
        sys.executable, "-m", "pipeline.run"]
    return subprocess.run(command + args, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def consistent(base, root, running=(), versions=(), partial_pushes=0):
    state = consistency.check(base / root, base / f"{root}-serving")
    assert state["problems"] == [] and state["unmarked"] == [], state
    assert state["running"] == list(running), state
    assert state["versions"] == list(versions), state
    assert len(state["partial_pushes"]) == partial_pushes, state


def test_kill_9_inside_each_component_then_the_rerun_finishes(setup, tmp_path):
    """Each run is killed inside the next component; each re-run reuses what finished before."""
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "chain")
    workdir, scratch = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir(), scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    for i, (component, point) in enumerate(KILL_POINTS):
        killed = run(args, inject=(point, "kill"), cwd=workdir, env=env)
        assert killed.returncode == -9, f"{point} was not reached:\n{killed.stdout[-2000:]}" \
                                        f"{killed.stderr[-2000:]}"
        # Redone: what the previous run was killed in. Reused: everything before that.
        for earlier in [c for c, _ in KILL_POINTS[:max(i - 1, 0)] if c != component]:
            assert f"{earlier}: reusing" in killed.stdout, (earlier, killed.stdout[-2000:])
        renamed = point == "pipeline.metadata:Store.finish"
        consistent(base, "chain", running=[component], versions=[1] if renamed else [],
                   partial_pushes=int(component == "Pusher" and not renamed))
        newest = max((base / "chain" / component).iterdir(), key=lambda p: int(p.name))
        assert not (newest / "_COMPLETE").exists()

    final = ok(run(args, cwd=workdir, env=env))
    assert "marked FAILED" in final  # the last killed run's execution, now known to be dead
    assert "now serving version 1" in final
    consistent(base, "chain", versions=[1])
    lineage = ok(subprocess.run(
        [sys.executable, "-m", "pipeline.lineage", "--pipeline-root", str(base / "chain"),
         "--serving-dir", str(base / "chain-serving")], capture_output=True, text=True, cwd=REPO))
    assert "Pusher (execution" in lineage and f"input file {data}" in lineage
    # Nothing was written outside the pipeline root and the serving directory, save the
    # libraries' own temporaries (TensorFlow's autograph sources, Beam's empty temp folder).
    assert list(workdir.iterdir()) == []
    assert all(p.name.startswith("__autograph_generated_file") or (
        p.name.startswith("beam-pipeline-temp") and not any(p.iterdir()))
        for p in scratch.iterdir())


# Every call that writes to ML Metadata; a kill just before the N-th falls between two writes.
METADATA_WRITES = "ml_metadata.metadata_store:" + "|".join(
    f"MetadataStore.{m}" for m in ("put_artifacts", "put_executions", "put_events",
                                   "put_execution", "put_attributions_and_associations"))


def test_kill_9_between_any_two_metadata_writes_then_the_rerun_finishes(setup):
    """A kill before each metadata write of a run, in turn: the store is never left with a
    COMPLETE execution that lacks its output, and every re-run finishes."""
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "writes", "--stop-after", "ExampleGen")
    for nth in range(1, 20):
        killed = run(args, inject=(f"{METADATA_WRITES}@{nth}", "kill"))
        if killed.returncode == 0:  # fewer writes than nth: every window was tried
            break
        assert killed.returncode == -9, killed.stderr[-3000:]
        assert consistency.check(base / "writes", base / "writes-serving")["problems"] == []
        assert "ExampleGen: " in ok(run(args))
        consistent(base, "writes")
        shutil.rmtree(base / "writes")
    assert nth > 3, "the run made fewer metadata writes than expected"


def test_a_kill_after_the_record_before_the_marker_is_repaired_by_the_next_run(setup):
    """The folder's marker is written last; a run that died just before it leaves a recorded,
    unmarked output, which the next run checks, marks and reuses."""
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "marker", "--stop-after", "ExampleGen")
    killed = run(args, inject=("pipeline.artifacts:mark_complete", "kill"))
    assert killed.returncode == -9, killed.stderr[-3000:]
    state = consistency.check(base / "marker", base / "marker-serving")
    folder = base / "marker" / "ExampleGen" / "1"
    assert state["problems"] == [] and state["unmarked"] == [str(folder)], state
    assert f"ExampleGen: reusing {folder}" in ok(run(args))
    consistent(base, "marker")


def test_a_scheduler_stop_ends_the_run_at_once_and_training_resumes(setup):
    base, data, gates = setup
    args = epochs(pipeline_args(base, data, gates, "stopped", "--stop-after", "Trainer"), 2)
    stopped = run(args, inject=("tf_keras.callbacks:CSVLogger.on_epoch_end", "term"))
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]
    assert "interrupted (SIGTERM)" in stopped.stderr and "Traceback" not in stopped.stderr
    consistent(base, "stopped", running=["Trainer"])
    resumed = ok(run(args))
    assert "Trainer: continuing the unfinished execution" in resumed
    assert "Trainer: 2 epoch(s)" in resumed
    consistent(base, "stopped")


def test_a_step_that_hangs_is_ended_by_the_watchdog_and_frees_the_root(setup):
    """StatisticsGen blocked for good (as on a stalled network disk): the run ends by itself
    after --stall-timeout with one paragraph (exit 3), holds nothing, and the next run records
    the step FAILED and finishes it."""
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "hung", "--stop-after", "StatisticsGen")
    hung = run(args + ["--stall-timeout", "10"],
               inject=("components.statistics_gen:run", "hang"))
    assert hung.returncode == 3, hung.stderr[-3000:]
    message = " ".join(hung.stderr.split())
    assert "error: StatisticsGen made no progress for" in message
    assert "Traceback" not in hung.stderr
    consistent(base, "hung", running=["StatisticsGen"])
    again = ok(run(args))
    assert "marked FAILED" in again and "StatisticsGen: done in" in again
    consistent(base, "hung")


def test_a_damaged_metadata_store_stops_the_run_with_the_remedy(setup):
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "store", "--stop-after", "ExampleGen")
    ok(run(args))
    store = base / "store" / "metadata.sqlite"
    store.write_bytes(store.read_bytes()[:20000])  # a copy cut short
    refused(run(args), 3, "is damaged", f"mv {store} {store}.damaged")
    store.rename(f"{store}.damaged")
    assert "ExampleGen: 900 rows read" in ok(run(args))
    # The new store knows nothing of the old one's outputs: kept on disk, never reused.
    assert consistency.check(base / "store", base / "store-serving")["problems"] == [
        f"{base / 'store' / 'ExampleGen' / '1'} is marked _COMPLETE without a COMPLETE execution"]


@pytest.mark.parametrize("fault", ["append", "delete"])
def test_input_that_changes_while_it_is_read_is_refused(setup, fault):
    base, data, gates = setup
    csv = base / f"changing-{fault}.csv"
    shutil.copy(data, csv)
    args = pipeline_args(base, csv, gates, f"input-{fault}", "--stop-after",
                         "ExampleGen")
    refused(run(args, inject=("components.example_gen:_run_beam", f"{fault}={csv}")), 2,
            "changed while it was being read")
    consistent(base, f"input-{fault}")
    if fault == "delete":
        refused(run(args), 2, "No input file matches")
        shutil.copy(data, csv)
    again = ok(run(args))
    rows = 900 + (fault == "append")
    assert f"ExampleGen: {rows:,} rows read" in again
    consistent(base, f"input-{fault}")


def test_damaged_tfrecords_are_never_used(setup):
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "damaged")
    ok(run(args))
    root = base / "damaged"
    # Damaged between runs: found when the run would reuse it, and made anew.
    shard = next((root / "ExampleGen" / "1" / "Split-train").glob("*.tfrecord.gz"))
    assert "ExampleGen: reusing" in ok(run(args + ["--stop-after", "ExampleGen"]))  # intact
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        f.write(b"\x00" * 32)
    again = ok(run(args))
    assert f"ExampleGen: not reusing {root / 'ExampleGen' / '1'}" in again
    assert (root / "ExampleGen" / "2" / "_COMPLETE").exists()
    assert "Nothing new" in again
    consistent(base, "damaged", versions=[1])

    # Damaged while the run uses it: the Trainer stops with a clear message; the re-run recovers.
    longer = epochs(args, 2)
    glob = str(root / "ExampleGen" / "2" / "Split-train" / "*.tfrecord.gz")
    refused(run(longer, inject=("components.trainer:run", f"corrupt={glob}")), 3,
            "is damaged", "Run again")
    consistent(base, "damaged", versions=[1])
    recovered = ok(run(longer))
    assert (root / "ExampleGen" / "3" / "_COMPLETE").exists()  # retired when the Trainer failed
    assert "ExampleGen: reusing" not in recovered and "now serving version 2" in recovered
    consistent(base, "damaged", versions=[1, 2])


def test_a_damaged_serving_model_stops_the_run_and_is_left_alone(setup):
    base, data, gates = setup
    args = pipeline_args(base, data, gates, "baseline")
    ok(run(args))
    model_root = base / "baseline-serving" / "fer"
    variables = next((model_root / "1" / "variables").glob("variables.data-*"))
    variables.write_bytes(variables.read_bytes()[:1000])  # truncated: a broken copy
    before = sorted((p.relative_to(model_root), p.stat().st_size)
                    for p in model_root.rglob("*") if p.is_file())
    longer = epochs(args, 2)
    refused(run(longer), 2, f"The model {model_root / '1'} cannot be loaded",
            "Nothing was pushed")
    refused(subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(model_root),
                            str(data)], capture_output=True, text=True, cwd=REPO), 2,
            f"The model {model_root / '1'} cannot be loaded")
    after = sorted((p.relative_to(model_root), p.stat().st_size)
                   for p in model_root.rglob("*") if p.is_file())
    assert after == before

    # The remedy the message gives: move the broken version away; then the re-run pushes.
    shutil.move(model_root / "1", base / "broken-version-1")
    recovered = ok(run(longer))
    assert "Trainer: reusing" in recovered and "compared with no serving model" in recovered
    assert "now serving version 1" in recovered
    consistent(base, "baseline", versions=[1])

    # A version folder without saved_model.pb is not a model: it is never the baseline.
    (model_root / "7").mkdir()
    (model_root / "7" / "variables").mkdir()
    again = ok(run(longer))
    assert "Nothing new" in again


def _namespace_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


namespaced = pytest.mark.skipif(
    not _namespace_available(),
    reason="needs unshare -rm (a user and mount namespace) to mount a small tmpfs")


def in_namespace(script: str) -> None:
    """Run a bash script as root of a private mount namespace (its mounts vanish with it)."""
    result = subprocess.run(["unshare", "-rm", "bash", "-euc", script], capture_output=True,
                            text=True, timeout=900, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


class Steps:
    """Shell steps that each run the pipeline, keep its exit code and output, then check
    consistency: inside the namespace, since the mounts exist only there."""

    def __init__(self, folder: Path, root: Path, serving: Path):
        self.folder, self.root, self.serving = folder, root, serving

    def __call__(self, name: str, args: list[str]) -> str:
        out = self.folder / name
        command = " ".join([sys.executable, "-m", "pipeline.run", *map(str, args)])
        return (f"set +e; {command} > {out}.out 2> {out}.err; echo $? > {out}.rc; set -e\n"
                f"{sys.executable} -m tests.consistency {self.root} {self.serving} > {out}.state\n")

    def outcome(self, name: str) -> tuple[int, str, str, dict]:
        out = self.folder / name
        return (int(Path(f"{out}.rc").read_text()), Path(f"{out}.out").read_text(),
                " ".join(Path(f"{out}.err").read_text().split()),
                json.loads(Path(f"{out}.state").read_text()))


@namespaced
def test_a_full_disk_stops_the_run_clearly_and_the_rerun_resumes(setup, tmp_path):
    """The pipeline root on a tmpfs too small for the TFRecords, then for the model."""
    _, data, gates = setup
    root = tmp_path / "root"
    root.mkdir()
    args = pipeline_args(tmp_path, data, gates, "root")
    step = Steps(tmp_path, root, tmp_path / "root-serving")
    in_namespace(f"mount -t tmpfs -o size=600k none {root}\n" + step("tfrecords", args)
                 + f"mount -o remount,size=12m {root}\n" + step("model", args)
                 + f"mount -o remount,size=400m {root}\n" + step("rerun", args))

    for name in ("tfrecords", "model"):
        code, out, err, state = step.outcome(name)
        assert code == 2 and "Traceback" not in err, (name, out[-2000:], err[-3000:])
        assert "no space left on device" in err and "run again" in err, err
        assert state["problems"] == [] and state["versions"] == [], state
    assert "ExampleGen: 900 rows read" in step.outcome("model")[1]
    code, out, err, state = step.outcome("rerun")
    assert code == 0, (out[-2000:], err[-3000:])
    assert "ExampleGen: reusing" in out and "Trainer: continuing the unfinished execution" in out
    assert "now serving version 1" in out
    assert state == {"problems": [], "running": [], "unmarked": [], "partial_pushes": [],
                     "versions": [1]}


@namespaced
def test_a_read_only_or_full_serving_directory_is_never_harmed(setup, tmp_path):
    _, data, gates = setup
    serving, kept = tmp_path / "root-serving", tmp_path / "kept"
    serving.mkdir()
    first = pipeline_args(tmp_path, data, gates, "root")
    again = epochs(first, 2)
    step = Steps(tmp_path, tmp_path / "root", serving)
    in_namespace(
        step("first", first)
        + f"mount --bind {serving} {serving}; mount -o remount,bind,ro {serving}\n"
        + step("readonly", again)
        + f"umount {serving}; cp -a {serving} {kept}\n"
        # Room for version 1 and half of another model: the push runs out of space midway.
        + f"mount -t tmpfs -o size=$(( $(du -sk {kept} | cut -f1) * 3 / 2 ))k none {serving}\n"
        + f"cp -a {kept}/. {serving}/\n" + step("full", again)
        + f"mount -o remount,size=400m {serving}\n" + step("rerun", again))

    assert step.outcome("first")[0] == 0
    for name, words in (("readonly", "Read-only file system"), ("full", "No space left")):
        code, out, err, state = step.outcome(name)
        assert code == 2 and "Traceback" not in err, (name, out[-2000:], err[-3000:])
        assert "Could not push the model" in err and words in err, err
        assert "versions already there are untouched" in err
        assert state == {"problems": [], "running": [], "unmarked": [], "partial_pushes": [],
                     "versions": [1]}
    code, out, err, state = step.outcome("rerun")
    assert code == 0 and "Evaluator: reusing" in out and "now serving version 2" in out, err
    assert state == {"problems": [], "running": [], "unmarked": [], "partial_pushes": [],
                     "versions": [1, 2]}


def test_soak_twenty_scheduled_runs_over_growing_spans_with_kills(tmp_path):
    """A scheduler's month: a new span each run, the newest 2 trained on; every third run is
    killed (-9) at a point drawn at random inside a step, and the run after it recovers. In
    the end: a consistent store, every version byte-identical to a model a Trainer made and
    pushed whole, and the lineage of every version complete down to its input files."""
    import random

    from pipeline import default_data, serving

    rng = random.Random(2026)
    _, gates = run_inputs(tmp_path)
    drops = tmp_path / "drops"
    args = ["--data", str(drops), "--spans", "2", "--pipeline-root", str(tmp_path / "soak"),
            "--serving-dir", str(tmp_path / "soak-serving"), "--evaluation-config", str(gates),
            "--epochs", "1", "--batch-size", "32"]
    for day in range(1, 21):
        default_data.write_csv(drops / f"span-202611{day:02d}" / "faces.csv", rows=240,
                               seed=1000 + day)
        if day % 3 == 0:
            _, point = rng.choice(KILL_POINTS)
            killed = run(args, inject=(point, "kill"))
            assert killed.returncode in (-9, 0), killed.stderr[-3000:]  # 0: point not reached
            state = consistency.check(tmp_path / "soak", tmp_path / "soak-serving")
            assert state["problems"] == [], (day, point, state)
        ok(run(args))
    state = consistency.check(tmp_path / "soak", tmp_path / "soak-serving")
    assert state["problems"] == [] and state["running"] == [], state
    versions = serving.versions(tmp_path / "soak-serving" / "fer")
    assert len(versions) >= 10, versions  # warm-started, blessed, pushed most days
    for version in versions:
        traced = ok(subprocess.run(
            [sys.executable, "-m", "pipeline.lineage", "--pipeline-root", str(tmp_path / "soak"),
             "--serving-dir", str(tmp_path / "soak-serving"), "--version", str(version)],
            capture_output=True, text=True, timeout=300, cwd=REPO))
        assert "input file" in traced and "Trainer (execution" in traced, traced[-2000:]
