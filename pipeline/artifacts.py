"""The on-disk layout of the pipeline root, in one place.

    <root>/<Component>/<n>/                one folder per execution, never rewritten
    <root>/<Component>/<n>/_COMPLETE       written last: the folder counts only once it is there
    <examples>/Split-<split>/data-*.tfrecord.gz

Whatever must appear whole (a trained model, a pushed version, the built-in data) is written
under a hidden staging name beside its final name, flushed to disk file by file and folder by
folder, and renamed into place in one step (publish).
"""
import contextlib
import fcntl
import glob
import os
import shutil
import time
from pathlib import Path

MARKER = "_COMPLETE"
STAGING = ".partial-"
EXAMPLES_SUFFIX = ".tfrecord.gz"


def split_dir(folder: str | Path, split: str) -> str:
    """The folder of one split inside an Examples (or statistics, anomalies) output."""
    return os.path.join(folder, f"Split-{split}")


def examples_pattern(examples_dir: str | Path, split: str) -> str:
    """The glob of a split's TFRecord files (gzip-compressed tf.Examples)."""
    return os.path.join(split_dir(examples_dir, split), "*" + EXAMPLES_SUFFIX)


def example_files(examples_dir: str | Path, split: str) -> list[str]:
    return sorted(glob.glob(examples_pattern(examples_dir, split)))


def new_execution_dir(root: Path, component: str) -> Path:
    """A fresh <root>/<component>/<n>: numbered executions are never rewritten."""
    parent = root / component
    parent.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in parent.iterdir() if p.name.isdigit()), default=0)
    while True:
        n += 1
        try:
            (parent / str(n)).mkdir()
            return parent / str(n)
        except FileExistsError:
            continue


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).exists()


def mark_complete(folder: str | Path) -> None:
    """Write the marker once the folder's data is on disk, so it is also last there."""
    flush(Path(folder))
    (Path(folder) / MARKER).touch()
    flush(Path(folder), recursive=False)


def staging_path(final: Path) -> Path:
    """Where `final` is written before it is published: hidden, beside it."""
    return final.with_name(STAGING + final.name)


def publish(staged: Path, final: Path) -> None:
    """Rename a finished file or folder into place, its data already on disk. A folder of that
    name is replaced; a caller that must never replace one chooses a free name first."""
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
