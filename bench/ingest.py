"""Ingestion speed: ExampleGen against the seed's way of reading FER2013, in one run.

Baseline (what a seed user writes): pandas.read_csv, then np.array(s.split(), dtype=np.uint8)
per pixel string, everything in memory, nothing validated or written.
ExampleGen: the Beam pipeline with validation, quarantine, gzip TFRecord writing and the
row-count reconciliation, once per Beam configuration given.

    python bench/ingest.py [--rows 35900] [--seed 1]

Timed twice: inside this process (the components' work alone), and as whole processes, which is
what a user waits for: the baseline as a script, ExampleGen as `python -m pipeline.run
--stop-after ExampleGen`, and beside them the floor of that process, its imports alone.
"""
import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components import example_gen
from pipeline import default_data
from pipeline.config import IngestConfig

CACHE = Path(__file__).resolve().parent / ".cache"
CONFIGS = {
    "ExampleGen, DirectRunner in_memory, 1 worker": [
        "--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"],
    "ExampleGen, DirectRunner multi_processing, 2 workers": [
        "--runner=DirectRunner", "--direct_num_workers=2",
        "--direct_running_mode=multi_processing"],
}


def baseline(path: Path) -> int:
    frame = pd.read_csv(path)
    images = np.stack([np.array(s.split(), dtype=np.uint8) for s in frame["pixels"]])
    labels = frame["emotion"].to_numpy()
    assert images.shape == (len(labels), 2304)
    return len(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=35900, help="FER2013 has 35,887")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    data = CACHE / f"synthetic_faces_{args.rows}_seed{args.seed}.csv"
    if not data.exists():
        print(f"drawing {args.rows:,} faces into {data} (once) ...", flush=True)
        default_data.write_csv(data, args.rows, args.seed)
    size_mb = data.stat().st_size / 1e6
    print(f"input: {data.name}, {args.rows:,} rows, {size_mb:.0f} MB, {os.cpu_count()} cores")

    start = time.perf_counter()
    rows = baseline(data)
    base_s = time.perf_counter() - start
    base_rate = rows / base_s
    print(f"{'variant':64s} {'seconds':>8s} {'rows/s':>8s} {'ratio':>6s}")
    print(f"{'baseline: pandas read_csv + per-row split':64s} {base_s:8.1f} {base_rate:8.0f} "
          f"{1.0:6.2f}")

    config = IngestConfig.load()
    for name, beam_args in CONFIGS.items():
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            counts = example_gen.run(str(data), out, config, beam_args)
            seconds = time.perf_counter() - start
        written = sum(counts["written"].values())
        assert written == rows, (written, rows)
        rate = rows / seconds
        print(f"{name:64s} {seconds:8.1f} {rate:8.0f} {rate / base_rate:6.2f}", flush=True)

    print(f"\nwhole processes\n{'variant':64s} {'seconds':>8s} {'rows/s':>8s} {'ratio':>6s}")
    script = "from pathlib import Path\nimport numpy as np, pandas as pd\n"
    base_s = whole([sys.executable, "-c",
                    script + inspect.getsource(baseline) + f"baseline({str(data)!r})"])
    print(f"{'baseline: python script, pandas read_csv + split':64s} {base_s:8.1f} "
          f"{rows / base_s:8.0f} {1.0:6.2f}")
    for name, beam_args in CONFIGS.items():
        with tempfile.TemporaryDirectory() as root:
            seconds = whole([sys.executable, "-m", "pipeline.run", "--data", str(data),
                             "--pipeline-root", root, "--stop-after", "ExampleGen", *beam_args])
        print(f"{'python -m pipeline.run ' + name.split(', ', 1)[1]:64s} {seconds:8.1f} "
              f"{rows / seconds:8.0f} {base_s / seconds:6.2f}", flush=True)
    floor = whole([sys.executable, "-c", "import pipeline.run, apache_beam, pyarrow, "
                   "tfx_bsl.coders.example_coder, components.example_gen"])
    print(f"{'floor: its imports alone (no row read)':64s} {floor:8.1f} {rows / floor:8.0f} "
          f"{base_s / floor:6.2f}")
    limits(data, config)
    return 0


def limits(data: Path, config) -> None:
    """What the machine allows for the stages ExampleGen cannot skip, on this file and its
    output: reading, hashing (the cache key), compressing (gzip TFRecords), copying."""
    import glob
    import gzip
    import hashlib
    import zlib

    def timed(work) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    raw = data.read_bytes()
    with tempfile.TemporaryDirectory() as out:
        example_gen.run(str(data), out, config, list(CONFIGS.values())[0])
        payload = b"".join(gzip.open(f).read() for f in sorted(glob.glob(f"{out}/Split-*/*.gz")))
    print(f"\nstage limits (one core)\n{'stage':40s} {'seconds':>8s} {'MB/s':>8s}")
    for name, size, seconds in (
            ("read the CSV", len(raw), timed(lambda: data.read_bytes())),
            ("sha256 of the CSV", len(raw), timed(lambda: hashlib.sha256(raw).digest())),
            ("zlib level 1 of the tf.Examples", len(payload),
             timed(lambda: zlib.compress(payload, 1))),
            ("copy of the tf.Examples", len(payload), timed(lambda: bytearray(payload)))):
        print(f"{name:40s} {seconds:8.2f} {size / 1e6 / seconds:8.0f}")


def whole(command: list[str]) -> float:
    """Seconds a fresh process takes, start to exit."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=1800,
                   cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
