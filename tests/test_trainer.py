"""Trainer: the seed architecture, real training on tiny data, resume after kill -9, tf.distribute,
and the exported SavedModel served from a fresh process."""
import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components import trainer
from components.model import build_cnn
from pipeline.config import SCHEMAS_DIR, IngestConfig, TrainerConfig
from pipeline.errors import UserError
from tests.helpers import free_port

# A few steps of everything: two cores, minutes for the whole file.
FAST = {"epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def examples(training_examples):
    """ExampleGen's output for 160 synthetic faces (about 128 train, 16 eval, 16 test): the
    session's (conftest), which test_recipe reads too."""
    return training_examples


def fast_config(**changes) -> TrainerConfig:
    return dataclasses.replace(TrainerConfig.load(), **{**FAST, **changes})


def trainer_command(examples, output, *extra):
    return [sys.executable, "-m", "components.trainer", "--examples", examples,
            "--output", str(output), "--batch-size", "16", *extra]


def history(output) -> list[dict]:
    with open(output / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_architecture_is_the_seed_design_layer_by_layer():
    model = build_cnn(48, 7)
    seen = []
    for layer in model.layers[1:]:  # after the input
        c = layer.get_config()
        kind = type(layer).__name__
        if kind == "Conv2D":
            seen.append((kind, c["filters"], tuple(c["kernel_size"]), c["padding"], c["activation"]))
        elif kind == "Dense":
            seen.append((kind, c["units"], c["activation"]))
        elif kind == "Dropout":
            seen.append((kind, c["rate"]))
        elif kind == "MaxPooling2D":
            seen.append((kind, tuple(c["pool_size"])))
        elif kind == "TFOpLambda":
            assert c["function"] == "image.per_image_standardization"
            seen.append((kind,))
        else:
            seen.append((kind,))
    conv = lambda f, k: ("Conv2D", f, (k, k), "same", "relu")  # noqa: E731
    block = [("BatchNormalization",), ("MaxPooling2D", (2, 2))]
    assert seen == [
        ("TFOpLambda",),  # tf.image.per_image_standardization, by its public name
        conv(32, 3), conv(64, 3), *block, ("Dropout", 0.025),
        conv(128, 5), *block, ("Dropout", 0.25),
        conv(512, 3), *block, ("Dropout", 0.25),
        conv(256, 3), *block, ("Dropout", 0.25),
        ("Flatten",),
        ("Dense", 256, "relu"), ("BatchNormalization",), ("Dropout", 0.3),
        ("Dense", 512, "relu"), ("BatchNormalization",), ("Dropout", 0.3),
        ("Dense", 7, "softmax"),
    ]
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, 7)
    assert model.count_params() == 2_726_151


@pytest.mark.parametrize("change, complaint", [
    ({"epochs": 0}, "epochs must be a whole number"),
    ({"class_weight": "inverse"}, "class_weight must be"),
    ({"learning_rate": 5.0}, "learning_rate must lie in"),
    ({"augmentation": {"horizontal_flip": True, "shift": 1.5, "rotation": 0, "zoom": 0}},
     "augmentation needs"),
    ({"early_stopping": {"monitor": "val_auc", "patience": 3}}, "early_stopping.monitor"),
    ({"learning_rte": 0.01}, "unknown: ['learning_rte']"),
    ({"warm_start": {"learning_rate_factor": 2}}, "warm_start needs learning_rate_factor"),
    ({"final_learning_rate_fraction": 0}, "final_learning_rate_fraction must lie in"),
    ({"warmup_epochs": -1}, "warmup_epochs must be a whole number >= 0"),
    ({"batch_norm_population_images": 1.5}, "batch_norm_population_images must be"),
])
def test_bad_trainer_config_is_refused_with_the_reason(tmp_path, change, complaint):
    raw = json.loads((SCHEMAS_DIR / "trainer.json").read_text())
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps({**raw, **change}))
    with pytest.raises(UserError) as caught:
        TrainerConfig.load(path)
    assert complaint in str(caught.value)


def test_trains_exports_and_serves_from_a_fresh_process(trained, tmp_path):
    # The session's 2-epoch training of the 160 faces (conftest), which test_recipe reads too:
    # the shipped recipe at batch size 16, as fast_config().
    summary, out = trained
    assert summary["config"] == dataclasses.asdict(fast_config(warmup_epochs=1))
    assert summary["epochs_run"] == 2 and len(history(out)) == 2
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(history(out)[0])
    assert list((out / "logs" / "train").glob("events.out.tfevents.*"))  # TensorBoard
    assert not (out / "checkpoints" / "backup").exists()  # resume state is gone once done
    counts = np.array(list(summary["train_class_counts"].values()), float)
    present = counts > 0
    assert summary["config"]["class_weight"] == "sqrt"
    raw = 1 / np.sqrt(counts[present])
    expected = raw * counts[present].sum() / (raw * counts[present]).sum()
    weights = np.array(list(summary["class_weight"].values()))[present]
    np.testing.assert_allclose(weights, expected, rtol=1e-3)  # rare classes weigh more
    assert np.dot(weights, counts[present]) == pytest.approx(counts[present].sum(), rel=1e-3)
    balanced = trainer._class_weight(counts.astype(int), "balanced")
    np.testing.assert_allclose([balanced[i] for i in np.flatnonzero(present)],
                               counts[present].sum() / (present.sum() * counts[present]), rtol=1e-6)

    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    images[0] = 77  # a flat image: only centred
    serialized = [tf.train.Example(features=tf.train.Features(feature={
        "emotion": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
        "pixels": tf.train.Feature(int64_list=tf.train.Int64List(value=im.ravel())),
    })).SerializeToString().hex() for im in images]
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "examples.json").write_text(json.dumps(serialized))
    client = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(out / 'serving_model')!r})
images = np.load({str(tmp_path / 'images.npy')!r})
examples = [bytes.fromhex(h) for h in json.load(open({str(tmp_path / 'examples.json')!r}))]
answers = {{
  "serving_default": m.signatures["serving_default"](examples=tf.constant(examples)),
  "serve_images": m.signatures["serve_images"](images=tf.constant(images)),
  "serve_pixels": m.signatures["serve_pixels"](
      pixels=tf.constant([" ".join(map(str, im.ravel())) for im in images])),
}}
print(json.dumps({{k: {{o: (v.numpy().astype(str) if o == "class_name" else v.numpy()).tolist()
                      for o, v in a.items()}} for k, a in answers.items()}}))
print(json.dumps([[c.decode() for c in m.class_names.numpy()], int(m.image_size.numpy())]))
# model.keras is for anyone with tf_keras: safe mode (no pickled Python), no code of this project.
import sys, tf_keras
keras_model = tf_keras.models.load_model({str(out / 'model.keras')!r})
print(json.dumps(keras_model.predict(images.astype("float32"), verbose=0).tolist()))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("components", "pipeline")))
"""
    result = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    *_, printed, carried, from_keras, ours = result.stdout.strip().splitlines()
    answers = json.loads(printed)
    assert json.loads(carried) == [list(IngestConfig.load().classes), 48]  # what clients read
    reference = answers["serving_default"]
    for name in ("serve_images", "serve_pixels"):
        np.testing.assert_allclose(answers[name]["probabilities"], reference["probabilities"],
                                   atol=1e-6)
        assert answers[name]["class_id"] == reference["class_id"]
    probabilities = np.array(reference["probabilities"])
    assert probabilities.shape == (5, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert reference["class_id"] == probabilities.argmax(axis=1).tolist()
    classes = IngestConfig.load().classes
    assert reference["class_name"] == [classes[i] for i in reference["class_id"]]
    # The model scales pixels itself: the Keras model fed raw 0-255 agrees with serving, loaded
    # in a process that imported nothing of this project.
    np.testing.assert_allclose(json.loads(from_keras), probabilities, atol=1e-5)
    assert ours == "[]"


@pytest.mark.slow  # two trainings
def test_same_seed_gives_the_same_training(examples, tmp_path):
    config = fast_config(epochs=1, deterministic=True)
    runs = [trainer.run(examples, str(tmp_path / str(i)), config, IngestConfig.load())
            for i in range(2)]
    first, second = history(tmp_path / "0"), history(tmp_path / "1")
    assert first[0]["loss"] == second[0]["loss"] and first[0]["val_loss"] == second[0]["val_loss"]
    assert runs[0]["best_eval"] == runs[1]["best_eval"]


@pytest.mark.slow  # three processes
def test_a_run_killed_mid_training_resumes_from_its_last_epoch(examples, tmp_path):
    out = tmp_path / "trainer"
    command = trainer_command(examples, out, "--epochs", "6")
    # Killed as the third epoch is logged: the first two are backed up.
    killed = subprocess.run([sys.executable, "-m", "tests.inject",
                             "tf_keras.callbacks:CSVLogger.on_epoch_end@3", "kill",
                             "components.trainer", "--", *command[3:]],
                            capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "serving_model").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    done = int(re.search(r"resuming after epoch (\d+)", resumed.stdout).group(1))
    assert 1 <= done < 6
    assert f"Epoch {done + 1}/6" in resumed.stdout and "Epoch 1/6" not in resumed.stdout
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == list(range(len(rows))) and len(rows) >= done + 1
    summary = json.loads((out / "training.json").read_text())
    assert summary["resumed_after_epoch"] == done
    assert tf.saved_model.load(str(out / "serving_model")).signatures["serve_images"]


@pytest.mark.slow  # two worker processes
def test_multi_worker_mirrored_trains_with_two_workers_on_loopback(examples, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        output = tmp_path / "chief" if index == 0 else None
        command = trainer_command(examples, output, "--epochs", "1",
                                  "--distribution", "multi_worker")
        if output is None:
            command = command[:command.index("--output")] + command[command.index("--output") + 2:]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    results = [w.communicate(timeout=400) for w in workers]
    for worker, (stdout, stderr) in zip(workers, results):
        assert worker.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1])["replicas"] == 2
    summary = json.loads((tmp_path / "chief" / "training.json").read_text())
    assert summary["distribution"] == "multi_worker" and summary["replicas"] == 2
    assert (tmp_path / "chief" / "serving_model" / "saved_model.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chief"]  # the worker wrote nothing here


@pytest.mark.slow  # a process of its own
def test_mirrored_strategy_splits_batches_over_two_devices(examples, tmp_path):
    script = f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import dataclasses
from components import trainer
from pipeline.config import IngestConfig, TrainerConfig
config = dataclasses.replace(TrainerConfig.load(), epochs=1, batch_size=16)
s = trainer.run({examples!r}, {str(tmp_path / 'out')!r}, config, IngestConfig.load(),
                "mirrored", ["/cpu:0", "/cpu:1"])
print(json.dumps(s))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["distribution"] == "mirrored" and summary["replicas"] == 2
    assert summary["epochs_run"] == 1


def test_the_readme_tf_serving_request_fits_the_exported_signature(trained):
    """The README's REST body, its placeholder filled with a CSV row's pixels, answered by the
    signature it names as TF Serving would call it (each instance's keys: the inputs)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [line] = [l.strip() for l in readme.splitlines() if l.strip().startswith('{"signature_name"')]
    pixels = " ".join(str(v) for v in np.random.default_rng(3).integers(0, 256, 2304))
    body = json.loads(re.sub(r"<[^>]*>", pixels, line))
    model = tf.saved_model.load(str(trained[1] / "serving_model"))
    signature = model.signatures[body["signature_name"]]
    inputs = signature.structured_input_signature[1]
    [instance] = body["instances"]
    assert set(instance) == set(inputs)
    answer = signature(**{name: tf.constant([instance[name]], dtype=spec.dtype)
                          for name, spec in inputs.items()})
    assert {"probabilities", "class_id", "class_name"} <= set(answer)
    assert answer["probabilities"].shape == (1, 7)
