"""Deployment: the InfraValidator (a fresh, bounded serving process; canary requests through
every signature against the Trainer's own answers) refuses a broken candidate and the Pusher then
pushes nothing; the Exporter's int8 rewrite answers as the CNN does, its parity gate decides
what ships; the Pusher puts the exports that pass and the model card into the version. Each
component called directly, on small hand-made models and examples."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components import infra_validator, pusher, exporter, trainer
from components.model import StandardizeImage, build_cnn
from pipeline import artifacts, model_card, serving
from pipeline.artifact_types import INFRA_BLESSING, SERVING_MODEL, EXPORTED_MODELS
from pipeline.config import (LABEL_FEATURE, PIXELS_FEATURE, DeploymentConfig, IngestConfig)
from tests.helpers import pixels_for

INGEST = IngestConfig.load()
CLASSES = INGEST.classes
BLESSED = {"blessed": True, "reasons": []}


def write_examples(folder, rows: int) -> str:
    """An Examples folder with `rows` faces in each of train and test (every class)."""
    for split in ("train", "test"):
        artifacts.makedirs(artifacts.split_dir(folder, split))
        path = artifacts.join(artifacts.split_dir(folder, split), "data" +
                              artifacts.EXAMPLES_SUFFIX)
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for i in range(rows):
                features = {
                    LABEL_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 7])),
                    PIXELS_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(
                        value=pixels_for(i + (0 if split == "train" else 10_000)).tolist()))}
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=features)).SerializeToString())
    return str(folder)


def with_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """Batch normalisation as training leaves it: moving statistics, scales of both signs, and
    dead units among them (every fifth unit before each normalisation never fires: variance 0)."""
    rng = np.random.default_rng(seed)
    for before, layer in zip(model.layers, model.layers[1:]):
        if isinstance(layer, keras.layers.BatchNormalization):
            kernel, bias = before.get_weights()
            kernel[..., ::5], bias[::5] = 0.0, -1.0
            before.set_weights([kernel, bias])
            n = layer.gamma.shape[0]
            variance = rng.uniform(0.01, 2.0, n)
            variance[::5] = 0.0
            layer.set_weights([rng.normal(1, 0.5, n), rng.normal(0, 0.3, n),
                               rng.uniform(0, 1, n) * (variance > 0), variance])
    return model


def tiny_cnn() -> keras.Model:
    """The seed CNN's kinds of layer, small enough to convert in seconds."""
    keras.utils.set_random_seed(4)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((48, 48, 1)), StandardizeImage(),
        layers.Conv2D(8, 3, padding="same", activation="relu"), layers.BatchNormalization(),
        layers.MaxPooling2D(4), layers.Flatten(), layers.Dense(16, activation="relu"),
        layers.BatchNormalization(), layers.Dropout(0.3), layers.Dense(7, activation="softmax")])
    return with_statistics(model, seed=1)


def trained_like(folder, model: keras.Model) -> tuple[str, str]:
    """(model.keras, serving SavedModel) as the Trainer writes them."""
    artifacts.makedirs(folder)
    model.save(artifacts.join(folder, "model.keras"))
    trainer._export(model, artifacts.join(folder, "serving_model"), INGEST)
    return artifacts.join(folder, "model.keras"), artifacts.join(folder, "serving_model")


def broken_candidate(path: str, model: keras.Model) -> str:
    """A SavedModel with the three signatures, each broken another way: serving_default
    raises, serve_images answers 3 probabilities instead of 7, serve_pixels answers others."""
    classes = tf.constant(CLASSES)

    def answer(probabilities):
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(classes, class_id)}

    def from_examples(examples):
        tf.debugging.Assert(tf.size(examples) < 0, ["this candidate cannot parse examples"])
        return answer(tf.zeros([tf.size(examples), 7]))

    def from_images(images):
        return answer(model(tf.cast(images, tf.float32), training=False)[:, :3])

    def from_pixels(pixels):
        values = tf.strings.to_number(tf.strings.split(pixels).to_tensor(), tf.float32)
        return answer(tf.nn.softmax(model(tf.reshape(values, (-1, 48, 48, 1))) * 3.0))

    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, path, signatures={
        "serving_default": tf.function(from_examples).get_concrete_function(
            tf.TensorSpec([None], tf.string, name="examples")),
        "serve_images": tf.function(from_images).get_concrete_function(
            tf.TensorSpec([None, 48, 48, 1], tf.uint8, name="images")),
        "serve_pixels": tf.function(from_pixels).get_concrete_function(
            tf.TensorSpec([None], tf.string, name="pixels"))})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("deployment")
    model = tiny_cnn()
    keras_model, saved = trained_like(str(base / "trainer"), model)
    return base, write_examples(base / "examples", rows=21), keras_model, saved, model


def config(**changes) -> dict:
    return {**DeploymentConfig.load().infra_validation, "latency_requests": 2,
            "canary_examples": 8, **changes}


def test_a_broken_candidate_is_not_infra_blessed_and_the_pusher_refuses_it(setup, tmp_path):
    base, examples, keras_model, _, model = setup
    candidate = broken_candidate(str(tmp_path / "broken"), model)
    out = tmp_path / "infra"
    out.mkdir()
    verdict = infra_validator.run(candidate, keras_model, examples, str(out), config(), CLASSES)
    assert not verdict["blessed"]
    reasons = " | ".join(verdict["reasons"])
    assert "signature serving_default failed: " in reasons
    assert "this candidate cannot parse examples" in reasons
    assert "signature serve_images answered probabilities of shape [8, 3], not [8, 7]" in reasons
    assert "signature serve_pixels answered probabilities up to" in reasons
    assert "away from the Trainer's (tolerance 0.0001)" in reasons
    assert (out / "INFRA_NOT_BLESSED").exists() and not (out / "INFRA_BLESSED").exists()
    assert json.loads((out / "infra_blessing.json").read_text())["reasons"] == verdict["reasons"]

    serving_dir, record = tmp_path / "serving", tmp_path / "pusher"
    record.mkdir()
    where = INFRA_BLESSING.path(str(out), "result")
    pushed = pusher.run(candidate, str(serving_dir), "fer", BLESSED, str(record),
                        infra=(where, verdict))
    assert not pushed["pushed"] and pushed["refused_by"] == "InfraValidator"
    assert pushed["why"].startswith(f"The InfraValidator did not bless the model ({where}): ")
    assert "\n" not in pushed["why"] and "serving model is unchanged" in pushed["why"]
    assert serving.latest(str(serving_dir), "fer") is None


@pytest.mark.slow  # a second serving process; whole runs (test_readme) bless the real model
def test_the_trainers_own_model_is_infra_blessed_with_latency(setup, tmp_path):
    base, examples, keras_model, saved, _ = setup
    verdict = infra_validator.run(saved, keras_model, examples, str(tmp_path), config(), CLASSES)
    assert verdict["blessed"], verdict["reasons"]
    assert (tmp_path / "INFRA_BLESSED").exists()
    assert set(verdict["signatures"]) == set(infra_validator.SIGNATURES)
    for signature in verdict["signatures"].values():
        assert signature["max_difference"] <= 1e-4
        assert {"batch_1", "batch_32"} <= set(signature["latency_ms"])
        assert signature["latency_ms"]["batch_32"]["p99"] >= signature["latency_ms"][
            "batch_32"]["median"] > 0
    assert 0 < verdict["peak_memory_mib"] < verdict["bounds"]["memory_limit_mib"]


@pytest.mark.parametrize("changes, words", [
    ({"timeout_seconds": 1}, "did not load and answer its 8 canary requests within 1 s"),
    ({"memory_limit_mib": 64}, "bounded to 64 MiB of address space"),
])
def test_a_server_over_its_time_or_memory_bound_is_not_infra_blessed(setup, tmp_path, changes,
                                                                      words):
    base, examples, keras_model, saved, _ = setup
    verdict = infra_validator.run(saved, keras_model, examples, str(tmp_path), config(**changes),
                                  CLASSES)
    assert not verdict["blessed"] and words in verdict["reasons"][0], verdict["reasons"]


def test_the_int8_rewrite_answers_as_the_cnn_does():
    """Batch normalisation's scale moved into the convolutions and shared between the dense
    layers, dead units zeroed: the same probabilities in float."""
    cnn = with_statistics(build_cnn(48, 7))
    images = np.stack([pixels_for(i).reshape(48, 48, 1) for i in range(8)]).astype(np.uint8)
    copy, difference = exporter.equalized(cnn, images)
    assert difference < 1e-4
    norms = [layer for layer in copy.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(set(np.abs(layer.gamma.numpy()[::5])) == {0.0} for layer in norms)  # dead units
    convolution_norms = norms[:4]
    assert all(set(np.abs(layer.gamma.numpy()).round(6)) <= {0.0, 1.0}
               for layer in convolution_norms)


@pytest.mark.parametrize("wrong, better, held_back", [
    ({c: 30 for c in CLASSES}, {}, ["overall", *CLASSES]),  # every face wrong
    ({"Fear": 2}, {}, []),  # two faces of 30: 0.067 behind, but the evidence shows nothing
    ({}, {"Happy": 5}, []),  # the export answers better than the SavedModel
    ({"Fear": 12}, {}, ["overall", "Fear"]),  # 0.4 behind in Fear; 0.057 overall, both shown
])
def test_the_parity_gate_holds_back_only_what_the_evidence_shows_behind(wrong, better,
                                                                        held_back):
    labels = np.repeat(np.arange(7), 30)
    reference, export = np.eye(7)[labels], np.eye(7)[labels]
    for name, n in wrong.items():
        rows = np.flatnonzero(labels == CLASSES.index(name))[:n]
        export[rows] = np.eye(7)[(labels[rows] + 1) % 7]
    for name, n in better.items():
        rows = np.flatnonzero(labels == CLASSES.index(name))[:n]
        reference[rows] = np.eye(7)[(labels[rows] + 1) % 7]
    reasons, differences = exporter._parity(
        "int8", export, reference, labels, CLASSES, CLASSES,
        {"accuracy": 0.01, "class_accuracy": 0.03}, 0.95)
    named = ["overall" if "overall accuracy" in r else r.split("of class ")[1].split(" ")[0]
             for r in reasons]
    assert named == held_back
    assert all("wholly below 0" in r for r in reasons)
    for name, n in wrong.items():
        assert differences[name]["change"] == pytest.approx(-n / 30)
    assert all(-1 <= d["low"] <= d["change"] <= d["high"] <= 1 for d in differences.values())


def test_exports_are_judged_and_those_that_pass_ship_with_the_version_and_its_card(
        setup, tmp_path, monkeypatch):
    base, examples, keras_model, saved, _ = setup
    made = tmp_path / "exports"
    made.mkdir()
    settings = {"representative_images": 16, "latency_requests": 2}
    interpret, scored = exporter.interpret, []

    def int8_answers_otherwise(name, model, images):
        """The int8 export answers the next class: wrong wherever it was right."""
        scored.append(name)
        answers = interpret(name, model, images)
        return np.roll(answers, 1, axis=1) if name == "int8" else answers

    monkeypatch.setattr(exporter, "interpret", int8_answers_otherwise)
    parity = {"accuracy": 0.01, "class_accuracy": 0.03}
    result = exporter.run(keras_model, saved, examples, str(made), settings, parity, 0.95,
                          CLASSES, "test", min_class_examples=3, calibration_split="train")
    assert scored == ["float32", "int8", "onnx"]
    exports = result["exports"]
    assert result["examples"] == 21 and result["representative_images"] == 16
    assert result["class_examples"] == {c: 3 for c in CLASSES} and result["not_judged"] == {}
    assert exports["float32"]["max_probability_difference"] < 1e-4
    assert exports["float32"]["shipped"] and exports["float32"]["accuracy_difference"] == 0
    # ONNX through onnxruntime answers as the SavedModel does.
    assert exports["onnx"]["shipped"] and exports["onnx"]["max_probability_difference"] < 1e-4
    assert exports["onnx"]["agreement"] == 1.0 and exports["onnx"]["opset"] == 17
    assert exports["int8"]["equalization_max_difference"] < 1e-4
    for name in ("float32", "int8", "onnx"):
        assert (made / EXPORTED_MODELS.files[name]).stat().st_size == exports[name]["bytes"]
    assert not exports["int8"]["shipped"] and exports["int8"]["agreement"] < 0.5
    # The reasons are exactly the differences the evidence shows (the rule: the test above).
    int8 = exports["int8"]
    shown = [c for c in ("accuracy", *CLASSES) if int8["paired_difference"][c]["high"] < 0 and
             -int8["paired_difference"][c]["change"] > (0.01 if c == "accuracy" else 0.03)]
    assert shown and len(int8["reasons"]) == len(shown)
    assert all(any(f"accuracy of class {c} is " in r for r in int8["reasons"])
               for c in shown if c != "accuracy")
    assert not exports["float32"]["reasons"] and not exports["onnx"]["reasons"]

    training = {"examples_per_split": {"train": 21, "eval": 0}, "train_class_counts": {
        c: 3 for c in CLASSES}, "examples": examples, "epochs_run": 1, "best_epoch": 1,
        "best_eval": None, "config": {}}
    evaluation = {**BLESSED, "classes": list(CLASSES), "split": "test", "examples": 21,
                  "examples_from": [examples], "baseline": None, "not_judged": {},
                  "confusion_matrix": [[3 if i == j else 0 for j in range(7)] for i in range(7)],
                  "metrics": {"candidate": {"accuracy": 1.0, "macro_accuracy": 1.0,
                                            "class_accuracy": {c: 1.0 for c in CLASSES}}},
                  "intervals": {}, "gates": {"confidence": 0.95, "min_class_examples": 1,
                                             "floors": {"accuracy": 0.5},
                                             "max_drop_vs_serving": {}}}
    card = model_card.build("fer", evaluation, training, {"files": [examples], "written": {
        "train": 21, "test": 21}}, None, result, "abc1234", CLASSES,
        {"train": "train", "eval": "eval"})
    (tmp_path / "pusher").mkdir()
    pushed = pusher.run(saved, str(tmp_path / "serving"), "fer", evaluation,
                        str(tmp_path / "pusher"), exports=(str(made), result), card=card)
    version = tmp_path / "serving" / "fer" / "1"
    assert pushed["pushed"] and pushed["path"] == str(version)
    assert pushed["exports"]["float32"] == pushed["exports"]["onnx"] == "shipped"
    assert pushed["exports"]["int8"].startswith("not shipped: the int8 model's")
    shipped = version / SERVING_MODEL.files["exports"]
    assert (shipped / EXPORTED_MODELS.files["float32"]).exists()
    assert (shipped / EXPORTED_MODELS.files["onnx"]).exists()
    assert not (shipped / EXPORTED_MODELS.files["int8"]).exists()
    note = (shipped / EXPORTED_MODELS.files["notes"]).read_text()
    assert "model_float32.tflite: shipped." in note and "model_int8.tflite: NOT shipped: " in note
    assert "model.onnx: shipped." in note
    # TF Serving's folder still: the SavedModel loads, and its content is the Trainer's.
    serving.load(str(version))
    assert serving.model_content(str(version)) == serving.model_content(saved)
    written = json.loads((version / SERVING_MODEL.files["card"]).read_text())
    assert written["model_details"]["version"]["name"] == "1"
    assert written["model_details"]["path"] == str(version)
    assert written["model_parameters"]["data"][1]["counts"]["Angry"] == 3
    metrics = {m["type"]: m for m in written["quantitative_analysis"]["performance_metrics"]}
    assert "not shipped" in metrics["accuracy, TensorFlow Lite int8"]["description"]
    page = (version / SERVING_MODEL.files["card_page"]).read_text()
    assert "not for decisions about people" in page.lower() and "http" not in page
    # Pushed again, the same model is the version already there: nothing new.
    again = pusher.run(saved, str(tmp_path / "serving"), "fer", evaluation,
                       str(tmp_path / "pusher"), exports=(str(made), result), card=card)
    assert again["version"] == 1 and serving.versions(str(tmp_path / "serving" / "fer")) == [1]
