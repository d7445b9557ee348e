"""The exports (TFLite float32 and int8, ONNX) against the SavedModel, in one run, same model
and images: file size, accuracy and top-1 agreement on the test split, per-image latency.

It calls the components directly, not the pipeline: components.exporter.run converts and
scores the Trainer's model (TFLite float32, TFLite int8 calibrated on the train split, ONNX)
exactly as the Exporter step does, then each model answers one image at a time, `--requests`
times after two warm-up calls: the SavedModel's serve_images signature (TensorFlow, its default
threads) and each export in its runtime (the TFLite interpreter, onnxruntime) on 1 thread (a
phone's core) and on every core this process may use. Without --trainer and --examples it runs the pipeline's default command
first (about 4 minutes on 2 cores) in a temporary folder and takes its Trainer and ExampleGen.

    python bench/exports.py [--trainer ROOT/Trainer/N --examples ROOT/ExampleGen/N]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import pipeline  # noqa: E402

pipeline.quiet()  # before TensorFlow loads
import tensorflow as tf  # noqa: E402

from components import exporter  # noqa: E402
from pipeline.artifact_types import EXPORTED_MODELS, MODEL  # noqa: E402
from pipeline.config import DeploymentConfig, EvaluationConfig, IngestConfig  # noqa: E402



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", help="a Trainer's output folder (model.keras, serving_model)")
    parser.add_argument("--examples", help="the ExampleGen output it was trained on")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    if not (args.trainer and args.examples):
        args.trainer, args.examples = default_run()
    ingest = IngestConfig.load()
    gates = EvaluationConfig.load(ingest.classes, ingest.splits)
    work = tempfile.mkdtemp(prefix="bench-exports-")
    started = time.perf_counter()
    result = exporter.run(
        MODEL.path(args.trainer, "keras"), MODEL.path(args.trainer, "serving_model"),
        args.examples, work, DeploymentConfig.load().exports, gates.export_parity,
        gates.confidence, ingest.classes, gates.split, gates.min_class_examples,
        ingest.train_split, ingest.image_size)
    seconds = time.perf_counter() - started
    images = exporter._read(args.examples, gates.split, ingest.image_size, 1)[0]
    cores = len(os.sched_getaffinity(0))

    serve = tf.saved_model.load(MODEL.path(args.trainer, "serving_model")).signatures[
        "serve_images"]
    saved_ms = timed(lambda: serve(images=tf.constant(images))["probabilities"].numpy(),
                     args.requests)
    saved_bytes = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in
                      os.walk(MODEL.path(args.trainer, "serving_model")) for name in names)
    saved = result["saved_model"]
    steps = ", ".join(f"{name}: convert {e.get('convert_seconds')} s, score "
                      f"{e.get('score_seconds')} s" for name, e in result["exports"].items())
    print(f"{result['examples']} {result['split']} images of {args.examples}; "
          f"{result['representative_images']} calibration images; the exporter took "
          f"{seconds:.1f} s in all ({steps})")
    print()
    print(f"| model | size MB | accuracy | vs SavedModel | top-1 agreement | ships | "
          f"ms/image, 1 thread (median / p99) | ms/image, {cores} threads (median / p99) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| SavedModel (serve_images) | {saved_bytes / 1e6:.1f} | {saved['accuracy']:.3f} | - | "
          f"- | - | - | {saved_ms[0]:.2f} / {saved_ms[1]:.2f} (TensorFlow's threads) |")
    for name, export in result["exports"].items():
        if "accuracy" not in export:
            print(f"| {export['format']} | - | - | - | - | no: {'; '.join(export['reasons'])} | - | - |")
            continue
        model = open(EXPORTED_MODELS.path(work, name), "rb").read()
        one, every = ((lambda t: (t["median"], t["p99"]))(exporter.latency(
            name, model, images, args.requests, threads)) for threads in (1, cores))
        print(f"| {export['format']} | {export['bytes'] / 1e6:.1f} | {export['accuracy']:.3f} | "
              f"{export['accuracy_difference']:+.3f} | {export['agreement']:.1%} | "
              f"{'yes' if export['shipped'] else 'no: ' + '; '.join(export['reasons'])} | "
              f"{one[0]:.2f} / {one[1]:.2f} | {every[0]:.2f} / {every[1]:.2f} |")
    worst = {name: max((abs(d) for c, d in e.get("class_accuracy_difference", {}).items()
                        if d is not None and c not in result["not_judged"]), default=0.0)
             for name, e in result["exports"].items()}
    print(f"\nlargest per-class difference (judged classes): "
          + ", ".join(f"{n} {d:.3f}" for n, d in worst.items())
          + f"; not judged: {result['not_judged'] or 'none'}")
    return 0


def timed(call, requests: int) -> tuple[float, float]:
    for _ in range(2):
        call()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times)), float(np.percentile(times, 99))


def default_run() -> tuple[str, str]:
    """The pipeline's default command in a temporary folder: (its Trainer, its ExampleGen)."""
    folder = tempfile.mkdtemp(prefix="bench-exports-run-")
    subprocess.run([sys.executable, "-m", "pipeline.run", "--runner=DirectRunner",
                    "--stop-after", "Trainer"], cwd=folder, check=True)
    root = os.path.join(folder, "pipeline_root")
    return os.path.join(root, "Trainer", "1"), os.path.join(root, "ExampleGen", "1")


if __name__ == "__main__":
    sys.exit(main())
