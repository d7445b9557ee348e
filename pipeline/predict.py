"""Ask a trained or serving model what expression each face shows.

    python -m pipeline.predict --model DIR [--no-detect] [--json] [--annotate OUT] INPUT [...]

DIR is a SavedModel folder (a Trainer's serving_model, or one version under the serving
directory) or a model's folder in the serving directory (<serving-dir>/<model_name>), whose
newest version is used. INPUT is a photo (PNG, JPEG, GIF or BMP, any size) or a FER CSV with a
pixels column (other columns are ignored).

In a photo every frontal face is found (pipeline.faces), levelled, cut out and made 48x48 as
FER2013's faces are; one line per face gives its box, the emotion and its probability, then every
class's probability. A photo without a face says so, and no emotion is invented. --no-detect
takes the whole picture as the face, for pictures that are already FER crops. --json prints one
JSON object per input instead; --annotate draws the boxes and labels into a PNG (OUT for one
photo, a folder for several).
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import pipeline
from pipeline import serving
from pipeline.errors import UserError, report_error

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp"}


def main(argv=None) -> int:
    pipeline.quiet()
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR")
    parser.add_argument("--no-detect", action="store_true",
                        help="the whole picture is the face (already a FER-style crop)")
    parser.add_argument("--json", action="store_true", help="one JSON object per input")
    parser.add_argument("--annotate", metavar="OUT",
                        help="draw each face's box and emotion: a PNG for one photo, else a "
                             "folder that gets one PNG per photo")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")
    args = parser.parse_args(argv)
    try:
        model = _load(Path(args.model))
        classes = _classes(model)
        photos = [p for p in map(Path, args.inputs) if p.suffix.lower() in _IMAGE_SUFFIXES]
        for path in map(Path, args.inputs):
            if not path.is_file():
                raise UserError(f"Input {path} does not exist or is not a file.")
            photo = _read_gray(path) if path in photos else None  # decoded once
            found = [_face(where, box, answer, classes) for where, box, answer
                     in _predict(model, path, photo, detect=not args.no_detect)]
            if photo is not None and args.annotate:
                _annotate(photo, found, _annotation_path(Path(args.annotate), path, photos))
            _print(path, photo, found, args.json)
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


def _predict(model, path: Path, photo, detect: bool):
    """(where, box or None, the model's answer) for each face of a photo (decoded: `photo`) or
    row of a CSV."""
    import tensorflow as tf

    if photo is not None:
        if not detect:
            face = tf.image.resize(photo[..., None], (48, 48), antialias=True)
            face = tf.cast(tf.clip_by_value(tf.round(face), 0, 255), tf.uint8)[tf.newaxis]
            yield str(path), None, model.signatures["serve_images"](images=face)
            return
        from pipeline import faces

        for face in faces.find(photo):
            yield str(path), face.box, model.signatures["serve_images"](
                images=tf.constant(face.crop[None, ..., None]))
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
        yield f"{path}:{number}", None, answer


def _read_gray(path: Path):
    import tensorflow as tf

    try:
        image = tf.io.decode_image(path.read_bytes(), channels=1, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        raise UserError(f"{path} is not a readable PNG, JPEG, GIF or BMP image.") from None
    return image.numpy()[..., 0]


def _face(where: str, box, answer, classes) -> dict:
    """One answer as it is printed, drawn and written as JSON."""
    probabilities = answer["probabilities"].numpy()[0]
    name = answer["class_name"].numpy()[0].decode()
    scores = {c: round(float(p), 4) for c, p in zip(classes, probabilities)}
    return {"where": where, "box": box, "emotion": name, "probability": scores[name],
            "probabilities": scores}


def _print(path: Path, photo, found: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"input": str(path), "faces": found}))
        return
    if not found:
        # A picture about the size of a FER crop is likely one: say how to classify it whole.
        crop = photo is not None and max(photo.shape) <= 96
        print(f"{path}  no face found" + (" (a picture that is already a face crop, like "
                                          "FER2013's 48x48 ones: pass --no-detect)" if crop
                                          else ""))
    for face in found:
        box = "" if face["box"] is None else " face at x={} y={} w={} h={}".format(*face["box"])
        print(f"{face['where']}{box}  {face['emotion']} {face['probability']:.2f}  | "
              + " ".join(f"{c} {p:.2f}" for c, p in face["probabilities"].items()))


def _annotation_path(out: Path, photo: Path, photos: list[Path]) -> Path:
    if len(photos) == 1 and out.suffix.lower() == ".png":
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{photo.stem}.png"


def _annotate(photo, found: list[dict], out: Path) -> None:
    """The photo with a box and "Emotion 0.87" drawn for each face found."""
    import cv2

    picture = cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)
    thick = max(1, round(max(picture.shape[:2]) / 300))
    for face in found:
        if face["box"] is None:
            continue
        x, y, w, h = face["box"]
        cv2.rectangle(picture, (x, y), (x + w, y + h), (0, 200, 0), thick)
        cv2.putText(picture, f"{face['emotion']} {face['probability']:.2f}",
                    (x, max(12, y - 4 * thick)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 200, 0), thick, cv2.LINE_AA)
    if not cv2.imwrite(str(out), picture):
        raise UserError(f"Cannot write the annotated picture {out}. Pass --annotate a path "
                        f"ending in .png in a folder that exists and can be written.")


def _classes(model) -> tuple[str, ...]:
    """The class names the model carries (every model this pipeline exports); the shipped
    ingestion config's for a model from before they were carried."""
    if hasattr(model, "class_names"):
        return tuple(name.decode() for name in model.class_names.numpy())
    from pipeline.config import IngestConfig
    return IngestConfig.load().classes


if __name__ == "__main__":
    sys.exit(main())
