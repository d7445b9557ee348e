"""Ask a trained or serving model what expression each face shows.

    python -m pipeline.predict --model DIR INPUT [INPUT ...]

DIR is a SavedModel folder (a Trainer's serving_model, or one version under the serving
directory) or a model's folder in the serving directory (<serving-dir>/<model_name>), whose
newest version is used. INPUT is a PNG, JPEG, GIF or BMP of any size, made 48x48 grayscale (the
face should fill the picture, as in FER2013), or a FER CSV with a pixels column (other columns are
ignored). One line per face: the emotion, its probability, then every class's probability.
"""
import argparse
import csv
import sys
from pathlib import Path

from pipeline import serving
from pipeline.errors import UserError, report_error

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")
    args = parser.parse_args(argv)
    try:
        model = _load(Path(args.model))
        for path in map(Path, args.inputs):
            for source, answer in _predict(model, path):
                print(_line(source, answer))
    except UserError as e:
        return report_error(e)
    return 0


def _load(path: Path):
    if not (path / "saved_model.pb").is_file():
        newest = serving.latest(path.parent, path.name)
        if newest is None:
            raise UserError(f"{path} is neither a SavedModel (no saved_model.pb) nor a model "
                            f"folder of a serving directory with a version in it. Pass a "
                            f"Trainer's serving_model folder or <serving-dir>/<model_name>.")
        path = newest
    return serving.load(path)


def _predict(model, path: Path):
    import tensorflow as tf

    if not path.is_file():
        raise UserError(f"Input {path} does not exist or is not a file.")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        try:
            image = tf.io.decode_image(path.read_bytes(), channels=1, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise UserError(f"{path} is not a readable PNG, JPEG, GIF or BMP image.") from None
        face = tf.image.resize(image, (48, 48), antialias=True)
        face = tf.cast(tf.clip_by_value(tf.round(face), 0, 255), tf.uint8)[tf.newaxis]
        yield str(path), model.signatures["serve_images"](images=face)
        return
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    if not rows or "pixels" not in rows[0]:
        raise UserError(f"{path} is neither an image (by its name) nor a CSV with a 'pixels' "
                        f"column. Pass a .png/.jpg image or a FER CSV.")
    for number, row in enumerate(rows, start=2):
        try:
            answer = model.signatures["serve_pixels"](pixels=tf.constant([row["pixels"] or ""]))
        except (tf.errors.InvalidArgumentError, ValueError):
            raise UserError(f"{path}, line {number}: the pixels must be 2304 whole numbers from "
                            f"0 to 255, separated by spaces.") from None
        yield f"{path}:{number}", answer


def _line(source: str, answer) -> str:
    probabilities = answer["probabilities"].numpy()[0]
    name = answer["class_name"].numpy()[0].decode()
    best = probabilities.max()
    return f"{source}  {name} {best:.2f}  | " + " ".join(
        f"{c} {p:.2f}" for c, p in zip(_classes(), probabilities))


def _classes():
    from pipeline.config import IngestConfig
    return IngestConfig.load().classes


if __name__ == "__main__":
    sys.exit(main())
