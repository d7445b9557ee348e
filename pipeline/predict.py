"""Ask a trained or serving model what expression each face shows.

    python -m pipeline.predict --model DIR [--no-detect] [--json] [--annotate OUT]
                               [--max-pixels N] INPUT [...]

DIR is a SavedModel folder (a Trainer's serving_model, or one version under the serving
directory) or a model's folder in the serving directory (<serving-dir>/<model_name>), whose
newest version is used. INPUT is a photo (PNG, JPEG, GIF, BMP, WebP or TIFF, told by its content
or name) or a FER CSV with a pixels column, plain or gzip-compressed (.csv.gz), read by the rules
ExampleGen reads training data by (any header case and column order, quoted fields); other
columns are ignored.

In a photo every frontal face is found (pipeline.faces), levelled, cut out and made 48x48 as
FER2013's faces are; one line per face gives its box, the emotion and its probability, then every
class's probability. A photo is turned upright as its EXIF orientation says, and one of more
than --max-pixels pixels (default 50 megapixels) is refused from its header, before it is
decoded. A photo without a face says so, and no emotion is invented. --no-detect takes the whole
picture as the face, for pictures that are already FER crops. --json prints one JSON object per
input instead; --annotate draws the boxes and labels into a colour copy of each photo, a PNG (OUT
for one photo, a folder for several).

An input that cannot be read, or a CSV row that is not a valid face, is reported on stderr in one
sentence (and under "errors" in the JSON) and the other inputs and rows are still answered; the
exit code is then 2.
"""
import argparse
import codecs
import contextlib
import dataclasses
import json
import sys
import typing
from pathlib import Path

import numpy as np

import pipeline
from pipeline import serving
from pipeline.errors import UserError, report_error

MAX_PIXELS = 50_000_000  # a 50-megapixel photo; face detection needs about 55 bytes a pixel
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
                b"II*\x00", b"MM\x00*")
_FORMATS = "PNG, JPEG, GIF, BMP, WebP or TIFF"
_BATCH = 256  # CSV rows a model call
_ROW_ERRORS_SHOWN = 5  # a CSV's bad rows told on stderr, each; the JSON holds them all


class Photo(typing.NamedTuple):
    gray: np.ndarray            # what faces are found in and cut from: uint8 [height, width]
    colour: np.ndarray | None   # BGR uint8 [height, width, 3] (--annotate only), upright too


def main(argv=None) -> int:
    pipeline.quiet()
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR")
    parser.add_argument("--no-detect", action="store_true",
                        help="the whole picture is the face (already a FER-style crop)")
    parser.add_argument("--json", action="store_true", help="one JSON object per input")
    parser.add_argument("--annotate", metavar="OUT",
                        help="draw each face's box and emotion into a colour copy of the photo: "
                             "a PNG for one photo, else a folder that gets one PNG per photo")
    parser.add_argument("--max-pixels", type=_pixel_count, default=MAX_PIXELS, metavar="N",
                        help=f"refuse a photo of more than N pixels, from its header, before it "
                             f"is decoded (default {MAX_PIXELS:,}: 50 megapixels; face "
                             f"detection needs about 55 bytes a pixel)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")
    args = parser.parse_args(argv)
    try:
        model = _load(Path(args.model))
    except UserError as e:
        return report_error(e)
    classes, size = _classes(model), _image_size(model)
    inputs = list(map(Path, args.inputs))
    photos = [p for p in inputs if _is_image(p)]
    failed = False
    for path in inputs:
        found, errors, photo = [], [], None
        try:
            if not path.is_file():
                raise UserError(f"Input {path} does not exist or is not a file. Check the path.")
            if path in photos:
                photo = _read_photo(path, args.max_pixels, colour=bool(args.annotate))
                found = _photo_faces(model, path, photo, classes, size, not args.no_detect)
                if args.annotate:
                    _annotate(photo.colour, found,
                              _annotation_path(Path(args.annotate), path, photos))
            else:  # answers and errors are kept up to a fault that stops the reading
                _csv_faces(model, path, classes, size, found, errors)
        except UserError as e:
            errors.append({"where": str(path), "error": str(e)})
            report_error(e)
        failed = failed or bool(errors)
        _print(path, photo, found, errors, args.json)
    return 2 if failed else 0


def _pixel_count(text: str) -> int:
    try:
        value = int(text.replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels (a whole number "
                                         f"above 0, e.g. 100000000 for 100 megapixels)")
    return value


def _load(path: Path):
    if not (path / "saved_model.pb").is_file():
        newest = serving.latest(path.parent, path.name)
        if newest is None:
            raise UserError(f"{path} is neither a SavedModel (no saved_model.pb) nor a model "
                            f"folder of a serving directory with a version in it. Pass a "
                            f"Trainer's serving_model folder or <serving-dir>/<model_name>.")
        path = newest
    return serving.load(path)


def _is_image(path: Path) -> bool:
    """A photo by its name or its first bytes; anything else is read as a CSV."""
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False  # reported when the input is read
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@contextlib.contextmanager
def _own_pixel_limit():
    """Pillow's decompression-bomb guard off: --max-pixels is the limit, and it says how to
    change it (Pillow's refuses above twice its own, whatever --max-pixels allows)."""
    from PIL import Image

    kept, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = kept


def _read_photo(path: Path, max_pixels: int, colour: bool) -> Photo:
    """The photo upright (EXIF orientation), in grayscale, and in colour when asked for. Its size
    is checked against max_pixels from the header, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    with _own_pixel_limit():
        try:
            image = Image.open(path)  # reads the header only
        except Exception as e:  # UnidentifiedImageError, or a header Pillow cannot parse
            why = "" if isinstance(e, UnidentifiedImageError) else f" ({_why(e)})"
            raise UserError(f"{path} is not an image predict can read{why}: it reads {_FORMATS} "
                            f"files. Convert it to one of these, or pass the right file.") from None
        with image:
            mode, (width, height) = image.mode, image.size
            if width * height > max_pixels:
                raise UserError(
                    f"{path} is {width:,}x{height:,} pixels ({width * height / 1e6:,.0f} "
                    f"megapixels), more than the {max_pixels:,} pixels predict reads "
                    f"(--max-pixels): pass a smaller copy, or raise --max-pixels if this machine "
                    f"has about 55 bytes of memory a pixel for the face detection.")
            try:
                gray = _gray(image)
            except Exception as e:  # truncated or damaged data; Pillow raises many kinds
                raise UserError(f"{path} cannot be decoded ({_why(e)}): the {image.format} file "
                                f"is damaged or incomplete. Pass a complete copy.") from None
        if not colour:
            return Photo(gray, None)
        if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16"):
            return Photo(gray, np.repeat(gray[..., None], 3, axis=2))
        from PIL import ImageOps

        with Image.open(path) as again:
            rgb = np.asarray(ImageOps.exif_transpose(again).convert("RGB"))
        return Photo(gray, np.ascontiguousarray(rgb[..., ::-1]))


def _gray(image) -> np.ndarray:
    """An opened (not yet decoded) image as upright 8-bit grayscale. A colour JPEG is decoded
    straight to its luminance by libjpeg, as OpenCV's and most readers' grayscale is; other
    colour images are decoded in colour, then weighted as ITU-R 601 luma (R 0.299, G 0.587,
    B 0.114); 16-bit images keep their top 8 bits."""
    from PIL import ImageOps

    if image.format == "JPEG":
        image.draft("L", None)  # a YCbCr JPEG only; CMYK and grayscale ones stay as they are
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        return (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
    if image.mode == "F":
        return np.clip(np.round(np.asarray(image)), 0, 255).astype(np.uint8)
    if image.mode != "L":
        image = image.convert("RGB").convert("L")  # CMYK, P, RGBA ...: colour first
    return np.asarray(image)


def _why(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _photo_faces(model, path: Path, photo: Photo, classes, size: int, detect: bool
                 ) -> list[dict]:
    """The answer for each face of a photo (the whole picture with detect=False)."""
    import cv2

    if not detect:
        import tensorflow as tf

        face = tf.image.resize(photo.gray[..., None], (size, size), antialias=True)
        face = tf.cast(tf.clip_by_value(tf.round(face), 0, 255), tf.uint8).numpy()
        return _answers(model, [(str(path), None)], face[None], classes)
    from pipeline import faces

    found = faces.find(photo.gray)
    crops = [f.crop if f.crop.shape[0] == size else
             cv2.resize(f.crop, (size, size), interpolation=cv2.INTER_AREA) for f in found]
    return _answers(model, [(str(path), f.box) for f in found],
                    np.array(crops, np.uint8).reshape(-1, size, size, 1), classes)


def _csv_faces(model, path: Path, classes, size: int, found: list, errors: list) -> None:
    """Add to `found` the answer for each valid row of a FER CSV, to `errors` an error for each
    invalid one, read as ExampleGen reads rows (pipeline.fer_csv)."""
    from pipeline import fer_csv
    from pipeline.config import IngestConfig

    _refuse_binary(path)
    config = dataclasses.replace(IngestConfig.load(), image_size=size)
    try:
        rows = fer_csv.read_pixel_rows(str(path), config)  # its header is read here
    except UserError as e:
        if path.name.lower().endswith((".csv", ".csv.gz")):
            raise
        # Not named as a CSV either: say that it was read as one, the reader's reason after.
        why = str(e)[len(str(path)):].strip() if str(e).startswith(str(path)) else str(e)
        raise UserError(f"{path} is neither an image predict can read ({_FORMATS}) nor a FER "
                        f"CSV: it {why}") from None
    batch = []
    try:
        for number, row in rows:
            where = f"{path}:{number}"
            if isinstance(row, str):
                error = (f"{path}, line {number} was not classified: {row} (a row has one "
                         f"field per header column, its {config.pixels_column} "
                         f"{config.n_pixels} whole numbers from 0 to 255 separated by spaces).")
                errors.append({"where": where, "error": error})
                if len(errors) <= _ROW_ERRORS_SHOWN:
                    report_error(UserError(error))
                continue
            batch.append((where, row))
            if len(batch) == _BATCH:
                found += _rows_answered(model, batch, classes, size)
                batch = []
    finally:  # the rows read before a damaged part are answered too
        found += _rows_answered(model, batch, classes, size)
    if len(errors) > _ROW_ERRORS_SHOWN:
        report_error(UserError(f"{path}: {len(errors) - _ROW_ERRORS_SHOWN:,} more rows were not "
                               f"classified ({len(errors):,} in all; --json lists each)."))


def _refuse_binary(path: Path) -> None:
    """A file that is neither a photo (by name or content) nor text nor gzip: one sentence that
    names both kinds of input, rather than the CSV reader's."""
    from pipeline import fer_csv

    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith((fer_csv.GZIP_MAGIC, b"PK", b"\xff\xfe", b"\xfe\xff")):
        return  # gzip, ZIP and UTF-16 files: the CSV reader says what to do with each
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        binary = True
    else:
        binary = b"\x00" in head
    if binary:
        raise UserError(f"{path} is neither an image predict can read ({_FORMATS}) nor a FER "
                        f"CSV (text, plain or gzip-compressed, with a pixels column). Pass a "
                        f"photo in one of these formats or such a CSV.")


def _rows_answered(model, rows: list, classes, size: int) -> list[dict]:
    if not rows:
        return []
    images = np.stack([pixels for _, pixels in rows]).astype(np.uint8)
    return _answers(model, [(where, None) for where, _ in rows],
                    images.reshape(-1, size, size, 1), classes)


def _answers(model, places: list, images: np.ndarray, classes) -> list[dict]:
    """One dict per image, as it is printed, drawn and written as JSON: where (the photo, or
    the CSV's file:line), box (x, y, width, height, or None), the emotion, its probability and
    every class's probability."""
    if not places:
        return []
    import tensorflow as tf

    answer = model.signatures["serve_images"](images=tf.constant(images, tf.uint8))
    answered = []
    for (where, box), probabilities, name in zip(places, answer["probabilities"].numpy(),
                                                 answer["class_name"].numpy()):
        scores = {c: round(float(p), 4) for c, p in zip(classes, probabilities)}
        answered.append({"where": where, "box": box, "emotion": name.decode(),
                         "probability": scores[name.decode()], "probabilities": scores})
    return answered


def _print(path: Path, photo: Photo | None, found: list[dict], errors: list[dict],
           as_json: bool) -> None:
    if as_json:
        print(json.dumps({"input": str(path), "faces": found, **({"errors": errors} if errors
                                                                   else {})}))
        return
    if not found and photo is not None:
        # A picture about the size of a FER crop is likely one: say how to classify it whole.
        crop = max(photo.gray.shape) <= 96
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


def _annotate(colour: np.ndarray, found: list[dict], out: Path) -> None:
    """A copy of the photo (BGR) with a box and "Emotion 0.87" drawn for each face found."""
    import cv2

    picture = colour.copy()
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


def _image_size(model) -> int:
    """The side of the square images the model takes (48 for FER2013's)."""
    _, inputs = model.signatures["serve_images"].structured_input_signature
    return int(inputs["images"].shape[1])


def _classes(model) -> tuple[str, ...]:
    """The class names the model carries (every model this pipeline exports); the shipped
    ingestion config's for a model from before they were carried."""
    if hasattr(model, "class_names"):
        return tuple(name.decode() for name in model.class_names.numpy())
    from pipeline.config import IngestConfig
    return IngestConfig.load().classes


if __name__ == "__main__":
    sys.exit(main())
