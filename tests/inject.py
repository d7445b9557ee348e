"""Run pipeline.run (or another entry with a main(argv)) with one fault injected at a chosen
point of the real code.

    python -m tests.inject MODULE:ATTRIBUTE[@N] ACTION [ENTRY_MODULE] -- ARGS...

Just before the N-th call (default: the first) of MODULE.ATTRIBUTE (a function, or a method as
Class.method; several as A|B|C, counted together) this process does ACTION, then the call goes on:
    kill            SIGKILL to itself (kill -9: no clean-up runs)
    term            SIGTERM to itself (what a scheduler sends to stop a job)
    hang            block that call for good (a stalled network disk, a stuck worker)
    delete=PATH     remove the file
    append=PATH     append one more valid row to the CSV
    corrupt=GLOB    overwrite 64 bytes in the middle of the first file matching GLOB
"""
import glob
import importlib
import os
import signal
import sys
import threading
from pathlib import Path


def act(action: str) -> None:
    kind, _, target = action.partition("=")
    if kind in ("kill", "term"):
        os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGTERM)
    elif kind == "hang":
        threading.Event().wait()
    elif kind == "delete":
        os.remove(target)
    elif kind == "append":
        with open(target, "a") as f:
            f.write("3," + " ".join(["128"] * 2304) + ",Training\n")
    elif kind == "corrupt":
        path = sorted(glob.glob(target))[0]
        with open(path, "r+b") as f:
            f.seek(Path(path).stat().st_size // 2)
            f.write(b"\xa5" * 64)
    else:
        raise SystemExit(f"unknown action {action!r}")


def inject(point: str, action: str) -> None:
    where, _, nth = point.partition("@")
    module_name, _, attributes = where.partition(":")
    calls = [0]
    for attribute in attributes.split("|"):
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, _counted(getattr(owner, name), calls, int(nth or 1), action))


def _counted(original, calls, nth, action):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            act(action)
        return original(*args, **kwargs)
    return wrapper


if __name__ == "__main__":
    separator = sys.argv.index("--")
    point, action, *entry = sys.argv[1:separator]
    inject(point, action)
    sys.exit(importlib.import_module(entry[0] if entry else "pipeline.run").main(
        sys.argv[separator + 1:]))
