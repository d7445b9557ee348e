"""The layout of the pipeline root, and the file operations every step uses, in one place.

    <root>/<Component>/<n>/                one folder per execution, never rewritten
    <root>/<Component>/<n>/_COMPLETE       written last: the folder counts only once it is there
    <examples>/Split-<split>/data-*.tfrecord.gz

Paths are strings, local or any filesystem TensorFlow knows (gs://...; local ones without
importing TensorFlow, which ingestion never needs), joined with `join`, never
with pathlib (Path("gs://b/r") / "x" is "gs:/b/r/x"). Local folders get what a local disk allows:
whatever must appear whole (a trained model, a pushed version, the built-in data) is written under
a hidden staging name beside its final name, flushed file by file and folder by folder, and
renamed into place in one step (publish). On object storage a rename is a copy and a delete, so
nothing there counts by its name: an execution counts once its marker is written, a pushed
version once its saved_model.pb is (copied last), as in TFX and TF Serving.
"""
import contextlib
import fcntl
import glob as _glob
import os
import shutil
import time
from pathlib import Path

from pipeline.errors import UserError

MARKER = "_COMPLETE"
STAGING = ".partial-"
# One lock file per purpose, so that no process ever waits on a lock it holds itself: the run's
# hold on its root (beside the SQLite store), and a push into a model's serving folder.
RUN_LOCK = ".run.lock"
PUSH_LOCK = ".push.lock"
EXAMPLES_SUFFIX = ".tfrecord.gz"
SAVED_MODEL = "saved_model.pb"  # a SavedModel's graph: written last, it marks the model whole


def remote(path: str | Path) -> bool:
    """Whether the path is on object storage (a URI such as gs://bucket/...), not a local disk."""
    return "://" in str(path)


def join(*parts: str | Path) -> str:
    return os.path.join(*map(str, parts))


def absolute(path: str | Path) -> str:
    return str(path) if remote(path) else str(Path(path).resolve())


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str | Path) -> bool:
    return _gfile().exists(str(path)) if remote(path) else os.path.exists(path)


def is_dir(path: str | Path) -> bool:
    return _gfile().isdir(str(path)) if remote(path) else os.path.isdir(path)


def listdir(folder: str | Path) -> list[str]:
    """The names in a folder (none if it is not there); object storage's "sub/" is "sub"."""
    if not is_dir(folder):
        return []
    names = _gfile().listdir(str(folder)) if remote(folder) else os.listdir(folder)
    return sorted({name.rstrip("/") for name in names} - {""})


def makedirs(folder: str | Path) -> None:
    if remote(folder):
        _gfile().makedirs(str(folder))
    else:
        os.makedirs(folder, exist_ok=True)


def open_bytes(path: str | Path):
    """A file opened for reading bytes."""
    return _gfile().GFile(str(path), "rb") if remote(path) else open(path, "rb")


def read_text(path: str | Path) -> str:
    with (_gfile().GFile(str(path)) if remote(path) else open(path)) as f:
        return f.read()


def write_text(path: str | Path, text: str) -> None:
    with (_gfile().GFile(str(path), "w") if remote(path) else open(path, "w")) as f:
        f.write(text)


def open_write_bytes(path: str | Path):
    """A file opened for writing bytes."""
    return _gfile().GFile(str(path), "wb") if remote(path) else open(path, "wb")


def copy_file(source: str | Path, target: str | Path) -> None:
    """Copy one file (on any filesystems), its folder made first."""
    makedirs(os.path.dirname(str(target)))
    if remote(source) or remote(target):
        _gfile().copy(str(source), str(target), overwrite=True)
    else:
        shutil.copy2(source, target)


def glob(pattern: str) -> list[str]:
    return sorted(_gfile().glob(pattern) if remote(pattern) else _glob.glob(pattern))


def files_under(folder: str | Path) -> list[str]:
    """Every file below a folder, as sorted paths relative to it."""
    folder = str(folder)
    if not remote(folder):
        return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    found = []
    for parent, _, names in _gfile().walk(folder):
        found += [os.path.relpath(join(parent, name), folder) for name in names
                  if not name.endswith("/")]
    return sorted(found)


def remove(path: str | Path) -> None:
    """Remove a file, or a folder and what it holds, if it is there."""
    if remote(path):
        if is_dir(path):
            _gfile().rmtree(str(path))
        elif _gfile().exists(str(path)):
            _gfile().remove(str(path))
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def copy_tree(source: str | Path, target: str | Path, last: str | None = None) -> None:
    """Copy a folder's files to another folder (on any filesystems), the file `last` after all
    the others: whoever waits for it finds the rest there."""
    local = not (remote(source) or remote(target))
    for name in sorted(files_under(source), key=lambda n: n == last):
        makedirs(os.path.dirname(join(target, name)))
        if local:
            shutil.copy2(join(source, name), join(target, name))
        else:
            _gfile().copy(join(source, name), join(target, name), overwrite=True)


def split_dir(folder: str | Path, split: str) -> str:
    """The folder of one split inside an Examples (or statistics, anomalies) output."""
    return join(folder, f"Split-{split}")


def examples_pattern(examples_dir: str | Path, split: str) -> str:
    """The glob of a split's TFRecord files (gzip-compressed tf.Examples)."""
    return join(split_dir(examples_dir, split), "*" + EXAMPLES_SUFFIX)


def example_files(examples_dir: str | Path, split: str) -> list[str]:
    return glob(examples_pattern(examples_dir, split))


def new_execution_dir(root: str, component: str) -> str:
    """A fresh <root>/<component>/<n>: numbered executions are never rewritten."""
    parent = join(root, component)
    makedirs(parent)
    n = max((int(name) for name in listdir(parent) if name.isdigit()), default=0)
    while True:
        n += 1
        try:
            if remote(parent):  # one run holds the root: nothing else numbers its executions
                makedirs(join(parent, n))
            else:
                os.mkdir(join(parent, n))
            return join(parent, n)
        except FileExistsError:
            continue


def is_complete(folder: str | Path) -> bool:
    return exists(join(folder, MARKER))


def mark_complete(folder: str | Path) -> None:
    """Write the marker once the folder's data is on disk, so it is also last there."""
    if remote(folder):
        write_text(join(folder, MARKER), "")
        return
    flush(Path(folder))
    (Path(folder) / MARKER).touch()
    flush(Path(folder), recursive=False)


def staging_path(final: str | Path) -> str:
    """Where `final` is written before it is published: hidden, beside it."""
    parent, name = os.path.split(str(final).rstrip("/"))
    return join(parent, STAGING + name)


def publish(staged: str | Path, final: str | Path) -> None:
    """Move a finished file or folder into place, its data already written. A folder of that
    name is replaced; a caller that must never replace one chooses a free name first. Locally
    one rename; to or on object storage a copy (a folder's files one by one, saved_model.pb
    last), which counts only once whatever marks it complete is there."""
    if remote(final) or remote(staged):
        remove(final)
        if is_dir(staged):
            copy_tree(staged, final, last=SAVED_MODEL)
        else:
            _gfile().copy(str(staged), str(final), overwrite=True)
        remove(staged)
        return
    staged, final = Path(staged), Path(final)
    flush(staged)
    if final.is_dir() and staged.is_dir():
        shutil.rmtree(final)
    os.replace(staged, final)
    flush(final.parent, recursive=False)


def flush(path: Path, recursive: bool = True) -> None:
    """fsync a file, or a folder with (if recursive) every file and folder inside it."""
    paths = [*path.rglob("*"), path] if recursive and path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Busy(Exception):
    """The lock is held by another process; str() says who (pid, since when)."""


@contextlib.contextmanager
def lock(path: Path, wait: bool = True):
    """Hold an exclusive lock on the file `path` for the block, and note the holder in it.
    wait=False: raise Busy at once when another process holds it."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            raise Busy(f.read().strip() or "another process") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield


def within(inner: str | Path, outer: str | Path) -> bool:
    """Whether `inner` is the folder `outer` or lies below it: local paths once resolved (a
    symbolic link is where it points), object storage's as strings."""
    if remote(inner) != remote(outer):
        return False
    inner, outer = (absolute(p).rstrip("/") for p in (inner, outer))
    return inner == outer or inner.startswith(outer + "/")


def check_layout(root: str, serving_dir: str, data: str | None) -> None:
    """Refuse, before any work, a pipeline root that nests with the serving directory (the
    run's folders, store and lock would mix with the served versions and their push lock) or
    that lies in the folder --data reads from (the run would read its own outputs as input, and
    see them change while it reads). The built-in data (no --data) lives under the root by
    design."""
    if within(root, serving_dir) or within(serving_dir, root):
        which = (f"The pipeline root {root} and the serving directory {serving_dir} are the same "
                 f"folder" if within(root, serving_dir) and within(serving_dir, root) else
                 f"The pipeline root {root} is inside the serving directory {serving_dir}"
                 if within(root, serving_dir) else
                 f"The serving directory {serving_dir} is inside the pipeline root {root}")
        raise UserError(
            f"{which}, so the run's own folders, store and lock would mix with the served model "
            f"versions; pass a --pipeline-root and a --serving-dir side by side (for example "
            f"fer/root and fer/serving).")
    if not data or remote(data) != remote(root):
        return
    folder = _data_folder(data)
    if folder and within(root, folder):
        where = "is" if within(folder, root) else f"is inside {folder},"
        raise UserError(
            f"The pipeline root {root} {where} the folder the input {data} is read from, so the "
            f"run would read its own outputs as input; pass a --pipeline-root outside it.")


def _data_folder(data: str) -> str | None:
    """The folder --data reads from: the folder itself, or a glob's folder before its first
    wildcard; None for a single file (nothing else in its folder is read)."""
    parts = data.rstrip("/").split("/")
    wild = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), None)
    if wild is None:
        return data if is_dir(data) else None
    return "/".join(parts[:wild]) or ("/" if wild else ".")
