"""Training speed: the Trainer's tf.data input against in-memory numpy arrays, in one run.

Baseline (the seed's way): all images decoded into a numpy array first, model.fit(x, y).
Pipeline: the Trainer's tf.data input from ExampleGen's gzip TFRecords (parallel read, block
parse, cache, shuffle, batch, prefetch). Same model, batch size, steps and seed; no augmentation
in either, so the ratio is the cost of the input alone. The variants alternate, timed epochs
after a warm-up epoch, and the best epoch of each counts.

It also measures a large float32 matmul (the machine's practical peak) and states the
model's achieved GFLOP/s against it: forward FLOPs counted from the layers, a training step
taken as 3x forward (forward, then gradients for inputs and for weights).

    python bench/train.py [--images 1280] [--batch-size 64] [--epochs 3]
"""
import argparse
import dataclasses
import os
import time

import faces
import pipeline  # noqa: E402

pipeline.quiet()  # before TensorFlow loads
import tensorflow as tf
import tf_keras as keras
from components import trainer
from components.model import build_cnn, compile_cnn
from pipeline.config import IngestConfig, TrainerConfig


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolutions and dense layers (the rest is negligible)."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output_shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * kh * kw * layer.input_shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input_shape[-1] * layer.units
    return flops


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def timed_epoch(model, data, batch_size) -> float:
    start = time.perf_counter()
    if isinstance(data, tuple):
        model.fit(*data, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
    else:
        model.fit(data, epochs=1, verbose=0)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    args = parser.parse_args()
    ingest = IngestConfig.load()

    files = faces.tfrecords("train", args.images, seed=0)
    x, y = faces.arrays(files)
    n = len(x)
    config = dataclasses.replace(TrainerConfig.load(), batch_size=args.batch_size)
    pipeline_input = trainer._dataset(files, ingest, config, n, training=True, cache=True)

    variants = {"baseline: in-memory numpy, model.fit(x, y)": (x, y),
                "pipeline: tf.data from TFRecords": pipeline_input}
    models = {}
    for name in variants:
        keras.utils.set_random_seed(0)
        models[name] = build_cnn(ingest.image_size, len(ingest.classes))
        compile_cnn(models[name], config.learning_rate)
        timed_epoch(models[name], variants[name], args.batch_size)  # warm-up: trace, fill cache
    seconds = {name: [] for name in variants}
    for _ in range(args.epochs):
        for name, data in variants.items():
            seconds[name].append(timed_epoch(models[name], data, args.batch_size))

    peak = matmul_gflops()
    step_gflop = 3 * forward_flops(models[next(iter(models))]) / 1e9
    print(f"{n:,} images, batch {args.batch_size}, {args.epochs} timed epochs per variant, "
          f"{os.cpu_count()} cores, TensorFlow {tf.__version__}")
    print(f"model: {forward_flops(models[next(iter(models))]) / 1e6:.0f} MFLOP per image forward, "
          f"{step_gflop:.2f} GFLOP per image per training step")
    print(f"matmul 2048x2048 float32: {peak:.1f} GFLOP/s")
    print(f"{'variant':45s} {'best s':>7s} {'images/s':>9s} {'GFLOP/s':>8s} {'of matmul':>9s} "
          f"{'ratio':>6s}")
    base_rate = None
    for name, times in seconds.items():
        rate = n / min(times)
        base_rate = base_rate or rate
        gflops = rate * step_gflop
        print(f"{name:45s} {min(times):7.1f} {rate:9.1f} {gflops:8.1f} {gflops / peak:9.0%} "
              f"{rate / base_rate:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
