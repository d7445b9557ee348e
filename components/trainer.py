"""Trainer: fit the seed CNN on ExampleGen's TFRecords with tf.data and export a serving SavedModel.

The recipe (schemas/trainer.json) is meant to hold from about a thousand images to FER2013's
28,709 without per-dataset settings: a linear warm-up then cosine decay of Adam's learning rate,
batch-norm statistics recomputed for the weights before every evaluation (so the eval split and
the exported model never see stale moving averages, however few steps an epoch has), mild
geometric augmentation and inverse square-root class weights. A base model (the serving one)
replaces the random start, fine-tuned at a smaller learning rate.

Training is resumable: the full state (weights, optimizer, epoch) is backed up after every epoch,
and a run started again on the same output folder continues from the last finished epoch. The best
epoch on the eval split (early stopping's monitor) is what gets exported.

Output layout (output_dir):
    serving_model/          SavedModel, renamed into place only when complete. Signatures:
                              serving_default  examples: serialized tf.Example [N] (TFX/TFMA)
                              serve_images     images: uint8 [N, 48, 48, 1]
                              serve_pixels     pixels: string [N], the CSV's space-separated values
                            each returning probabilities [N, 7], class_id [N], class_name [N]
    model.keras             the exported model as Keras (fine-tuning, inspection)
    history.csv             loss, accuracy, val_loss, val_accuracy, val_accuracy_batch_stats (eval
                            with batch-norm in training mode), lr (for the next step) per epoch
    logs/                   TensorBoard
    checkpoints/            best/ (weights of the best eval epoch), backup/ (removed at the end)
    training.json           what was trained on, with what, and how it went

Distribution: "default" (one device), "mirrored" (all local GPUs, or the devices given), or
"multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG). Only the chief writes output_dir;
other workers write to a temporary folder that is removed.
Workers of a multi-worker job run: python -m components.trainer --examples DIR [--output DIR]
[--base-model DIR]
"""
import argparse
import csv
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.model import build_cnn, compile_cnn, save_trained
import pipeline
from pipeline import artifacts
from pipeline.artifact_types import MODEL
from pipeline.config import (LABEL_FEATURE, PIXELS_FEATURE, IngestConfig, TrainerConfig,
                             add_flags, resolve)
from pipeline.errors import IntegrityError, UserError, report_error

DISTRIBUTIONS = ("default", "mirrored", "multi_worker")
_PARSE_BLOCK = 256
# What tf_keras BackupAndRestore records: the index of the last finished epoch.
_SAVED_EPOCH = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"


def run(examples_dir: str, output_dir: str | None, config: TrainerConfig, ingest: IngestConfig,
        distribution: str = "default", devices: list[str] | None = None,
        base_model: str | None = None, export: bool = True) -> dict:
    """Train on Split-train, monitor Split-eval, export to output_dir; returns training.json.

    base_model: a SavedModel of this pipeline (the one serving) to start from instead of random
    weights (TFX's "base model"); fine-tuned at config.warm_start's smaller learning rate.
    export: False for a Tuner trial, whose score is kept and model thrown away: no
    serving_model/ nor model.keras (serving_model is then None)."""
    strategy = _strategy(distribution, devices)  # first: collective ops must precede other TF use
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    chief = _is_chief(strategy)
    out = output_dir if chief and output_dir else tempfile.mkdtemp(prefix="fer-worker-")
    try:
        summary = _train(examples_dir, out, config, ingest, strategy, distribution, chief,
                         base_model, export)
    except tf.errors.DataLossError as e:
        raise IntegrityError(
            f"A TFRecord file under {examples_dir} is damaged ({e.message.splitlines()[0]}). "
            f"Run again: the pipeline checks the files of every step it reuses and makes damaged "
            f"ones anew.") from None
    finally:
        if out != output_dir:
            shutil.rmtree(out, ignore_errors=True)
    return summary


def _train(examples_dir, out: str, config, ingest, strategy, distribution: str, chief: bool,
           base_model: str | None, export: bool = True) -> dict:
    """Fit, resumably, keep the best epoch's weights, export them; the summary (training.json)."""
    files, counts = _splits(examples_dir, ingest)
    class_weight = _class_weight(counts["train"], config.class_weight)
    train, evaluation = (_dataset(
        files[split], ingest, config, int(counts[split].sum()), training=split == "train",
        cache=counts[split].sum() * (ingest.n_pixels + 16) <= config.cache_max_bytes)
        for split in ("train", "eval"))
    n_train = int(counts["train"].sum())
    steps_per_epoch = -(-n_train // config.batch_size)
    peak = config.learning_rate * (config.warm_start["learning_rate_factor"] if base_model else 1)
    schedule = WarmupCosine(peak, config.warmup_epochs * steps_per_epoch,
                            config.epochs * steps_per_epoch, config.final_learning_rate_fraction)
    with strategy.scope():
        trainer_model = _trainer_model(config, ingest)
        warm_start = _warm_start(trainer_model.layers[-1], base_model) if base_model else None
        compile_cnn(trainer_model, schedule)
    population = PopulationBatchNorm(
        trainer_model.layers[-1], strategy, schedule,
        _statistics_images(files["train"], ingest, config, n_train), evaluation)
    initial_epoch, callbacks = _callbacks(out, config, population)
    started = time.perf_counter()
    trainer_model.fit(train, validation_data=evaluation, epochs=config.epochs,
                      class_weight=class_weight, callbacks=callbacks, shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)
    seconds = time.perf_counter() - started
    artifacts.remove(_backup(out))  # fit finished: nothing left to resume

    history = _read_history(MODEL.path(out, "history"))
    best = _best_row(history, config.early_stopping["monitor"])
    if chief and export:
        model = _best_model(trainer_model, _best_weights(out), config, ingest)
        _export(model, MODEL.path(out, "serving_model"), ingest)
        save_trained(model, MODEL.path(out, "keras"))
    epochs_now = len(history) - initial_epoch
    summary = {
        "examples": str(examples_dir),
        "distribution": distribution,
        "replicas": strategy.num_replicas_in_sync,
        "config": dataclasses.asdict(config),
        "examples_per_split": {ingest.split_roles[r]: int(c.sum()) for r, c in counts.items()},
        "train_class_counts": dict(zip(ingest.classes, map(int, counts["train"]))),
        "class_weight": {ingest.classes[k]: round(v, 4) for k, v in (class_weight or {}).items()},
        "epochs_run": len(history),
        "resumed_after_epoch": initial_epoch,
        "best_epoch": int(best["epoch"]) + 1 if best else None,
        "best_eval": {k: float(best[k]) for k in ("val_accuracy", "val_loss")} if best else None,
        "batch_norm_gap": _batch_norm_gap(best),
        "learning_rate": {"peak": peak, "warmup_steps": schedule.warmup_steps,
                          "total_steps": schedule.total_steps},
        "warm_start": warm_start,
        "train_images_per_second": round(
            epochs_now * counts["train"].sum() / seconds, 1) if epochs_now else None,
        "serving_model": MODEL.path(out, "serving_model") if export else None,
    }
    artifacts.write_text(MODEL.path(out, "summary"), json.dumps(summary, indent=2))
    return summary


def _splits(examples_dir: str, ingest: IngestConfig) -> tuple[dict, dict]:
    """The TFRecord files of the train and eval splits, and their label counts."""
    files = {role: artifacts.example_files(examples_dir, split)
             for role, split in ingest.split_roles.items()}  # train, eval: by role
    for role, paths in files.items():
        if not paths:
            raise UserError(f"The Trainer found no TFRecords in "
                            f"{artifacts.split_dir(examples_dir, ingest.split_roles[role])}. "
                            f"Point it at a completed ExampleGen output folder.")
    return files, {role: _label_counts(paths, len(ingest.classes))
                   for role, paths in files.items()}


def _backup(out: str) -> str:
    return artifacts.join(MODEL.path(out, "checkpoints"), "backup")


def _best_weights(out: str) -> str:
    return artifacts.join(MODEL.path(out, "checkpoints"), "best", "weights")


def _callbacks(out: str, config: TrainerConfig, population) -> tuple[int, list]:
    """(the epoch training resumes after, 0 for a fresh start; the callbacks of fit), the backup
    last: history, best weights and learning rate are settled when it is taken."""
    artifacts.makedirs(MODEL.path(out, "checkpoints"))
    history_path, monitor = MODEL.path(out, "history"), config.early_stopping["monitor"]
    initial_epoch = _resume_point(_backup(out), history_path)
    if initial_epoch:
        print(f"Trainer: resuming after epoch {initial_epoch} from {_backup(out)}", flush=True)
    best = _best_row(_read_history(history_path), monitor)
    return initial_epoch, [
        population,  # first: history records what it adds
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.ModelCheckpoint(
            _best_weights(out), monitor=monitor, save_best_only=True,
            save_weights_only=True, initial_value_threshold=float(best[monitor]) if best else None),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping["patience"]),
        keras.callbacks.TensorBoard(MODEL.path(out, "logs")),
        keras.callbacks.BackupAndRestore(_backup(out), save_freq="epoch"),
    ]


def _batch_norm_gap(best: dict | None) -> dict | None:
    """Eval accuracy with batch-norm in inference mode (the exported model) against training mode
    (each batch's own statistics): a large gap means stale moving statistics."""
    if not best or not best.get(BATCH_STATS_ACCURACY):
        return None
    return {"inference_mode": float(best["val_accuracy"]),
            "training_mode": float(best[BATCH_STATS_ACCURACY]),
            "gap": round(float(best[BATCH_STATS_ACCURACY]) - float(best["val_accuracy"]), 4)}


def _trainer_model(config: TrainerConfig, ingest: IngestConfig) -> keras.Model:
    """The CNN behind the augmentation layers (active in training only)."""
    model = keras.Sequential([
        _augmentation(config),
        build_cnn(ingest.image_size, len(ingest.classes), config.batch_norm_momentum),
    ], name="augment_then_cnn")
    model.build((None, ingest.image_size, ingest.image_size, 1))
    return model


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to the peak rate, then cosine decay to final_fraction of it by the last
    step of the epoch budget (Loshchilov & Hutter, SGDR, 2017; Goyal et al., "Accurate, Large
    Minibatch SGD", 2017, for the warm-up). A function of the step alone, so a resumed run
    continues on the same curve."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, final_fraction: float):
        self.peak, self.final_fraction = float(peak), float(final_fraction)
        self.warmup_steps, self.total_steps = int(warmup_steps), max(int(total_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        progress = tf.clip_by_value((step - self.warmup_steps) / float(
            max(self.total_steps - self.warmup_steps, 1)), 0.0, 1.0)
        final = self.peak * self.final_fraction
        cosine = final + (self.peak - final) * 0.5 * (1.0 + tf.cos(np.pi * progress))
        return tf.where(step < self.warmup_steps, self.peak * (step + 1.0) / warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "final_fraction": self.final_fraction}


BATCH_STATS_ACCURACY = "val_accuracy_batch_stats"


class PopulationBatchNorm(keras.callbacks.Callback):
    """Before every evaluation in fit, set each BatchNormalization layer's moving mean and
    variance to the population statistics of the current weights over training images without
    augmentation ("precise BN": Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

    The moving averages Keras keeps lag the weights by about 1/(1-momentum) steps; with a few
    steps an epoch they never catch up and the model, scored in inference mode, predicts one
    class. Recomputed statistics are right for the weights whatever the number of steps, and
    they are what the best checkpoint, and so the exported model, carries.

    After each epoch it also logs the eval accuracy in training mode (every batch normalised by
    its own statistics) beside Keras' inference-mode val_accuracy, and the learning rate.
    """

    def __init__(self, cnn: keras.Model, strategy, schedule, train_images, evaluation):
        super().__init__()
        self._bn = [layer for layer in cnn.layers
                    if isinstance(layer, keras.layers.BatchNormalization)]
        self._cnn, self._strategy, self._schedule = cnn, strategy, schedule
        self._train_images = train_images
        self._evaluation = evaluation
        self._in_fit = False
        self._moments = tf.function(lambda images, labels: self._replica_forward(images)[1],
                                    reduce_retracing=True)
        self._correct = tf.function(self._replica_correct, reduce_retracing=True)

    def _replica_forward(self, images):
        """The CNN with every batch-norm layer normalising by the batch's own statistics and no
        dropout: (probabilities, [(mean, variance) at each batch-norm layer's input])."""
        x = tf.cast(images, tf.float32)
        moments = []
        for layer in self._cnn.layers[1:]:  # a chain: each layer feeds the next
            if isinstance(layer, keras.layers.BatchNormalization):
                mean, variance = tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
                moments.append((mean, variance))
                x = tf.nn.batch_normalization(x, mean, variance, layer.beta, layer.gamma,
                                              layer.epsilon)
            elif not isinstance(layer, keras.layers.Dropout):
                x = layer(x, training=False)
        return x, moments

    def _replica_correct(self, images, one_hot):
        probabilities, _ = self._replica_forward(images)
        right = tf.equal(tf.argmax(probabilities, -1), tf.argmax(one_hot, -1))
        return tf.reduce_sum(tf.cast(right, tf.int64)), tf.shape(one_hot, out_type=tf.int64)[0]

    def _run(self, fn, dataset, op):
        """fn on every batch of the dataset, spread over the replicas; yields op-reduced results."""
        strategy = self._strategy
        for batch in strategy.experimental_distribute_dataset(dataset):
            # One reduction per tensor: a multi-worker reduce packs what it is given into one
            # tensor, which needs equal shapes.
            yield tf.nest.map_structure(lambda value: strategy.reduce(op, value, axis=None),
                                        strategy.run(fn, batch))

    def reestimate(self) -> None:
        sums, n = None, 0
        for moments in self._run(self._moments, self._train_images, tf.distribute.ReduceOp.MEAN):
            values = [(m.numpy(), v.numpy() + m.numpy() ** 2) for m, v in moments]
            sums = values if sums is None else [(a + m, b + v) for (a, b), (m, v) in
                                                zip(sums, values)]
            n += 1
        for layer, (mean_sum, square_sum) in zip(self._bn, sums if n else []):
            mean = mean_sum / n  # population variance: mean within-batch + between-batch
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(np.maximum(square_sum / n - mean ** 2, 0.0))

    def batch_stats_accuracy(self) -> float:
        right = total = 0
        for r, t in self._run(self._correct, self._evaluation, tf.distribute.ReduceOp.SUM):
            right, total = right + int(r), total + int(t)
        return right / max(total, 1)

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_test_begin(self, logs=None):
        if self._in_fit and self._train_images is not None:
            self.reestimate()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[BATCH_STATS_ACCURACY] = self.batch_stats_accuracy()
            logs["lr"] = float(self._schedule(self.model.optimizer.iterations))


def _statistics_images(files, ingest, config, n_train: int):
    """Up to config.batch_norm_population_images training images, unaugmented, in full batches
    (the statistics of a batch depend on its size); None when re-estimation is off."""
    n = min(config.batch_norm_population_images, n_train)
    if n < 1:
        return None
    ds = _examples(files, ingest).shuffle(min(config.shuffle_buffer, n_train),
                                          seed=config.seed + 5).take(n)
    return _finish(ds.batch(min(config.batch_size, n), drop_remainder=True))


def base_model_problem(base_model: str, ingest: IngestConfig) -> str | None:
    """Why the Trainer could not start from base_model (damaged, or another architecture), or
    None: the pipeline asks before training, and trains from scratch rather than fail."""
    try:
        _load_weights(build_cnn(ingest.image_size, len(ingest.classes)), base_model)
    except Exception as e:  # damaged files fail in many ways; to the Trainer they are one
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None


def _load_weights(cnn: keras.Model, base_model: str) -> None:
    """The weights of a SavedModel this pipeline exported: its variables hold the CNN under
    `model` (beside what serving reads: class names, image size). Raises if any weight of the
    CNN is missing or does not fit."""
    checkpoint = tf.train.Checkpoint(model=cnn)
    status = checkpoint.read(os.path.join(base_model, "variables", "variables"))
    status.assert_existing_objects_matched().expect_partial()


def _warm_start(cnn: keras.Model, base_model: str) -> dict:
    try:
        _load_weights(cnn, base_model)
    except Exception as e:  # as in base_model_problem
        raise UserError(
            f"The Trainer cannot start from the model {base_model}: its weights do not fit this "
            f"CNN ({str(e).strip().splitlines()[0][:200]}). Train from scratch (leave out "
            f"--base-model; the pipeline's flag is --from-scratch).") from None
    print(f"Trainer: starting from the weights of {base_model}", flush=True)
    return {"base_model": str(base_model)}


def _best_model(trained: keras.Model, best_weights: str, config, ingest) -> keras.Model:
    """The best epoch's CNN, as a plain model outside any distribution strategy: what is
    exported. Without a best checkpoint (none improved on a resumed run's best), the last."""
    local = _trainer_model(config, ingest)
    if tf.train.latest_checkpoint(os.path.dirname(best_weights)):
        local.load_weights(best_weights).expect_partial()
    else:
        local.set_weights(trained.get_weights())
    return local.layers[-1]


def _strategy(distribution: str, devices):
    if distribution == "default":
        return tf.distribute.get_strategy()
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if distribution == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--distribution=multi_worker needs the TF_CONFIG environment variable "
                            "describing the cluster (see the README, 'Scaling out').")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"Unknown distribution {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}.")


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def _parse(ingest: IngestConfig):
    spec = {LABEL_FEATURE: tf.io.FixedLenFeature([1], tf.int64),
            PIXELS_FEATURE: tf.io.FixedLenFeature([ingest.n_pixels], tf.int64)}
    shape = (-1, ingest.image_size, ingest.image_size, 1)

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        images = tf.reshape(tf.cast(features[PIXELS_FEATURE], tf.uint8), shape)
        return images, tf.cast(features[LABEL_FEATURE][:, 0], tf.int32)
    return parse


def _records(files):
    return tf.data.TFRecordDataset(files, compression_type="GZIP",
                                   num_parallel_reads=tf.data.AUTOTUNE)


def _examples(files, ingest):
    """(uint8 image, label) pairs: parallel read, block-wise parse."""
    return _records(files).batch(_PARSE_BLOCK).map(
        _parse(ingest), num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _finish(ds):
    """Sharded by example across workers, in a fixed order, prefetched."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _dataset(files, ingest, config, n_examples: int, *, training: bool, cache: bool):
    """Parallel read, block-wise parse, cache (uint8), shuffle, batch, one-hot, prefetch."""
    ds = _examples(files, ingest)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(config.shuffle_buffer, n_examples), seed=config.seed,
                        reshuffle_each_iteration=True)
    k = len(ingest.classes)
    ds = ds.batch(config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, k)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds.apply(tf.data.experimental.assert_cardinality(
        -(-n_examples // config.batch_size))))


def _label_counts(files, n_classes: int) -> np.ndarray:
    labels = _records(files).batch(4096).map(
        lambda s: tf.io.parse_example(s, {LABEL_FEATURE: tf.io.FixedLenFeature([1], tf.int64)}
                                      )[LABEL_FEATURE][:, 0])
    counts = np.zeros(n_classes, np.int64)
    for block in labels.as_numpy_iterator():
        counts += np.bincount(block, minlength=n_classes)[:n_classes]
    return counts


def _class_weight(counts: np.ndarray, mode: str) -> dict | None:
    """'balanced': n / (k * n_c), as scikit-learn; 'sqrt': proportional to 1 / sqrt(n_c), the
    milder inverse square-root weighting of long-tailed recognition (Mahajan et al., 2018), scaled
    so the average example still weighs 1. Classes absent from train get weight 1."""
    if mode == "none":
        return None
    present = counts > 0
    weights = np.ones(len(counts))
    if mode == "balanced":
        weights[present] = counts.sum() / (present.sum() * counts[present])
    else:
        raw = 1 / np.sqrt(counts[present])
        weights[present] = raw * counts[present].sum() / (raw * counts[present]).sum()
    return {i: float(w) for i, w in enumerate(weights)}


def _augmentation(config: TrainerConfig) -> keras.Sequential:
    """Random flips, shifts, rotations and zooms: active in training only, never exported."""
    aug, seed = config.augmentation, config.seed
    steps = []
    if aug["horizontal_flip"]:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug["shift"]:
        steps.append(keras.layers.RandomTranslation(aug["shift"], aug["shift"],
                                                    fill_mode="nearest", seed=seed + 1))
    if aug["rotation"]:
        steps.append(keras.layers.RandomRotation(aug["rotation"], fill_mode="nearest",
                                                 seed=seed + 2))
    if aug["zoom"]:
        steps.append(keras.layers.RandomZoom(aug["zoom"], fill_mode="nearest", seed=seed + 3))
    return keras.Sequential(steps or [keras.layers.Identity()], name="augmentation")


def _resume_point(backup: str, history_path: str) -> int:
    """Epochs finished before an interruption (read from the backup that fit will restore);
    history rows past that point are dropped."""
    checkpoint = tf.train.latest_checkpoint(artifacts.join(backup, "chief"))
    epoch = 1 + int(tf.train.load_variable(checkpoint, _SAVED_EPOCH)) if checkpoint else 0
    rows = _read_history(history_path)
    if len(rows) != epoch:
        _write_history(history_path, rows[:epoch])
    return epoch


def _read_history(path: str) -> list[dict]:
    if not artifacts.exists(path):
        return []
    return list(csv.DictReader(io.StringIO(artifacts.read_text(path))))


def _write_history(path: str, rows: list[dict]) -> None:
    if not rows:
        artifacts.remove(path)
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    artifacts.write_text(path, text.getvalue())


def _best_row(rows: list[dict], monitor: str) -> dict | None:
    if not rows:
        return None
    pick = max if monitor.endswith("accuracy") else min
    return pick(rows, key=lambda r: float(r[monitor]))


def _export(model: keras.Model, path: str, ingest: IngestConfig) -> None:
    """Write the serving SavedModel next to its final name, then rename it into place."""
    classes = tf.constant(ingest.classes)
    size, n = ingest.image_size, ingest.n_pixels
    spec = {PIXELS_FEATURE: tf.io.FixedLenFeature([n], tf.int64)}

    def predict(pixels):
        """pixels: integers 0-255, any numeric dtype, [N, n] or [N, size, size, 1]."""
        images = tf.reshape(tf.cast(pixels, tf.float32), (-1, size, size, 1))
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(classes, class_id)}

    def from_examples(examples):
        return predict(tf.io.parse_example(examples, spec)[PIXELS_FEATURE])

    def from_images(images):
        return predict(images)

    def from_pixels(pixels):
        values = tf.strings.split(tf.strings.strip(pixels))
        counts = values.row_lengths()
        tf.debugging.assert_equal(counts, tf.cast(n, counts.dtype), message=(
            f"each pixels string must hold exactly {n} space-separated values"))
        numbers = tf.strings.to_number(values.flat_values, tf.int32)
        tf.debugging.assert_less_equal(numbers, 255, message="pixel values must lie in 0-255")
        tf.debugging.assert_greater_equal(numbers, 0, message="pixel values must lie in 0-255")
        return predict(tf.reshape(numbers, (-1, n)))

    module = tf.Module()
    module.model = model  # tracked, so its variables are saved
    # What a client needs to read the answers, carried by the model itself (pipeline.predict).
    module.class_names = tf.Variable(list(ingest.classes), trainable=False, name="class_names")
    module.image_size = tf.Variable(size, trainable=False, name="image_size")
    signatures = {
        "serving_default": tf.function(from_examples).get_concrete_function(
            tf.TensorSpec([None], tf.string, name="examples")),
        "serve_images": tf.function(from_images).get_concrete_function(
            tf.TensorSpec([None, size, size, 1], tf.uint8, name="images")),
        "serve_pixels": tf.function(from_pixels).get_concrete_function(
            tf.TensorSpec([None], tf.string, name="pixels")),
    }
    partial = artifacts.staging_path(path)
    artifacts.remove(partial)
    tf.saved_model.save(module, partial, signatures=signatures)
    artifacts.publish(partial, path)


def parse_args(argv):
    """The worker's flags: its own, and the chief's configuration flags (pipeline.config)."""
    parser = argparse.ArgumentParser(prog="python -m components.trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", required=True, help="a completed ExampleGen output folder")
    parser.add_argument("--output", help="output folder (chief only; default: a temporary one)")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="default")
    parser.add_argument("--base-model", help="a SavedModel to start from (every worker must be "
                        "given the one the chief starts from: the serving model, unless the run "
                        "trains --from-scratch)")
    parser.add_argument("--hyperparameters", metavar="FILE", help="the Tuner's "
                        "best_hyperparameters.json, when the chief's run tuned")
    add_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the Trainer alone: the command each other worker of a multi-worker job runs, with the
    chief's own configuration flags, so that it resolves the same settings as the chief."""
    pipeline.quiet()
    args = parse_args(argv)
    try:
        settings = resolve(args)
        trainer_config = settings.trainer.tuned(
            json.loads(artifacts.read_text(args.hyperparameters))) if args.hyperparameters \
            else settings.trainer
        summary = run(args.examples, args.output, trainer_config, settings.ingest,
                      args.distribution, base_model=args.base_model)
    except (UserError, IntegrityError) as e:
        return report_error(e)
    print(json.dumps({k: summary[k] for k in ("replicas", "epochs_run", "best_eval")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
