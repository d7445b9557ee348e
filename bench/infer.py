"""Batch inference speed: `python -m pipeline.infer` against the model's own batch predict.

Baseline (what a user writes without the pipeline): one Python process that loads the
SavedModel, reads the CSV's lines, decodes each row's pixels with numpy (np.fromstring) and calls
the model's uint8-image signature on batches of 256, keeping the answers in memory; nothing
validated, quarantined or written. pipeline.infer: the whole command, as a user runs it
(imports, reading, validation, Beam's RunInference, the sharded CSV output, the quarantine and
the count reconciliation), once per Beam configuration given. Both timed as whole processes,
start to exit, on the same rows with the same model; wall seconds and CPU seconds (which
other work on a shared machine hardly changes).

    python bench/infer.py [--rows 35887] [--seed 1] [--model DIR]

Without --model, a model is trained once (one epoch on 900 synthetic faces, `python -m
pipeline.run ... --stop-after Trainer`) and kept under bench/.cache, as the drawn rows are. After
the timings, pipeline.infer's output is checked: every row scored, and the first 500 rows
answered as `python -m pipeline.predict --no-detect --json` answers them.
"""
import argparse
import csv
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
CONFIGS = {
    "DirectRunner in_memory, 1 worker": [],
    "DirectRunner multi_processing, 2 workers": [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}
SAMPLE = 500  # lines of the file (the header and the first 499 rows) checked against predict


def baseline(model_dir: str, data: str) -> None:
    """The model's own batch predict in one process; prints rows and in-process seconds."""
    start = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    predict = model.signatures["serve_images"]
    with open(data, "rb") as f:
        names = [n.strip().lower() for n in f.readline().decode().split(",")]
        column = names.index("pixels")
        rows, batch, answers = 0, [], []

        def flush():
            images = np.stack(batch).astype(np.uint8).reshape(-1, 48, 48, 1)
            answers.append(predict(images=tf.constant(images))["probabilities"].numpy())
            batch.clear()

        for line in f:
            batch.append(np.fromstring(line.split(b",")[column], dtype=np.int64, sep=" "))
            rows += 1
            if len(batch) == 256:
                flush()
        if batch:
            flush()
    assert sum(len(a) for a in answers) == rows
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=35887, help="FER2013 has 35,887")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", help="a SavedModel folder (default: one trained once here)")
    parser.add_argument("--baseline", nargs=2, metavar=("MODEL", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        baseline(*args.baseline)
        return 0

    import pipeline
    from pipeline import default_data

    pipeline.quiet()
    CACHE.mkdir(parents=True, exist_ok=True)
    data = CACHE / f"synthetic_faces_{args.rows}_seed{args.seed}.csv"
    if not data.exists():
        print(f"drawing {args.rows:,} faces into {data} (once) ...", flush=True)
        default_data.write_csv(data, args.rows, args.seed)
    model = args.model or trained_model()
    print(f"input: {data.name}, {args.rows:,} rows, {data.stat().st_size / 1e6:.0f} MB; model "
          f"{model}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)

    (base_s, base_cpu), out = whole([sys.executable, str(Path(__file__).resolve()),
                                     "--baseline", model, str(data)])
    inside = json.loads(out.stdout.strip().splitlines()[-1])
    assert inside["rows"] == args.rows, inside
    print(f"\n{'variant (whole processes)':60s} {'seconds':>8s} {'rows/s':>8s} {'ratio':>6s} "
          f"{'CPU s':>7s} {'CPU ratio':>9s}")
    print(f"{'baseline: SavedModel batch predict, 256 a call, one process':60s} {base_s:8.1f} "
          f"{args.rows / base_s:8.0f} {1.0:6.2f} {base_cpu:7.1f} {1.0:9.2f}   (in-process "
          f"{inside['seconds']:.1f} s)", flush=True)
    checked = False
    for name, beam_args in CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "preds"
            (seconds, cpu), _ = whole(
                [sys.executable, "-m", "pipeline.infer", "--model", model, "--data", str(data),
                 "--output", str(output), *beam_args])
            counts = json.loads((output / "counts.json").read_text())
            assert counts["scored"] == counts["rows_read"] == args.rows, counts
            print(f"{'python -m pipeline.infer, ' + name:60s} {seconds:8.1f} "
                  f"{args.rows / seconds:8.0f} {base_s / seconds:6.2f} {cpu:7.1f} "
                  f"{base_cpu / cpu:9.2f}", flush=True)
            if not checked:
                check(model, data, output, args.rows)
                checked = True
    return 0


def whole(command: list[str]) -> tuple[tuple[float, float], subprocess.CompletedProcess]:
    """((wall seconds, CPU seconds of the process and the processes it waited for), result) of
    a fresh process, start to exit. CPU seconds hardly change with what else the machine runs;
    wall seconds do."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=3600)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return (seconds, cpu), result


def trained_model() -> str:
    """A SavedModel trained once for this benchmark: 1 epoch on 900 synthetic faces."""
    from pipeline import default_data

    root = CACHE / "infer_model"
    found = sorted(glob.glob(str(root / "Trainer" / "*" / "serving_model" / "saved_model.pb")))
    if not found:
        print("training a model for the benchmark (once) ...", flush=True)
        faces = default_data.write_csv(CACHE / "infer_model_faces.csv", rows=900, seed=11)
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.run", "--data", str(faces), "--pipeline-root",
             str(root), "--serving-dir", str(CACHE / "infer_model_serving"), "--epochs", "1",
             "--stop-after", "Trainer"], capture_output=True, text=True, cwd=REPO, timeout=1800)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        found = sorted(glob.glob(str(root / "Trainer" / "*" / "serving_model" / "saved_model.pb")))
    return str(Path(found[-1]).parent)


def check(model: str, data: Path, output: Path, rows: int) -> None:
    """Every row once in the predictions; the first SAMPLE lines' answers equal predict's."""
    ours = {}
    for shard in sorted(output.glob("predictions-*-of-*.csv")):
        header, *lines = csv.reader(shard.open(newline=""))
        for row in lines:
            ours[int(row[1])] = (row[2], dict(zip(header[4:], map(float, row[4:]))))
    assert sorted(ours) == list(range(2, rows + 2)), "a row is missing or twice"
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.csv"
        with data.open("rb") as f:
            sample.write_bytes(b"".join(f.readline() for _ in range(SAMPLE)))
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.predict", "--model", model, "--no-detect", "--json",
             str(sample)], capture_output=True, text=True, cwd=REPO, timeout=600, check=True)
    faces = json.loads(result.stdout)["faces"]
    assert len(faces) == SAMPLE - 1
    worst, rounded_apart = 0.0, 0
    for face in faces:
        emotion, probabilities = ours[int(face["where"].rsplit(":", 1)[1])]
        assert emotion == face["emotion"], face["where"]
        for c, p in face["probabilities"].items():
            worst = max(worst, abs(probabilities[c] - p))
            rounded_apart += abs(round(probabilities[c], 4) - p) > 1e-9
    assert worst <= 5e-5 + 1e-5, worst  # predict prints 4 decimals
    exact = _model_answers(model, data, SAMPLE - 1)
    closest = max(abs(ours[line][1][c] - p) for line, answer in exact.items()
                  for c, p in answer.items())
    assert closest <= 1e-5, closest
    print(f"checked: all {rows:,} rows scored once; lines 2-{SAMPLE} equal `pipeline.predict "
          f"--no-detect --json`: same class, every probability within {worst:.1e} of predict's "
          f"(printed with 4 decimals; {rounded_apart} of {len(faces) * 7:,} differ in the 4th "
          f"decimal once ours are rounded so) and within {closest:.1e} of the SavedModel's own "
          f"float32 answer", flush=True)


def _model_answers(model: str, data: Path, n: int) -> dict[int, dict[str, float]]:
    """{line: {class: probability}} of the first n rows, straight from the SavedModel."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(model)
    classes = [c.decode() for c in loaded.class_names.numpy()]
    with data.open("rb") as f:
        column = [c.strip().lower() for c in f.readline().decode().split(",")].index("pixels")
        images = np.stack([np.fromstring(f.readline().split(b",")[column], np.int64, sep=" ")
                           for _ in range(n)]).astype(np.uint8).reshape(-1, 48, 48, 1)
    answers = loaded.signatures["serve_images"](images=tf.constant(images))["probabilities"]
    return {line: dict(zip(classes, map(float, p)))
            for line, p in enumerate(answers.numpy(), start=2)}


if __name__ == "__main__":
    sys.exit(main())
