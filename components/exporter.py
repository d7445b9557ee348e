"""Exporter: the trained model for devices and other runtimes, as TensorFlow Lite in float32 and
in full-integer int8 and as ONNX (float32, tf2onnx), each scored in its own runtime (the TFLite
interpreter, onnxruntime) on the test split beside the SavedModel; an export ships with the
version unless the parity gate holds it back (evaluation.json's export_parity:
overall, and in each class with at least min_class_examples examples, as the Evaluator judges
classes). The gate reasons about sample size as the Evaluator's comparison with the serving
model does: on the same examples, an export is held back when it is behind the SavedModel by
more than allowed and the paired interval of the difference (at evaluation.json's confidence)
lies wholly below 0; two faces of a 50-face class, or an export that answers better, decide
nothing.

float32: the CNN as it is (input: raw pixels 0-255 as float32 [1, 48, 48, 1]; output: the 7
probabilities). int8: every operation in 8-bit integers (TFLITE_BUILTINS_INT8), calibrated on
`representative_images` training images; input: the raw pixels as uint8 [1, 48, 48, 1] (scale 1,
zero point 0: exact), output: the probabilities as uint8 (scale 1/256). onnx: the CNN as it is,
opset 17 (input "images", float32 [N, 48, 48, 1] raw pixels; output the probabilities). All
take any batch size. The per-image standardisation is part of each, as of the SavedModel.

Before the int8 conversion the CNN is rewritten into an equivalent one that quantizes well (the
same answers in float, checked on the calibration images and recorded): batch normalisation here
follows the ReLU, so it cannot be folded into the convolution, and per-tensor int8 activations
then give the channels that batch normalisation amplifies 20-30 times (block 1) only a few
levels. A per-channel factor s > 0 passes through ReLU (relu(s z) = s relu(z)), so each
convolution's channels are scaled by |gamma / sqrt(var + eps)| and the batch normalisation is
left with a scale of +-1; between the dense layers the factor is shared between the two weight
matrices (cross-layer equalisation, Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019). Units that are dead on the training data
(population variance 0) are zeroed (their output is the constant beta). Measured on the built-in
data's model: int8 top-1 agreement with the SavedModel went from 72% to 98%, accuracy from 0.69
to 0.85 (the SavedModel's 0.85).

Output layout (output_dir):
    model_float32.tflite, model_int8.tflite,
    model.onnx                                each export that converted
    exports.json                              per export: size, accuracy overall and per class
                                              against the SavedModel's, agreement, latency, and
                                              whether it ships and why not
"""
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np
from scipy.stats import norm

from pipeline import artifacts
from pipeline.artifact_types import EXPORTED_MODELS
from pipeline.config import LABEL_FEATURE, PIXELS_FEATURE
from pipeline.evidence import paired_change, paired_counts

FORMATS = {"float32": "TensorFlow Lite float32", "int8": "TensorFlow Lite int8",
           "onnx": "ONNX float32"}  # each export, in the order they are made
_ONNX_OPSET = 17
_CHUNK = 64  # images per interpreter call when scoring


def run(keras_model: str, serving_model: str, examples_dir: str, output_dir: str, config: dict,
        parity: dict, confidence: float, classes: tuple[str, ...], split: str,
        min_class_examples: int, calibration_split: str, image_size: int = 48) -> dict:
    """Convert, score and judge each export; returns (and writes) exports.json's content.

    keras_model: the Trainer's model.keras (the CNN); serving_model: its SavedModel, whose
    answers on `split` are the reference; calibration_split: where the int8 conversion's
    representative images come from (the train split); config: deployment.json's tflite
    entries; parity: evaluation.json's export_parity."""
    from components.model import load_trained

    cnn = load_trained(keras_model)
    images, labels = _read(examples_dir, split, image_size)
    calibration, _ = _read(examples_dir, calibration_split, image_size,
                           config["representative_images"])
    if not len(images):
        raise ValueError(f"no {split} examples in {examples_dir}")
    reference = _saved_model_probabilities(serving_model, images)
    counts = np.bincount(labels, minlength=len(classes))[:len(classes)]
    judged = [c for c, n in zip(classes, counts) if n >= min_class_examples]
    saved = _accuracies(reference, labels, classes)
    exports = {}
    for name in FORMATS:
        exports[name] = _export(name, cnn, calibration, images, labels, reference, saved, classes,
                                judged, parity, confidence, config, output_dir)
    result = {
        "split": split, "examples": int(len(images)), "examples_from": examples_dir,
        "saved_model": {"path": serving_model, **saved},
        "class_examples": dict(zip(classes, map(int, counts))),
        "not_judged": {c: int(n) for c, n in zip(classes, counts) if c not in judged},
        "parity": dict(parity), "confidence": confidence,
        "min_class_examples": min_class_examples,
        "representative_images": int(len(calibration)),
        "exports": exports,
    }
    artifacts.write_text(EXPORTED_MODELS.path(output_dir, "exports"), json.dumps(result, indent=2))
    return result


def _export(name, cnn, calibration, images, labels, reference, saved, classes, judged, parity,
            confidence, config, output_dir) -> dict:
    """One export: converted, written, scored and judged (a conversion that fails is recorded
    as not shipped, with what failed: the other exports and the push go on)."""
    started = time.perf_counter()
    try:
        model, details = convert(name, cnn, calibration)
    except Exception as e:  # the converter fails in many ways; to the run it is one outcome
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return {"format": FORMATS[name], "shipped": False,
                "reasons": [f"the {name} conversion failed: {why}"]}
    converted = time.perf_counter() - started
    path = EXPORTED_MODELS.path(output_dir, name)
    with artifacts.open_write_bytes(path) as f:
        f.write(model)
    started = time.perf_counter()
    probabilities = interpret(name, model, images)
    scored = time.perf_counter() - started
    mine = _accuracies(probabilities, labels, classes)
    reasons, differences = _parity(name, probabilities, reference, labels, classes, judged,
                                   parity, confidence)
    return {
        "format": FORMATS[name], "shipped": not reasons, "reasons": reasons, "file": path,
        "bytes": len(model),
        "paired_difference": differences,
        **details, **mine,
        "accuracy_difference": mine["accuracy"] - saved["accuracy"],
        "class_accuracy_difference": {
            c: (None if mine["class_accuracy"][c] is None else
                mine["class_accuracy"][c] - saved["class_accuracy"][c]) for c in classes},
        "agreement": float(np.mean(probabilities.argmax(1) == reference.argmax(1))),
        "max_probability_difference": float(np.abs(probabilities - reference).max()),
        "convert_seconds": round(converted, 2), "score_seconds": round(scored, 2),
        "latency_ms": latency(name, model, images[:1], config["latency_requests"]),
    }


def convert(name: str, cnn, calibration: np.ndarray) -> tuple[bytes, dict]:
    """(the TFLite flatbuffer or ONNX model, what describes it) of the CNN as export `name`."""
    import tensorflow as tf

    side = cnn.input_shape[1]
    details = {"input": f"float32 [N, {side}, {side}, 1], raw pixels 0-255",
               "output": f"float32 [N, {cnn.output_shape[-1]}], probabilities"}
    if name == "onnx":
        import tf2onnx

        function = tf.function(lambda x: cnn(x, training=False))
        with native_output_silenced():
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=(tf.TensorSpec([None, side, side, 1], tf.float32,
                                                         name="images"),), opset=_ONNX_OPSET)
        return proto.SerializeToString(), {**details, "opset": _ONNX_OPSET}
    model = cnn
    if name == "int8":
        model, difference = equalized(cnn, calibration)
        details = {"input": f"uint8 [N, {side}, {side}, 1], raw pixels (scale 1, zero point 0)",
                   "output": f"uint8 [N, {cnn.output_shape[-1]}], probabilities (scale 1/256)",
                   "equalization_max_difference": difference}
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, side, side, 1], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    # Convert the frozen function, not a SavedModel of it written to a temporary folder first:
    # the same flatbuffer (the same answers, a few bytes of metadata apart), 2 s less each.
    converter.experimental_lower_to_saved_model = False
    if name == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [calibration[i:i + 1].astype(np.float32)] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with native_output_silenced():
        return converter.convert(), details


def equalized(cnn, calibration: np.ndarray):
    """(a copy of the CNN that answers the same and quantizes well, the largest difference of
    their probabilities on the calibration images): see the module's docstring."""
    import tf_keras as keras

    copy = keras.models.clone_model(cnn)
    copy.set_weights(cnn.get_weights())
    layers = copy.layers
    for i, layer in enumerate(layers[:-1]):
        norm = layers[i + 1]
        if not (isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
                and isinstance(norm, keras.layers.BatchNormalization)
                and layer.activation is keras.activations.relu):
            continue
        gamma, beta, mean, variance = (w.numpy() for w in (
            norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
        dead = variance < 1e-6
        scale = np.where(dead, 0.0, gamma / np.sqrt(variance + norm.epsilon))
        kernel, bias = layer.get_weights()
        following = next((x for x in layers[i + 2:] if isinstance(x, (keras.layers.Conv2D,
                                                                      keras.layers.Dense))), None)
        if isinstance(layer, keras.layers.Dense) and isinstance(following, keras.layers.Dense):
            # Shared between this layer's columns and the next one's rows (which TFLite folds
            # the batch normalisation's scale into): both end with the same range.
            own = np.abs(kernel).max(axis=0)
            theirs = np.abs(following.get_weights()[0] * scale[:, None]).max(axis=1)
            factor = np.where(dead | (own == 0), 1.0,
                              np.sqrt(np.maximum(theirs, 1e-12) / np.maximum(own, 1e-12)))
            remaining = scale / factor
        else:  # the whole factor into the convolution; the normalisation keeps its sign
            factor, remaining = np.abs(scale), np.sign(scale)
        factor = np.where(dead, 0.0, factor)
        layer.set_weights([kernel * factor, bias * factor])
        norm.set_weights([np.where(dead, 0.0, remaining).astype(gamma.dtype),
                          (beta - scale * mean).astype(beta.dtype), np.zeros_like(mean),
                          np.full_like(variance, 1.0 - norm.epsilon)])
    if not len(calibration):
        return copy, 0.0
    x = calibration.astype(np.float32)
    difference = np.abs(copy.predict(x, batch_size=_CHUNK, verbose=0)
                        - cnn.predict(x, batch_size=_CHUNK, verbose=0)).max()
    return copy, float(difference)


def loaded(name: str, model: bytes, batch_shape: tuple, threads: int | None = None):
    """Export `name` loaded in its own runtime for batches of `batch_shape` (uint8 images
    [N, side, side, 1]): a function from such a batch to float32 probabilities."""
    threads = threads or len(os.sched_getaffinity(0))
    if name == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # warnings about unused initializers and the like
        session = onnxruntime.InferenceSession(model, options,
                                               providers=["CPUExecutionProvider"])
        given = session.get_inputs()[0].name
        return lambda images: session.run(None, {given: images.astype(np.float32)})[0]
    import tensorflow as tf

    with native_output_silenced():  # the delegate announces itself on first use
        interpreter = tf.lite.Interpreter(model_content=model, num_threads=threads)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"],
                                        list(batch_shape))
        interpreter.allocate_tensors()
    return lambda images: _invoke(interpreter, images)


def interpret(name: str, model: bytes, images: np.ndarray) -> np.ndarray:
    """Export `name`'s probabilities for uint8 images [N, side, side, 1], as float32."""
    answers, call, shape = [], None, None
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK]
        if chunk.shape != shape:
            call, shape = loaded(name, model, chunk.shape), chunk.shape
        answers.append(call(chunk))
    return np.concatenate(answers)


def _invoke(model, images: np.ndarray) -> np.ndarray:
    given, answer = model.get_input_details()[0], model.get_output_details()[0]
    scale, zero = given["quantization"]
    values = images.astype(np.float32)
    if np.issubdtype(given["dtype"], np.integer) and scale:
        info = np.iinfo(given["dtype"])
        values = np.clip(np.round(values / scale + zero), info.min, info.max)
    model.set_tensor(given["index"], values.astype(given["dtype"]))
    model.invoke()
    out = model.get_tensor(answer["index"])
    scale, zero = answer["quantization"]
    return (out.astype(np.float32) - zero) * scale if scale else out.astype(np.float32)


def latency(name: str, model: bytes, image: np.ndarray, requests: int, threads: int = 1) -> dict:
    """Milliseconds of one single-image call (on one thread by default, as on a phone's core):
    median and 99th percentile of `requests` calls after two warm-up calls."""
    call = loaded(name, model, image.shape, threads)
    with native_output_silenced():
        for _ in range(2):
            call(image)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call(image)
        times.append((time.perf_counter() - started) * 1000)
    return {"median": round(float(np.median(times)), 3),
            "p99": round(float(np.percentile(times, 99)), 3), "requests": requests,
            "threads": threads}


def _accuracies(probabilities: np.ndarray, labels: np.ndarray, classes) -> dict:
    """Overall and per-class accuracy (top-1 recall), as the Evaluator defines them."""
    predicted = probabilities.argmax(axis=1)
    per_class = {c: (float(np.mean(predicted[labels == k] == k)) if np.any(labels == k)
                     else None) for k, c in enumerate(classes)}
    return {"accuracy": float(np.mean(predicted == labels)), "class_accuracy": per_class}


def _parity(name, probabilities, reference, labels, classes, judged, parity: dict,
            confidence: float) -> tuple[list[str], dict]:
    """(why the export does not ship, the paired difference to the SavedModel with its interval,
    overall and per judged class). As the Evaluator judges a drop against the serving model: an
    export is held back when it falls behind by more than the parity allows and the whole
    interval of the difference lies below 0; one that answers better is not held back."""
    z = norm.ppf(0.5 + confidence / 2)
    mine, theirs = probabilities.argmax(1) == labels, reference.argmax(1) == labels
    parts = [("overall accuracy", None, np.ones(len(labels), bool), parity["accuracy"])]
    parts += [(f"accuracy of class {c}", c, labels == classes.index(c), parity["class_accuracy"])
              for c in judged]
    reasons, differences = [], {}
    for label, key, rows, allowed in parts:
        change, error = paired_change(paired_counts(mine[rows], theirs[rows]))
        low, high = max(change - z * error, -1.0), min(change + z * error, 1.0)
        differences[key or "accuracy"] = {"change": change, "low": low, "high": high}
        if -change > allowed + 1e-9 and high < 0:
            reasons.append(f"the {name} model's {label} is {mine[rows].mean():.3f} against the "
                           f"SavedModel's {theirs[rows].mean():.3f}, {-change:.3f} behind (at "
                           f"most {allowed:.3f} allowed; {confidence:.0%} interval of the "
                           f"difference {low:+.3f} to {high:+.3f}, wholly below 0)")
    return reasons, differences


def _saved_model_probabilities(serving_model: str, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(serving_model).signatures["serve_images"]
    return np.concatenate([serve(images=tf.constant(images[i:i + 256]))["probabilities"].numpy()
                           for i in range(0, len(images), 256)])


def _read(examples_dir: str, split: str, image_size: int, limit: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, side, side, 1], labels [N]) of a split, in file order, at most limit."""
    import tensorflow as tf

    files = artifacts.example_files(examples_dir, split)
    spec = {LABEL_FEATURE: tf.io.FixedLenFeature([1], tf.int64),
            PIXELS_FEATURE: tf.io.FixedLenFeature([image_size * image_size], tf.int64)}
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        records = records.take(limit)
    images, labels = [], []
    for batch in records.batch(512):
        parsed = tf.io.parse_example(batch, spec)
        images.append(parsed[PIXELS_FEATURE].numpy().reshape(-1, image_size, image_size, 1)
                      .astype(np.uint8))
        labels.append(parsed[LABEL_FEATURE].numpy()[:, 0])
    if not images:
        return np.zeros((0, image_size, image_size, 1), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


@contextlib.contextmanager
def native_output_silenced():
    """The TFLite converter and interpreter print from C++ straight to the process's stdout and
    stderr ("fully_quantize: 0, ...", "Created TensorFlow Lite XNNPACK delegate", absl's
    notices): kept off the terminal while they work; shown if what they do fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
