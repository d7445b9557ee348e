"""What a run holds and reads before its steps: the layout of its folders, its locks, its input's
file types and its metadata store (issue 25, items 1, 4 and 5).

A run must never wait on itself (a root inside the serving model's folder took the same lock file
twice), never block on an input that is not a file (a named pipe), never take a damaged store for
a new one, and say plainly when the disk, not the store, is at fault. Each command-line test has a
timeout, so a hang fails it instead of stalling the suite."""
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import artifacts, default_data, fer_csv, lineage, metadata
from pipeline.errors import IntegrityError, UserError, disk_error
from tests.helpers import refused

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def pipeline(*args, timeout=120, prefix=()):
    """python -m pipeline.run ARGS, ended (and failed) past `timeout` seconds."""
    return subprocess.run([*prefix, sys.executable, "-m", "pipeline.run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


@pytest.fixture
def faces(tmp_path) -> Path:
    return default_data.write_csv(tmp_path / "data" / "faces.csv", rows=30, seed=1)


# 1a. Folders that nest: refused before the root is made or locked.

@pytest.mark.parametrize("root, serving, data, words", [
    ("s/fer", "s", None, "is inside the serving directory"),
    ("s", "s", None, "are the same folder"),
    ("r", "r/serving", None, "The serving directory"),
    ("data", "s", "data", "is the folder the input"),
    ("data/root", "s", "data", "is inside"),
    ("data/root", "s", "data/*.csv", "is inside"),
    ("gs://b/s/fer", "gs://b/s", None, "is inside the serving directory"),
    ("gs://b/r", "gs://b/r/", None, "are the same folder"),
])
def test_nested_root_serving_and_data_folders_are_refused(tmp_path, root, serving, data, words):
    (tmp_path / "data").mkdir()
    at = lambda p: p if p is None or "://" in p else str(tmp_path / p)
    with pytest.raises(UserError, match=words):
        artifacts.check_layout(at(root), at(serving), at(data))


@pytest.mark.parametrize("root, serving, data", [
    ("root", "serving", None),
    ("fer/root", "fer/serving", "fer/data"),
    ("data/root", "s", "data/faces.csv"),  # a single file: nothing else in its folder is read
    ("data2", "s", "data"),  # a name that begins like another folder's is not inside it
    ("gs://b/root", "gs://b/root-serving", "gs://b/root-data/*.csv"),
    ("root", "gs://b/root", "gs://b/root"),  # local and remote never nest
])
def test_side_by_side_folders_pass(tmp_path, root, serving, data):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "faces.csv").touch()
    at = lambda p: p if p is None or "://" in p else str(tmp_path / p)
    artifacts.check_layout(at(root), at(serving), at(data))


def test_a_root_inside_the_serving_model_folder_is_refused_at_once(tmp_path, faces):
    """It used to deadlock after "Evaluator: BLESSED": the run lock and the push lock were one
    file, S/fer/.lock, taken twice by the same process."""
    serving = tmp_path / "S"
    refused(pipeline("--data", faces, "--pipeline-root", serving / "fer", "--serving-dir",
                     serving, "--epochs", "1"), 2, "is inside the serving directory")
    assert not serving.exists()


def test_a_root_that_is_the_data_folder_is_refused_at_once(tmp_path, faces):
    """It used to fail every time, late, with "changed while it was being read": the run's own
    outputs were the change."""
    refused(pipeline("--data", faces.parent, "--pipeline-root", faces.parent, "--serving-dir",
                     tmp_path / "serving", "--stop-after", "ExampleGen"), 2,
            "is the folder the input")
    assert sorted(p.name for p in faces.parent.iterdir()) == ["faces.csv"]


# 1a. One lock file per purpose; (d) a holder that dies frees its lock.

PUSH_WHILE_HOLDING_THE_ROOT = """
import sys
from components import pusher
from pipeline import metadata
root, serving, model, out = sys.argv[1:]
with metadata.exclusive(root, metadata.store_connection(root)):
    print(pusher.run(model, serving, "fer", {"blessed": True, "reasons": []}, out)["version"])
"""


def test_a_push_into_the_folder_holding_the_run_lock_does_not_wait_on_it(tmp_path):
    """The run lock and the push lock are different files, so even a store kept in the serving
    model's folder (--metadata-config) cannot make a run wait on itself."""
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "variables" / "variables.index").write_bytes(b"weights")
    (model / "saved_model.pb").write_bytes(b"graph")
    serving = tmp_path / "serving"
    (serving / "fer").mkdir(parents=True)
    pushed = subprocess.run([sys.executable, "-c", PUSH_WHILE_HOLDING_THE_ROOT,
                             str(serving / "fer"), str(serving), str(model), str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env=ENV)
    assert pushed.returncode == 0 and pushed.stdout.split() == ["1"], pushed.stderr[-3000:]
    names = {p.name for p in (serving / "fer").iterdir()}
    assert {artifacts.RUN_LOCK, artifacts.PUSH_LOCK, "1"} <= names


HOLD_THE_ROOT = """
import sys
from pipeline import metadata
root = sys.argv[1]
with metadata.exclusive(root, metadata.store_connection(root)):
    print("held", flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_lock_holder_killed_with_sigkill_leaves_the_root_free_at_once(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    connection = metadata.store_connection(root)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_ROOT, root], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(artifacts.Busy, match=f"pid {holder.pid}"):
            with metadata.exclusive(root, connection):
                pass
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        start = time.monotonic()
        with metadata.exclusive(root, connection):  # no wait: raises Busy if still held
            took = time.monotonic() - start
        assert took < 1
    finally:
        holder.kill()
        holder.wait()


# 1b. Only regular files are read.

@pytest.mark.parametrize("given", ["folder", "pipe"])
def test_a_named_pipe_as_input_is_refused_not_waited_on(tmp_path, faces, given):
    """A FIFO among the data (or given as --data) used to block the run forever, holding the
    root, when its fingerprint was taken."""
    pipe = faces.parent / "drop.csv"
    os.mkfifo(pipe)
    data = faces.parent if given == "folder" else pipe
    message = refused(pipeline("--data", data, "--pipeline-root", tmp_path / "root",
                               "--serving-dir", tmp_path / "serving", "--stop-after",
                               "ExampleGen"), 2, f"The input {pipe} is a named pipe (FIFO)")
    assert "not a regular file" in message
    assert not (tmp_path / "root" / "ExampleGen").exists()


def test_a_socket_among_the_input_is_refused_by_its_type(tmp_path, faces):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(faces.parent / "feed.csv"))
        with pytest.raises(UserError, match="feed.csv is a socket, not a regular file"):
            fer_csv.input_files(str(faces.parent))
        with pytest.raises(UserError, match="is a socket"):
            metadata.file_fingerprints(str(faces.parent))


# 1c. Entries of a data folder that are not read are said, not dropped silently.

def test_skipped_entries_of_a_data_folder_are_listed(tmp_path, faces, capsys):
    folder = faces.parent
    (folder / "broken.csv").symlink_to(folder / "nowhere.csv")
    (folder / "loop-a.csv").symlink_to(folder / "loop-b.csv")
    (folder / "loop-b.csv").symlink_to(folder / "loop-a.csv")
    (folder / "older").mkdir()
    (folder / ".hidden.csv").write_text("not data")  # hidden: skipped without a word
    found = fer_csv.list_inputs(str(folder))
    assert found.files == [str(faces)]
    assert found.skipped == [
        (str(folder / "broken.csv"), f"a broken symbolic link to {folder / 'nowhere.csv'}"),
        (str(folder / "loop-a.csv"), "a symbolic link loop"),
        (str(folder / "loop-b.csv"), "a symbolic link loop"),
        (str(folder / "older"), "a folder: only the files directly in the input folder are read")]
    assert metadata.file_fingerprints(str(folder)).keys() == {str(faces)}
    fer_csv.input_files(str(folder))  # a second listing in the same process says nothing more
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"skipped: {path} ({why})" for path, why in found.skipped]


# 4. The metadata store: damaged is refused, a full or forbidden disk is said to be one.

@pytest.mark.parametrize("content, why", [
    (b"", "it is empty"),
    (b"SQLite for", "it does not start with SQLite's header"),
    (b"emotion,pixels,Usage\n" * 50, "it does not start with SQLite's header"),
])
def test_a_store_that_is_not_sqlite_is_refused_never_started_over(tmp_path, content, why):
    store = tmp_path / "metadata.sqlite"
    store.write_bytes(content)
    for connect in (metadata.Store, metadata.Store.read_only):
        with pytest.raises(IntegrityError) as refusal:
            connect(str(tmp_path))
        message = str(refusal.value)
        assert f"{store} is damaged ({why}" in message and "from a backup" in message
        assert f"mv {store} {store}.damaged" in message
    assert store.read_bytes() == content


def test_a_store_cut_short_is_refused(tmp_path):
    (tmp_path / "good").mkdir()
    metadata.Store(str(tmp_path / "good")).start("ExampleGen", "print", {}, [], "/x", "code")
    whole = (tmp_path / "good" / "metadata.sqlite").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "metadata.sqlite").write_bytes(whole[:len(whole) - 4096])
    with pytest.raises(IntegrityError, match="is damaged"):
        metadata.Store(str(tmp_path / "cut"))


def test_a_new_store_is_made_whole_under_a_hidden_name(tmp_path):
    metadata.Store(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.sqlite"]
    assert (tmp_path / "metadata.sqlite").read_bytes()[:16] == b"SQLite format 3\0"


def test_an_empty_store_stops_the_run_with_exit_3(tmp_path, faces):
    """A 0-byte store used to be taken as a new one: every step ran again, and a duplicate
    version was pushed."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "metadata.sqlite").touch()
    refused(pipeline("--data", faces, "--pipeline-root", root, "--serving-dir",
                     tmp_path / "serving", "--stop-after", "ExampleGen", timeout=300), 3,
            "is damaged (it is empty)", "from a backup")
    assert (root / "metadata.sqlite").stat().st_size == 0
    assert not (root / "ExampleGen").exists()


SQLITE_FAILURES = [  # as ML Metadata passes them on (errors.InternalError, or RuntimeError)
    ("Error when executing query: database or disk is full query:  INSERT INTO `Type`(`name`)",
     "database or disk is full", "free space there"),
    ('Cannot create node for type_id: 10 name: "run-1"Error when executing query: attempt to '
     'write a readonly database query:  INSERT INTO `Context`(`type_id`)',
     "attempt to write a readonly database", "give this user write access"),
    ("Cannot connect sqlite3 database: unable to open database file",
     "unable to open database file", "read and write access"),
]


@pytest.mark.parametrize("text, words, fix", SQLITE_FAILURES)
def test_sqlite_disk_failures_are_disk_errors(text, words, fix):
    from ml_metadata import errors

    for e in (errors.InternalError(text), RuntimeError(text)):
        error = disk_error(e, "the pipeline root /r")
        assert error is not None, text
        message = str(error)
        assert message.startswith(f"The run stopped: {words} (") and fix in message
        assert "INSERT" not in message  # the SQL after SQLite's words is left out
    operation = disk_error(OSError(errno.EPERM, "Operation not permitted", "/r/x"), "/r")
    assert "give this user write access" in str(operation)


def _without_root_powers() -> list[str]:
    """A command prefix under which file modes hold, as they do for any user but root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file modes, and setpriv (to drop that power) is missing")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.parametrize("mode, words", [
    (0o444, "attempt to write a readonly database"),
    (0o000, "permission denied"),
])
def test_a_store_this_user_cannot_write_is_a_disk_error_not_damage(tmp_path, faces, mode, words):
    """Both used to be "damaged; move it aside", which would have lost the lineage."""
    root = tmp_path / "root"
    root.mkdir()
    metadata.Store(str(root))
    before = (root / "metadata.sqlite").read_bytes()
    (root / "metadata.sqlite").chmod(mode)
    try:
        message = refused(pipeline("--data", faces, "--pipeline-root", root, "--serving-dir",
                                   tmp_path / "serving", "--stop-after", "ExampleGen",
                                   prefix=_without_root_powers()), 2,
                          f"The run stopped: {words}", "then run again")
    finally:
        (root / "metadata.sqlite").chmod(0o644)
    assert "damaged" not in message
    assert (root / "metadata.sqlite").read_bytes() == before


def _namespace_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


FILL = """
import os, sys
path, pages_left = sys.argv[1], int(sys.argv[2])
fd, size = os.open(path, os.O_WRONLY | os.O_CREAT), 0
try:
    while True:
        size += os.write(fd, bytes(4096))
except OSError:  # full
    os.ftruncate(fd, size - 4096 * pages_left)
"""


@pytest.mark.skipif(not _namespace_available(),
                    reason="needs unshare -rm (a user and mount namespace) to mount a small tmpfs")
def test_a_full_disk_under_the_store_is_a_disk_error_and_leaves_no_empty_store(tmp_path, faces):
    """The root on a tmpfs with one page left (the run lock takes it): the new store's tables
    do not fit. Then, with the store made, a disk with no page left at all."""
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir(), out.mkdir()
    run = " ".join([sys.executable, "-m", "pipeline.run", "--data", str(faces),
                    "--pipeline-root", str(root), "--serving-dir", str(tmp_path / "serving"),
                    "--stop-after", "ExampleGen"])
    (tmp_path / "fill.py").write_text(FILL)
    fill = lambda pages: f"{sys.executable} {tmp_path / 'fill.py'} {root / 'filler'} {pages}\n"
    step = lambda name: f"set +e; {run} > {out}/{name}.out 2> {out}/{name}.err; " \
                        f"echo $? > {out}/{name}.rc; ls -a {root} > {out}/{name}.ls; set -e\n"
    script = (f"mount -t tmpfs -o size=512k none {root}\n" + fill(1) + step("new")
              + f"rm {root}/filler\n"
              + f"{sys.executable} -c 'from pipeline import metadata; metadata.Store(\"{root}\")'\n"
              + fill(0) + step("full"))
    result = subprocess.run(["unshare", "-rm", "bash", "-euc", script], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("new", "full"):
        err = (out / f"{name}.err").read_text()
        code = int((out / f"{name}.rc").read_text())
        assert code == 2 and "Traceback" not in err, (name, code, err[-3000:])
        message = " ".join(err[err.index("error: "):].split())
        assert "The run stopped: database or disk is full" in message, message
        assert "free space there" in message and "damaged" not in message
    # The store that did not fit is not left behind as an empty file taken for damage later.
    assert "metadata.sqlite" not in (out / "new.ls").read_text().split()


# 5. The lineage of a version that does not exist.

@pytest.mark.parametrize("version", ["0", "-1", "9"])
def test_lineage_refuses_a_version_that_does_not_exist(tmp_path, capsys, version):
    (tmp_path / "root").mkdir()
    metadata.Store(str(tmp_path / "root"))
    (tmp_path / "serving" / "fer" / "1").mkdir(parents=True)
    (tmp_path / "serving" / "fer" / "1" / "saved_model.pb").write_bytes(b"graph")
    code = lineage.main(["--pipeline-root", str(tmp_path / "root"), "--serving-dir",
                         str(tmp_path / "serving"), "--version", version])
    assert code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert message.startswith(f"error: No version {version} of model 'fer'"), message
