"""Model quality: the shipped training recipe against the previous one, on data of several sizes.

Data, each split 80/10/10 by the Trainer's usual ExampleGen:
  digits-N    real images from elsewhere: scikit-learn's bundled handwritten digits (UCI, 8x8,
              1,797 images), classes 0-6 as the 7 labels, resized to 48x48 grayscale; N images
              (1,264 is all of classes 0-6)
  faces-N     the project's synthetic faces (pipeline.default_data), N images (4,000 is the
              built-in default data)

Recipes (trainer configs):
  shipped     schemas/trainer.json as it is
  previous    the recipe shipped before: pixels scaled to [0, 1] (not standardised per image),
              momentum-0.99 moving batch-norm statistics, batch 64, constant learning rate 0.001,
              "balanced" class weights, shifts, zooms 10% and rotations 18 degrees, patience 8
              (its ReduceLROnPlateau, which halved the rate after 3 flat epochs, is not
              reproduced)

For each data set, recipe and seed: test accuracy, macro accuracy, worst class, the epoch of the
best eval accuracy and the seconds to reach it, the eval gap between training-mode and inference-
mode batch-norm, and the Evaluator's blessing with the shipped gates (schemas/evaluation.json).

    python bench/quality.py                              # digits-1264, faces-4000; 3 seeds
    python bench/quality.py --data faces-30000 --seeds 1 --epochs 4
    python bench/quality.py --data faces-30000 --first-seed 1 --seeds 2 --epochs 3
"""
import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pipeline  # noqa: E402,E402

pipeline.quiet()  # before TensorFlow loads
from components import evaluator, example_gen, trainer  # noqa: E402
from pipeline import artifacts, default_data  # noqa: E402
from pipeline.config import EvaluationConfig, IngestConfig, TrainerConfig  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
PREVIOUS = {"learning_rate": 0.001, "batch_size": 64, "warmup_epochs": 0, "final_learning_rate_fraction": 1.0,
            "batch_norm_population_images": 0, "class_weight": "balanced",
            "early_stopping": {"monitor": "val_accuracy", "patience": 8},
            "augmentation": {"horizontal_flip": True, "shift": 0.1, "rotation": 0.05, "zoom": 0.1}}


def digits_csv(path: Path, images: int, seed: int) -> Path:
    """scikit-learn's digits 0-6 as FER rows: 48x48, 0-255, Usage drawn 80/10/10 per class."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target < 7
    x, y = digits.images[keep], digits.target[keep]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))[:images]
    x, y = x[order], y[order]
    big = tf.image.resize(x[..., None] * (255 / 16), (48, 48), method="bilinear").numpy()
    pixels = np.clip(np.rint(big), 0, 255).astype(np.uint8).reshape(len(y), -1)
    usage = np.empty(len(y), object)
    for label in range(7):  # stratified, so every split holds every class
        members = np.flatnonzero(y == label)
        cut = np.cumsum([round(len(members) * 0.8), round(len(members) * 0.1)])
        for part, name in zip(np.split(members, cut), ("Training", "PublicTest", "PrivateTest")):
            usage[part] = name
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for label, row, split in zip(y, pixels, usage):
            f.write(f"{label},{' '.join(map(str, row))},{split}\n")
    return path


def examples_for(name: str) -> str:
    """ExampleGen's output for "digits-N" or "faces-N" ("faces-N-sS": drawn with seed S), made
    once under bench/.cache/."""
    kind, images, *seed = name.split("-")
    seed = int(seed[0][1:]) if seed else 0
    out = CACHE / f"quality_examples_{name}"
    if not artifacts.is_complete(out):
        CACHE.mkdir(parents=True, exist_ok=True)
        csv = CACHE / f"quality_{name}.csv"
        if kind == "digits":
            digits_csv(csv, int(images), seed)
        else:
            default_data.write_csv(csv, int(images), seed)
        example_gen.run(str(csv), str(out), IngestConfig.load(), [])
        artifacts.mark_complete(out)
    return str(out)


def measure(examples: str, config: TrainerConfig, base_model: str | None = None,
            serving: str | None = None) -> dict:
    """Train (from base_model's weights if given), then evaluate with the shipped gates, against
    the serving model if given."""
    ingest = IngestConfig.load()
    gates = EvaluationConfig.load(ingest.classes, ingest.splits)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        summary = trainer.run(examples, f"{work}/trainer", config, ingest, base_model=base_model)
        seconds = time.perf_counter() - started
        result = evaluator.run(summary["serving_model"], examples, f"{work}/evaluator", gates,
                               ingest.classes, serving)
    values = result["metrics"]["candidate"]
    per_class = {name: v for name, v in values["class_accuracy"].items() if v is not None}
    gap = summary["batch_norm_gap"]
    return {
        "accuracy": values["accuracy"], "macro": values["macro_accuracy"],
        "worst_class": min(per_class, key=per_class.get),
        "worst": min(per_class.values()),
        "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
        "seconds_to_best": round(seconds * summary["best_epoch"] / summary["epochs_run"], 1),
        "gap": gap and gap["gap"], "blessed": result["blessed"], "reasons": result["reasons"],
        "serving_accuracy": serving and result["metrics"]["baseline"]["accuracy"],
    }


@contextlib.contextmanager
def previous_input(active: bool):
    """The previous recipe's model input: pixels scaled to [0, 1], not standardised per image."""
    from tf_keras import layers

    from components import model

    standardize = model.StandardizeImage
    if active:
        model.StandardizeImage = lambda name: layers.Rescaling(1 / 255, name=name)
    try:
        yield
    finally:
        model.StandardizeImage = standardize


def warm_start(span: str, seeds: int) -> list[dict]:
    """Scheduled retraining through the front door: the default run (`python -m pipeline.run`,
    built-in data) serves; a new span (e.g. faces-600-s1) is dropped as span-YYYYMMDD/ and
    `pipeline.run --data drops --spans 1` runs in the same pipeline root, validation and gates
    included, fine-tuning the serving model (warm) or with --from-scratch; each trial against a
    fresh copy of the serving directory, so each is judged against the default run's model."""
    import shutil

    base = CACHE / "quality_default_run"
    kind, images, *seed = span.split("-")
    drops = base / f"drops-{span}"
    if not (base / "serving" / "fer" / "1").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        _front_door(base, [], "serving")
    if not drops.exists():
        default_data.write_csv(drops / "span-20261201" / "faces.csv", int(images),
                               int(seed[0][1:]) if seed else 1)
    rows = []
    print(f"\nWarm start through pipeline.run: the default run's model serves; new span {span}")
    print("| start | seed | outcome | test examples (runs) | test acc | serving model's | "
          "macro | not judged | reasons |")
    print("|---|---|---|---|---|---|---|---|---|")
    for trial in range(seeds):
        for start in ("scratch", "warm"):
            with tempfile.TemporaryDirectory() as work:
                serving = Path(work) / "serving"
                shutil.copytree(base / "serving", serving)
                config = Path(work) / "trainer.json"
                config.write_text(json.dumps({**json.loads(
                    (Path(__file__).resolve().parent.parent / "schemas" / "trainer.json")
                    .read_text()), "seed": trial}))
                result = _front_door(base, ["--data", str(drops), "--spans", "1",
                                            "--trainer-config", str(config),
                                            *(["--from-scratch"] if start == "scratch" else [])],
                                     str(serving), check=False)
            if result.returncode:
                outcome = "stopped: " + " ".join(result.stderr.split())[:300]
                rows.append({"data": span, "start": start, "seed": trial, "outcome": outcome})
                print(f"| {start} | {trial} | {outcome} | | | | | | |", flush=True)
                continue
            newest = max((base / "root" / "Evaluator").iterdir(), key=lambda p: int(p.name))
            evaluation = json.loads((newest / "evaluation.json").read_text())
            outcome = "BLESSED" if evaluation["blessed"] else "NOT BLESSED"
            rows.append({"data": span, "start": start, "seed": trial, "outcome": outcome,
                         "evaluation": evaluation})
            values = evaluation["metrics"]
            print(f"| {start} | {trial} | {outcome} | {evaluation['examples']} "
                  f"({len(evaluation['examples_from'])}) | "
                  f"{values['candidate']['accuracy']:.3f} | "
                  f"{values['baseline']['accuracy']:.3f} | "
                  f"{values['candidate']['macro_accuracy'] or 0:.3f} | "
                  f"{', '.join(evaluation['not_judged']) or '-'} | "
                  f"{'; '.join(evaluation['reasons']) or '-'} |", flush=True)
    return rows


def _front_door(folder: Path, flags: list[str], serving: str, check: bool = True):
    import subprocess

    result = subprocess.run([sys.executable, "-m", "pipeline.run", "--runner=DirectRunner",
                             "--pipeline-root", "root", "--serving-dir", serving, *flags],
                            cwd=folder, capture_output=True, text=True, timeout=3600)
    if check and result.returncode:
        raise SystemExit(f"pipeline.run {' '.join(flags)} failed:\n{result.stderr[-3000:]}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="*", default=["digits-1264", "faces-4000"])
    parser.add_argument("--recipes", nargs="+", default=["previous", "shipped"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--epochs", type=int, help="epoch budget (default: the recipe's; the "
                        "built-in data's own budget from schemas/default_data.json for faces-4000)")
    parser.add_argument("--warm-start", metavar="SPAN", help="also: the default run's model "
                        "serves; a new span (e.g. faces-600-s1) is run through pipeline.run, "
                        "from scratch and from the serving model, gated against it")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    from pipeline.config import load_json

    rows = []
    print("| data | recipe | seed | test acc | macro | worst class | best epoch / run | "
          "s to best | BN gap | blessed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data in args.data:
        examples = examples_for(data)
        budget = args.epochs or (load_json("default_data.json")["epochs"]
                                 if data == "faces-4000" else None)
        for recipe in args.recipes:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                changes = {**(PREVIOUS if recipe == "previous" else {}), "seed": seed}
                if budget:
                    changes["epochs"] = budget
                config = dataclasses.replace(TrainerConfig.load(), **changes)
                with previous_input(recipe == "previous"):
                    row = {"data": data, "recipe": recipe, "seed": seed,
                           **measure(examples, config)}
                rows.append(row)
                print(f"| {data} | {recipe} | {seed} | {row['accuracy']:.3f} | "
                      f"{row['macro']:.3f} | {row['worst_class']} {row['worst']:.3f} | "
                      f"{row['best_epoch']} / {row['epochs_run']} | {row['seconds_to_best']} | "
                      f"{row['gap'] if row['gap'] is not None else '-'} | "
                      f"{'yes' if row['blessed'] else 'no'} |", flush=True)
    if args.warm_start:
        rows += warm_start(args.warm_start, args.seeds)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
