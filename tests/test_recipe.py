"""The training recipe: the warm-up/cosine schedule, batch-norm statistics recomputed for the
weights, warm start from a serving model, and the Tuner. Real training on tiny data."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components import trainer, tuner
from components.model import build_cnn
from pipeline.config import IngestConfig, TrainerConfig, TunerConfig
from pipeline.errors import UserError


@pytest.fixture(scope="module")
def examples(training_examples):
    """ExampleGen's output for 160 synthetic faces: the session's (conftest), which
    test_trainer reads too."""
    return training_examples


def tiny(**changes) -> TrainerConfig:
    return dataclasses.replace(TrainerConfig.load(), **{"epochs": 2, "batch_size": 16,
                                                        "warmup_epochs": 1, **changes})


def test_learning_rate_warms_up_then_decays_to_its_floor():
    schedule = trainer.WarmupCosine(1e-3, warmup_steps=10, total_steps=110, final_fraction=0.01)
    rates = np.array([float(schedule(step)) for step in range(0, 121)])
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert np.all(np.diff(rates[:10]) > 0)  # warm-up rises
    assert np.all(np.diff(rates[10:111]) < 0)  # then only falls
    assert rates[60] == pytest.approx(0.5 * (1e-3 + 1e-5))  # half-way down the cosine
    assert rates[110] == pytest.approx(1e-5) and rates[120] == pytest.approx(1e-5)


def test_batch_norm_statistics_are_those_of_the_training_images():
    cnn = build_cnn(48, 7)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (128, 48, 48, 1)).astype(np.uint8)
    labels = rng.integers(0, 7, 128).astype(np.int32)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    population = trainer.PopulationBatchNorm(cnn, tf.distribute.get_strategy(), None, batches,
                                             None)
    first_bn = next(layer for layer in cnn.layers
                    if isinstance(layer, keras.layers.BatchNormalization))
    before = first_bn.moving_mean.numpy().copy()
    population.reestimate()
    inputs = keras.Model(cnn.input, first_bn.input)(images.astype(np.float32)).numpy()
    np.testing.assert_allclose(first_bn.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(first_bn.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)),
                               rtol=5e-3, atol=1e-6)  # float32 sums over 128 x 48 x 48 values
    assert not np.allclose(before, first_bn.moving_mean.numpy())


def test_training_records_the_batch_norm_gap_and_the_schedule(trained):
    # `trained`: the session's 2-epoch training from scratch (conftest), which test_trainer
    # reads too: the shipped recipe as tiny() sets it.
    summary, out = trained
    assert summary["config"] == dataclasses.asdict(tiny())
    gap = summary["batch_norm_gap"]
    assert set(gap) == {"inference_mode", "training_mode", "gap"}
    assert gap["gap"] == pytest.approx(gap["training_mode"] - gap["inference_mode"], abs=1e-4)
    n_train = summary["examples_per_split"]["train"]
    steps = -(-n_train // 16)
    assert summary["learning_rate"] == {"peak": TrainerConfig.load().learning_rate,
                                        "warmup_steps": steps, "total_steps": 2 * steps}
    assert summary["warm_start"] is None
    history = (out / "history.csv").read_text().splitlines()
    assert trainer.BATCH_STATS_ACCURACY in history[0] and "lr" in history[0]


@pytest.mark.slow  # a second training (9 s); whole runs start warm in test_orchestration too
def test_warm_start_begins_from_the_base_models_weights(examples, trained, tmp_path):
    ingest = IngestConfig.load()
    base, base_dir = trained
    cnn = build_cnn(48, 7)
    record = trainer._warm_start(cnn, base["serving_model"])
    assert record == {"base_model": base["serving_model"]}
    exported = keras.models.load_model(str(base_dir / "model.keras"))
    for mine, theirs in zip(cnn.weights, exported.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    tuned = trainer.run(examples, str(tmp_path / "tuned"), tiny(epochs=1), ingest,
                        base_model=base["serving_model"])
    assert tuned["warm_start"] == {"base_model": base["serving_model"]}
    shipped = TrainerConfig.load()
    assert tuned["learning_rate"]["peak"] == pytest.approx(
        shipped.learning_rate * shipped.warm_start["learning_rate_factor"])

    with pytest.raises(UserError, match="cannot start from the model"):
        trainer._warm_start(build_cnn(48, 5), base["serving_model"])
    assert trainer.base_model_problem(base["serving_model"], ingest) is None
    five_classes = dataclasses.replace(ingest, classes=ingest.classes[:5])
    assert trainer.base_model_problem(base["serving_model"], five_classes)  # another shape


@pytest.mark.slow  # three trainings; the Tuner also runs whole in test_orchestration
def test_tuner_runs_its_trials_and_the_trainer_takes_the_best(examples, tmp_path):
    search = TunerConfig(epochs_per_trial=1, parameters={
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "augmentation.shift": {"choices": [0.0, 0.05]}})
    result = tuner.run(examples, str(tmp_path), tiny(), IngestConfig.load(), search, trials=2)
    assert len(result["trials"]) == 2
    best = result["best_hyperparameters"]
    assert set(best) == {"learning_rate", "augmentation.shift"}
    assert 1e-4 <= best["learning_rate"] <= 1e-2
    assert result["best_value"] == max(t["val_accuracy"] for t in result["trials"])
    assert json.loads((tmp_path / "best_hyperparameters.json").read_text()) == best
    assert not list(tmp_path.glob("trial-*"))  # trial models are not kept
    config = tiny().tuned(best)
    assert config.learning_rate == best["learning_rate"]
    assert config.augmentation["shift"] == best["augmentation.shift"]
    assert config.augmentation["zoom"] == tiny().augmentation["zoom"]  # the rest kept


@pytest.mark.parametrize("parameters, complaint", [
    ({"learning_rte": {"low": 0.1, "high": 0.2}}, "not a hyperparameter"),
    ({"augmentation": {"low": 0.1, "high": 0.2}}, "not a hyperparameter"),
    ({"learning_rate": {"low": 0.2, "high": 0.1}}, "must be"),
    ({"learning_rate": {"low": 0, "high": 0.1, "log": True}}, "must be"),
    ({"batch_size": {"choices": []}}, "must be"),
])
def test_bad_tuner_config_is_refused_with_the_reason(tmp_path, parameters, complaint):
    path = tmp_path / "tuner.json"
    path.write_text(json.dumps({"epochs_per_trial": 2, "parameters": parameters}))
    with pytest.raises(UserError, match=complaint):
        TunerConfig.load(path)


def test_a_base_model_pushed_elsewhere_is_recorded_once_per_content(tmp_path):
    from pipeline import metadata

    store = metadata.Store(tmp_path)
    first = store.model(tmp_path / "serving" / "fer" / "1", "content-a")
    assert store.model(tmp_path / "serving" / "fer" / "1", "content-a") == first
    assert store.model(tmp_path / "serving" / "fer" / "1", "content-b") != first
    [kind] = store.store.get_artifact_types_by_id(
        [store.store.get_artifacts_by_id([first])[0].type_id])
    assert kind.name == "ServingModel"
