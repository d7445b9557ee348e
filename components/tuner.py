"""Tuner: search the Trainer's hyperparameters before training (TFX's Tuner component).

Each trial trains the CNN with the Trainer itself (same tf.data input, batch-norm statistics,
schedule and class weights) for epochs_per_trial epochs and is scored by its best eval accuracy;
Optuna's TPE sampler, seeded by the Trainer's seed, proposes the next setting from those scored.
Optuna rather than KerasTuner: KerasTuner 1.4 drives Keras 3 whenever Keras 3 is installed
(keras_tuner.backend), while this model is tf_keras; Optuna only proposes numbers, so the trial
is exactly the Trainer's training.

Output layout (output_dir):
    best_hyperparameters.json   what the Trainer applies on top of its config
    trials.json                 every trial: its values, best eval accuracy and epochs
"""
import dataclasses
import json

from components import trainer
from pipeline import artifacts
from pipeline.artifact_types import HYPERPARAMETERS
from pipeline.config import IngestConfig, TrainerConfig, TunerConfig


def run(examples_dir: str, output_dir: str, config: TrainerConfig, ingest: IngestConfig,
        search: TunerConfig, trials: int) -> dict:
    """Run `trials` trials; returns the best hyperparameters, their score and every trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=config.seed))
    done = []

    def objective(trial: optuna.Trial) -> float:
        values = {name: _suggest(trial, name, spec) for name, spec in search.parameters.items()}
        print(f"Tuner: trial {trial.number + 1}/{trials}: {values}", flush=True)
        folder = artifacts.join(output_dir, f"trial-{trial.number}")
        summary = trainer.run(examples_dir, folder, dataclasses.replace(
            config.tuned(values), epochs=search.epochs_per_trial), ingest, export=False)
        artifacts.remove(folder)  # the trial's model is not used: its score is
        score = summary["best_eval"]["val_accuracy"]
        done.append({"number": trial.number, "values": values, "val_accuracy": score,
                     "best_epoch": summary["best_epoch"]})
        return score

    study.optimize(objective, n_trials=trials)
    result = {"best_hyperparameters": study.best_trial.params, "best_value": study.best_value,
              "epochs_per_trial": search.epochs_per_trial, "trials": done}
    artifacts.write_text(HYPERPARAMETERS.path(output_dir, "trials"), json.dumps(done, indent=2))
    artifacts.write_text(HYPERPARAMETERS.path(output_dir, "best"),
                         json.dumps(study.best_trial.params, indent=2))
    return result


def _suggest(trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if isinstance(spec["low"], int) and isinstance(spec["high"], int):
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
