"""Evaluation time: the Evaluator (TFMA on Beam) against plain Keras, in one run, same model and data.

Baseline (what a seed user writes): the test images already in memory as numpy arrays,
model.evaluate(x, y) for loss and accuracy, then model.predict(x) and a numpy confusion matrix.
Evaluator: components.evaluator.run on the SavedModel and the test split's TFRecords: TFMA's
Beam pipeline reading and parsing the records, overall accuracy, confusion matrix, per-class and
macro accuracy, gates and blessing, results written to disk.
The model is the seed CNN with its initial weights (the time does not depend on what it learned).

    python bench/evaluate.py [--images 3589]      # FER2013's test split has 3,589 images
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import faces
import numpy as np
import pipeline  # noqa: E402

pipeline.quiet()  # before TensorFlow loads
import tensorflow as tf
import tf_keras as keras
from components import evaluator, trainer
from components.model import build_cnn, compile_cnn
from pipeline.config import EvaluationConfig, IngestConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3589)
    args = parser.parse_args()
    ingest = IngestConfig.load()

    files = faces.tfrecords("test", args.images, seed=2)
    x, y = faces.arrays(files)

    keras.utils.set_random_seed(0)
    model = build_cnn(ingest.image_size, len(ingest.classes))
    compile_cnn(model, 1e-3)
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    trainer._export(model, work / "model", ingest)
    gates = EvaluationConfig.load(ingest.classes, ingest.splits)

    start = time.perf_counter()
    model.evaluate(x, y, batch_size=256, verbose=0)
    predicted = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
    matrix = np.zeros((len(ingest.classes),) * 2, int)
    np.add.at(matrix, (y.argmax(axis=1), predicted), 1)
    baseline_s = time.perf_counter() - start

    start = time.perf_counter()
    result = evaluator.run(str(work / "model"), str(Path(files[0]).parent.parent),
                           str(work / "eval"), gates,
                           ingest.classes)
    tfma_s = time.perf_counter() - start
    assert result["confusion_matrix"] == matrix.tolist(), "the two disagree"

    print(f"{len(x):,} test images, {os.cpu_count()} cores, TensorFlow {tf.__version__}")
    print(f"{'variant':62s} {'seconds':>8s} {'ratio':>6s}")
    print(f"{'baseline: Keras evaluate + predict + numpy confusion (in memory)':62s} "
          f"{baseline_s:8.1f} {1:6.2f}")
    print(f"{'Evaluator: TFMA from TFRecords, gates, blessing, written':62s} "
          f"{tfma_s:8.1f} {tfma_s / baseline_s:6.2f}")
    print("confusion matrices identical")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
