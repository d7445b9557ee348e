"""Peak memory of ingestion and training at 1x and 4x FER2013's size, against the seed's way.

Pipeline: `python -m pipeline.run --data CSV --stop-after ExampleGen` (ingestion), then the same
root with `--stop-after Trainer --epochs 1` (statistics, validation and one training epoch; the
examples are reused). Baseline (the seed's way): pandas.read_csv, a per-row split into a uint8
array, then float32 images in memory and `model.fit` on them for a few steps. Each step runs in its
own process; its peak resident memory comes from the kernel (wait4). The 4x input is the 1x rows
four times over, so only the size changes.

    python bench/memory.py [--rows 35887] [--scales 1 4] [--epochs 1]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


CACHE = Path(__file__).resolve().parent / ".cache"
BASELINE = """
import sys
import numpy as np, pandas as pd, tf_keras as keras
from components.model import build_cnn, compile_cnn
frame = pd.read_csv(sys.argv[1])
images = np.stack([np.array(s.split(), dtype=np.uint8) for s in frame["pixels"]])
x = images.reshape(-1, 48, 48, 1).astype("float32")
y = keras.utils.to_categorical(frame["emotion"].to_numpy(), 7)
model = build_cnn(48, 7)
compile_cnn(model, 1e-3)
model.fit(x, y, batch_size=64, epochs=1, steps_per_epoch=20, verbose=0)
"""


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak resident memory in MB, seconds) of one process run to completion."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-3000:]}")
    return usage.ru_maxrss / 1024, seconds


def inputs(rows: int, scales: list[int]) -> dict[int, Path]:
    """The CSVs, written without growing this process: a child process inherits its parent's
    peak memory in the kernel's count, so the parent must stay small."""
    base = CACHE / f"faces_{rows}_seed3.csv"
    if not base.exists():
        print(f"drawing {rows:,} faces into {base} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline.default_data", str(base), "--rows",
                        str(rows), "--seed", "3"], check=True)
    files = {}
    for scale in scales:
        path = base if scale == 1 else CACHE / f"faces_{rows}_seed3_x{scale}.csv"
        if not path.exists():
            with open(path.with_suffix(".partial"), "wb") as out:
                for copy in range(scale):
                    with open(base, "rb") as f:
                        if copy:
                            f.readline()  # the header, once
                        shutil.copyfileobj(f, out, 1 << 20)
            path.with_suffix(".partial").replace(path)
        files[scale] = path
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=35887, help="FER2013 has 35,887")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    python = sys.executable
    rows = {}
    print(f"{'input':>24s} {'step':>34s} {'peak MB':>8s} {'seconds':>8s}", flush=True)
    for scale, data in inputs(args.rows, args.scales).items():
        name = f"{scale}x ({data.stat().st_size / 1e6:,.0f} MB)"
        root = Path(tempfile.mkdtemp(prefix="fer-memory-"))
        try:
            run = [python, "-m", "pipeline.run", "--data", str(data), "--pipeline-root",
                   str(root / "root"), "--serving-dir", str(root / "serving")]
            steps = {
                "baseline: pandas + numpy + fit": [python, "-c", BASELINE, str(data)],
                "pipeline: ExampleGen": run + ["--stop-after", "ExampleGen"],
                "pipeline: validation + Trainer": run + ["--stop-after", "Trainer", "--epochs",
                                                         str(args.epochs)],
            }
            for step, command in steps.items():
                mb, seconds = peak_rss(command)
                rows[(scale, step)] = mb
                print(f"{name:>24s} {step:>34s} {mb:8.0f} {seconds:8.1f}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if len(args.scales) > 1:
        low, high = min(args.scales), max(args.scales)
        print(f"\npeak memory at {high}x over {low}x (input {high // low}x larger):")
        for step in dict.fromkeys(s for _, s in rows):
            print(f"  {step:34s} {rows[(high, step)] / rows[(low, step)]:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
