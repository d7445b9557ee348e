"""InfraValidator: the candidate SavedModel loaded as a server would load it, in a fresh process
of its own with a memory bound and a time limit, answering canary requests through each serving
signature exactly as the Trainer's own model answers them (TFX's InfraValidator, whose
InfraBlessing the Pusher requires).

The parent (`run`) builds the requests from the first `canary_examples` examples of the test
split (the serialized tf.Examples for serving_default, the uint8 images for serve_images, the
CSV's pixel strings for serve_pixels) and computes the Trainer's answers with its Keras model
(model.keras). The child (`python -m components.infra_validator`, started with this
interpreter) bounds its own address space (RLIMIT_AS, `memory_limit_mib`) before TensorFlow is
imported, loads the SavedModel with tf.saved_model.load, sends every request through every
signature, times `latency_requests` requests of batch 1 and of batch 32 per signature, and
writes the answers; the parent kills it after `timeout_seconds`. The child sees no GPU
(CUDA_VISIBLE_DEVICES=-1): a GPU driver reserves far more address space than any bound means.

The model is INFRA_BLESSED when the child loaded it within both bounds and every signature
answered every request with probabilities [N, classes] within `tolerance` of the Trainer's,
class_id [N] their argmax and class_name [N] the name of that class; otherwise
INFRA_NOT_BLESSED, with each failure in plain words.

Output layout (output_dir):
    canary_examples.tfrecord, canary_requests.npz   the requests sent
    canary_answers.npz                             what the served model answered
    infra_blessing.json                            the verdict, its reasons, load time, peak
                                                   memory, latency (median, p99) per signature
    INFRA_BLESSED | INFRA_NOT_BLESSED              marker file, as TFX writes
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline import artifacts
from pipeline.artifact_types import INFRA_BLESSING
from pipeline.config import PIXELS_FEATURE

# Each serving signature the Trainer exports, and the name of its input.
SIGNATURES = {"serving_default": "examples", "serve_images": "images", "serve_pixels": "pixels"}
LATENCY_BATCHES = (1, 32)


def run(model_dir: str, keras_model: str, examples_dir: str, output_dir: str, config: dict,
        classes: tuple[str, ...], split: str = "test", image_size: int = 48) -> dict:
    """Validate model_dir against the Trainer's Keras model on `split`'s canary examples;
    returns (and writes) infra_blessing.json's content. config: deployment.json's
    infra_validation entries."""
    exchange = tempfile.mkdtemp(prefix="fer-infra-")  # local, for the child's numpy
    try:
        result = _validate(model_dir, keras_model, examples_dir, exchange, config, classes,
                           split, image_size)
        for role in ("examples", "requests", "answers"):
            if artifacts.exists(INFRA_BLESSING.path(exchange, role)):
                artifacts.copy_file(INFRA_BLESSING.path(exchange, role),
                                    INFRA_BLESSING.path(output_dir, role))
    finally:
        shutil.rmtree(exchange, ignore_errors=True)
    artifacts.write_text(INFRA_BLESSING.path(output_dir, "result"), json.dumps(result, indent=2))
    artifacts.write_text(INFRA_BLESSING.path(output_dir, "blessed" if result["blessed"]
                                             else "not_blessed"), "")
    return result


def _validate(model_dir, keras_model, examples_dir, exchange: str, config, classes, split,
              image_size) -> dict:
    requests = _write_requests(examples_dir, split, config["canary_examples"], exchange,
                               image_size)
    expected = _trainer_answers(keras_model, requests["images"])
    answers_file = INFRA_BLESSING.path(exchange, "answers")
    command = [sys.executable, "-m", "components.infra_validator", "--model", str(model_dir),
               "--examples", INFRA_BLESSING.path(exchange, "examples"),
               "--requests", INFRA_BLESSING.path(exchange, "requests"),
               "--answers", answers_file,
               "--memory-limit-mib", str(config["memory_limit_mib"]),
               "--latency-requests", str(config["latency_requests"])]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1",
                   "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    started = time.perf_counter()
    served, reasons = None, []
    try:
        child = subprocess.run(command, capture_output=True, text=True, env=environment,
                               timeout=config["timeout_seconds"])
    except subprocess.TimeoutExpired:
        reasons.append(f"it did not load and answer its {len(expected)} canary requests within "
                       f"{config['timeout_seconds']} s (timeout_seconds in deployment.json); a "
                       f"server would have given up on it")
    else:
        if child.returncode != 0 or not artifacts.exists(answers_file):
            reasons.append(_died(child, config["memory_limit_mib"]))
        else:
            served = _read_answers(answers_file)
            reasons += _judge(served, expected, classes, config["tolerance"])
    seconds = time.perf_counter() - started
    meta = served["meta"] if served else {}
    result = {
        "blessed": not reasons, "reasons": reasons, "model": str(model_dir),
        "split": split, "canary_examples": int(len(expected)), "examples_from": examples_dir,
        "bounds": {"memory_limit_mib": config["memory_limit_mib"],
                   "timeout_seconds": config["timeout_seconds"]},
        "tolerance": config["tolerance"],
        "seconds": round(seconds, 2),
        "load_seconds": meta.get("load_seconds"),
        "peak_memory_mib": meta.get("peak_memory_mib"),
        "signatures": {name: {"max_difference": _difference(served, name, expected),
                              "latency_ms": meta.get("latency_ms", {}).get(name)}
                       for name in SIGNATURES} if served else {},
    }
    return result


def _write_requests(examples_dir: str, split: str, count: int, output_dir: str,
                    image_size: int) -> dict:
    """The canary requests, written for the child into a local output_dir: the split's first
    `count` serialized tf.Examples, and their images (uint8) and pixel strings."""
    import tensorflow as tf

    files = artifacts.example_files(examples_dir, split)
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        files, compression_type="GZIP").take(count)]
    if not records:
        raise ValueError(f"no {split} examples in {examples_dir} to send as canary requests")
    pixels = tf.io.parse_example(tf.constant(records), {
        PIXELS_FEATURE: tf.io.FixedLenFeature([image_size * image_size], tf.int64)}
    )[PIXELS_FEATURE].numpy()
    images = pixels.reshape(-1, image_size, image_size, 1).astype(np.uint8)
    strings = np.array([" ".join(map(str, row)) for row in pixels])
    with tf.io.TFRecordWriter(INFRA_BLESSING.path(output_dir, "examples")) as writer:
        for record in records:
            writer.write(record)
    with open(INFRA_BLESSING.path(output_dir, "requests"), "wb") as f:
        np.savez(f, images=images, pixels=strings)
    return {"images": images, "pixels": strings}


def _trainer_answers(keras_model: str, images: np.ndarray) -> np.ndarray:
    """The probabilities of the model the Trainer trained (its model.keras), in this process."""
    from components.model import load_trained

    model = load_trained(keras_model)
    return model.predict(images.astype(np.float32), batch_size=64, verbose=0)


def _died(child: subprocess.CompletedProcess, memory_mib: int) -> str:
    lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
    last = lines[-1].strip()[:300] if lines else "no message"
    if child.returncode < 0:
        how = f"was killed by {signal.Signals(-child.returncode).name}"
    else:
        how = f"exited with status {child.returncode}"
    return (f"the serving process {how} ({last}); it was bounded to {memory_mib} MiB of address "
            f"space (memory_limit_mib in deployment.json), which a model that needs more "
            f"exceeds")


def _read_answers(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        answers = {key: data[key] for key in data.files}
    answers["meta"] = json.loads(str(answers.pop("meta")))
    return answers


def _judge(served: dict, expected: np.ndarray, classes, tolerance: float) -> list[str]:
    """What each signature got wrong, one sentence part each ([] when all answered right)."""
    n, k = expected.shape
    reasons = []
    for name in SIGNATURES:
        failure = served["meta"]["errors"].get(name)
        if failure:
            reasons.append(f"signature {name} failed: {failure}")
            continue
        probabilities = served[f"{name}/probabilities"]
        class_id, class_name = served[f"{name}/class_id"], served[f"{name}/class_name"]
        if probabilities.shape != (n, k):
            reasons.append(f"signature {name} answered probabilities of shape "
                           f"{list(probabilities.shape)}, not [{n}, {k}] ({n} requests, "
                           f"{k} classes)")
            continue
        if class_id.shape != (n,) or class_name.shape != (n,):
            reasons.append(f"signature {name} answered class_id of shape {list(class_id.shape)} "
                           f"and class_name of shape {list(class_name.shape)}, not [{n}]")
            continue
        difference = float(np.abs(probabilities - expected).max())
        if not difference <= tolerance:  # NaN fails too
            reasons.append(f"signature {name} answered probabilities up to {difference:.3g} "
                           f"away from the Trainer's (tolerance {tolerance:g})")
        if not np.array_equal(class_id, probabilities.argmax(axis=1)):
            reasons.append(f"signature {name} answered class_id that is not the most probable "
                           f"class")
        elif [str(c) for c in class_name] != [classes[i] for i in class_id]:
            reasons.append(f"signature {name} answered class_name that does not name class_id "
                           f"(the classes are {', '.join(classes)})")
    return reasons


def _difference(served: dict, name: str, expected: np.ndarray) -> float | None:
    probabilities = served.get(f"{name}/probabilities")
    if probabilities is None or probabilities.shape != expected.shape:
        return None
    return float(np.abs(probabilities - expected).max())


# The child: a fresh process, as a server.

def serve(model_dir: str, examples: str, requests: str, latency_requests: int) -> dict:
    """Load the model, answer every request through every signature, time the latency;
    {"<signature>/<output>": array, ..., "meta": {...}}."""
    import tensorflow as tf

    started = time.perf_counter()
    model = tf.saved_model.load(model_dir)
    load_seconds = time.perf_counter() - started
    with np.load(requests, allow_pickle=False) as data:
        images, pixels = data["images"], data["pixels"]
    records = [r.numpy() for r in tf.data.TFRecordDataset(examples)]
    feeds = {"serving_default": tf.constant(records), "serve_images": tf.constant(images),
             "serve_pixels": tf.constant([str(p) for p in pixels])}
    answers, errors, latency = {}, {}, {}
    for name, argument in SIGNATURES.items():
        try:
            signature = model.signatures[name]
            outputs = signature(**{argument: feeds[name]})
            for key in ("probabilities", "class_id", "class_name"):
                if key not in outputs:
                    raise ValueError(f"it answered {sorted(outputs)}, without {key}")
                value = outputs[key].numpy()
                if value.dtype == object:  # strings come back as bytes
                    value = np.array([v.decode(errors="replace") if isinstance(v, bytes)
                                      else str(v) for v in value.reshape(-1)]).reshape(
                                          value.shape)
                answers[f"{name}/{key}"] = value
            latency[name] = _latency(signature, argument, feeds[name], latency_requests)
        except Exception as e:  # whatever the reason, it is the signature's failure
            errors[name] = _what_failed(e)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    answers["meta"] = np.array(json.dumps({
        "load_seconds": round(load_seconds, 3), "peak_memory_mib": round(peak, 1),
        "errors": errors, "latency_ms": latency}))
    return answers


def _what_failed(error: Exception) -> str:
    """One line that says what failed: for TensorFlow's errors, the message under its "Graph
    execution error" and the trace of where the node was defined."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.startswith((" ", "\t")) and not line.startswith((
                 "Graph execution error", "Detected at node", "File "))]
    line = (lines[-1] if lines else type(error).__name__).split("[[")[0].strip()
    return f"{type(error).__name__}: {line}"[:300]


def _latency(signature, argument: str, requests, count: int) -> dict:
    """Milliseconds per request of batch 1 and batch 32 (the canary requests repeated to fill
    it): median and 99th percentile of `count` requests after two warm-up requests (with the
    default 10 requests, the 99th percentile is close to their maximum)."""
    import tensorflow as tf

    timed = {}
    for size in LATENCY_BATCHES:
        batch = tf.gather(requests, np.arange(size) % int(requests.shape[0]))
        for _ in range(2):
            signature(**{argument: batch})
        times = []
        for _ in range(count):
            started = time.perf_counter()
            signature(**{argument: batch})["probabilities"].numpy()
            times.append((time.perf_counter() - started) * 1000)
        timed[f"batch_{size}"] = {"median": round(float(np.median(times)), 3),
                                  "p99": round(float(np.percentile(times, 99)), 3)}
    timed["requests"] = count
    return timed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.infra_validator",
                                     description="The InfraValidator's serving process: started "
                                                 "by the pipeline, not by hand.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--examples", required=True, help="canary tf.Examples (TFRecord)")
    parser.add_argument("--requests", required=True, help="canary images and pixel strings")
    parser.add_argument("--answers", required=True, help="where the answers go (.npz)")
    parser.add_argument("--memory-limit-mib", type=int, required=True)
    parser.add_argument("--latency-requests", type=int, default=10)
    args = parser.parse_args(argv)
    import resource

    limit = args.memory_limit_mib << 20  # before TensorFlow is imported: it counts too
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import pipeline

    pipeline.quiet()
    try:
        answers = serve(args.model, args.examples, args.requests, args.latency_requests)
    except MemoryError:
        print(f"out of memory within {args.memory_limit_mib} MiB", file=sys.stderr)
        return 1
    except Exception as e:  # a model that does not load: said in one line, for the parent
        print(_what_failed(e), file=sys.stderr)
        return 1
    partial = artifacts.staging_path(args.answers)
    with open(partial, "wb") as f:
        np.savez(f, **answers)
    os.replace(partial, args.answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
