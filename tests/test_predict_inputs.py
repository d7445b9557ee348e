"""What pipeline.predict reads: FER CSVs by ExampleGen's rules (gzip by content, any header case
and order, quoted fields), photos in every common format, upright by their EXIF orientation and
bounded in size from their header; a file it cannot read costs only its own answer. The model is
the known model of test_evaluator: it answers class pixels[1] mod 7 of what it is given."""
import gzip
import json
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import predict as predict_module
from tests.helpers import pixels_for, write_csv
from tests.test_evaluator import CLASSES, known_model
from tests.test_predict_faces import HER_FACE, PORTRAIT, overlap


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return known_model(tmp_path_factory.mktemp("predict_inputs") / "model")


@pytest.fixture
def predict(capsys):
    """The command's main() in this process: (exit code, stdout, stderr on one line)."""
    def run(model, *args):
        capsys.readouterr()
        code = predict_module.main(["--model", str(model), *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, " ".join(err.split())  # as said, not as wrapped to the terminal
    return run


def answers(out: str) -> list[dict]:
    return [json.loads(line) for line in out.strip().splitlines()]


def emotion_of(pixels) -> str:
    return CLASSES[int(np.asarray(pixels).reshape(-1)[1]) % 7]


def row(i: int) -> str:
    return " ".join(map(str, pixels_for(i)))


USED = [f"3,{row(1)},Training", f"1,{row(2)},PublicTest"]


@pytest.mark.parametrize("name, header, lines, gzipped", [
    ("faces.csv.gz", "emotion,pixels,Usage", USED, True),
    ("gzip_without_suffix.csv", "emotion,pixels", [f"3,{row(1)}", f"1,{row(2)}"], True),
    ("upper.csv", "Emotion,Pixels,Usage", USED, False),  # with a byte-order mark
    ("reordered.csv", "pixels,emotion", [f'"{row(1)}",3', f'"{row(2)}", 1'], False),
    ("unlabelled.csv", "Usage,Pixels", [f"Training,{row(1)}", "", f"PublicTest,{row(2)}"], False),
])
def test_a_csv_is_read_by_the_ingestion_rules(model, tmp_path, predict, name, header, lines,
                                              gzipped):
    path = write_csv(tmp_path / name, lines, header=header, bom=name == "upper.csv")
    if gzipped and not name.endswith(".gz"):
        path.write_bytes(gzip.compress(path.read_bytes()))
    code, out, err = predict(model, "--json", path)
    assert code == 0, err
    [result] = answers(out)
    assert result["input"] == str(path) and "errors" not in result
    numbers = [2, 4] if "" in lines else [2, 3]
    assert [f["where"] for f in result["faces"]] == [f"{path}:{n}" for n in numbers]
    assert [f["emotion"] for f in result["faces"]] == [emotion_of(pixels_for(i)) for i in (1, 2)]
    assert all(f["box"] is None for f in result["faces"])


def test_bad_rows_are_reported_and_the_others_answered(model, tmp_path, predict):
    path = write_csv(tmp_path / "mixed.csv", [
        f"3,{row(1)},Training",
        f"3,{row(2)},Training,extra",
        f"3,{' '.join(['7'] * 2303)},Training",
        f"1,{row(3)},PublicTest",
    ])
    code, out, err = predict(model, "--json", path)
    assert code == 2
    [result] = answers(out)
    assert [f["where"] for f in result["faces"]] == [f"{path}:2", f"{path}:5"]
    assert [e["where"] for e in result["errors"]] == [f"{path}:3", f"{path}:4"]
    assert "expected 3 fields (emotion,pixels,Usage), found 4" in result["errors"][0]["error"]
    assert "found 2303 pixel values, expected 2304 (48x48)" in result["errors"][1]["error"]
    assert err.count("error: ") == 2 and f"{path}, line 3 was not classified" in err


def tiny_png(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with almost no image data: what a decoder
    would allocate is never paid for unless it decodes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b""))


def test_a_huge_photo_is_refused_from_its_header_and_the_others_answered(model, tmp_path,
                                                                          predict):
    huge = tmp_path / "huge.png"
    huge.write_bytes(tiny_png(20000, 20000))  # 400 megapixels: 400 MB gray, 1.2 GB in colour
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), pixels_for(4).reshape(48, 48).astype(np.uint8))
    code, out, err = predict(model, "--json", "--no-detect", huge, crop)
    assert code == 2
    refused, answered = answers(out)
    [error] = refused["errors"]
    assert refused["faces"] == [] and error["where"] == str(huge)
    assert "is 20,000x20,000 pixels (400 megapixels), more than the 50,000,000" in error["error"]
    assert "--max-pixels" in error["error"] and err.startswith(f"error: {huge} is 20,000x20,000")
    assert [f["emotion"] for f in answered["faces"]] == [emotion_of(pixels_for(4))]
    # The limit is the flag's.
    code, out, err = predict(model, "--no-detect", "--max-pixels", "2000", crop)
    assert code == 2 and "48x48 pixels" in err and "more than the 2,000" in err and not out


def formats(tmp_path) -> dict:
    """The same 48x48 face in every format predict reads (lossless where the format allows)."""
    face = pixels_for(5).reshape(48, 48).astype(np.uint8)
    gray = Image.fromarray(face)
    colour = Image.fromarray(np.stack([face, face, face], axis=2))
    saved = {
        "face.gif": (gray, {}), "face.bmp": (gray, {}), "face.tiff": (gray, {}),
        "face.webp": (colour, {"lossless": True}), "rgb.tif": (colour, {}),
        "face16.png": (Image.fromarray(face.astype(np.uint16) << 8), {}),
        "cmyk.jpg": (colour.convert("CMYK"), {"quality": 100}),
        "palette.png": (colour.quantize(256), {}),
    }
    paths = {}
    for name, (image, options) in saved.items():
        image.save(tmp_path / name, **options)
        paths[name] = tmp_path / name
    return face, paths


def test_every_common_format_is_decoded(model, tmp_path, predict):
    face, paths = formats(tmp_path)
    code, out, err = predict(model, "--json", "--no-detect", *paths.values())
    assert code == 0, err
    assert len(answers(out)) == len(paths)
    exact = [r["faces"][0]["emotion"] for r in answers(out)
             if not r["input"].endswith(("cmyk.jpg", "palette.png"))]
    assert exact == [emotion_of(face)] * (len(paths) - 2)
    for name, path in paths.items():  # what the model was given
        gray = predict_module._read_photo(path, predict_module.MAX_PIXELS, colour=False).gray
        assert gray.shape == (48, 48) and gray.dtype == np.uint8, name
        most = 3 if name in ("cmyk.jpg", "palette.png") else 0  # JPEG; a 256-colour palette
        assert np.abs(gray.astype(int) - face).max() <= most, name


def test_a_file_predict_cannot_read_is_one_sentence_and_exit_2(model, tmp_path, predict):
    jpeg = open(PORTRAIT, "rb").read()
    bad = {
        "noise.dat": bytes(range(256)) * 8,
        "cut.jpg": jpeg[:len(jpeg) // 3],
        "text.png": b"emotion,pixels\n",
        "faces.zip": b"PK\x03\x04" + b"\x00" * 100,
        "missing.csv": None,
    }
    for name, data in bad.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        code, out, err = predict(model, tmp_path / name)
        assert code == 2 and not out, name
        assert err.startswith(f"error: {tmp_path / name} ") or err.startswith(
            f"error: Input {tmp_path / name} "), err
        assert err.count("error:") == 1 and err.endswith("."), err


def test_the_command_answers_what_it_can_read(model, tmp_path):
    """Through the front door: a gzipped CSV is answered beside files that cannot be read."""
    good = write_csv(tmp_path / "faces.csv.gz", [f"2,{row(6)},Training"])
    (tmp_path / "noise.dat").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "cut.jpg").write_bytes(open(PORTRAIT, "rb").read()[:5000])
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", "--model", str(model),
         str(tmp_path / "noise.dat"), str(good), str(tmp_path / "cut.jpg")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == f"{good}:2  {emotion_of(pixels_for(6))} 0.35  | " + " ".join(
        f"{c} {0.35 if c == emotion_of(pixels_for(6)) else 0.65 / 6:.2f}" for c in CLASSES) + "\n"
    assert result.stderr.count("error: ") == 2 and "Traceback" not in result.stderr


def test_a_photo_stored_sideways_is_turned_upright_and_annotated_in_colour(model, tmp_path,
                                                                          predict):
    upright = Image.open(PORTRAIT)
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    sideways.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    code, out, err = predict(model, "--json", "--annotate", tmp_path / "drawn.png",
                             tmp_path / "phone.jpg")
    assert code == 0, err
    [face] = answers(out)[0]["faces"]
    assert overlap(face["box"], HER_FACE) > 0.6
    drawn = cv2.imread(str(tmp_path / "drawn.png"))
    photo = cv2.imread(str(PORTRAIT))
    assert drawn.shape == photo.shape  # upright, in colour
    x, y, w, h = face["box"]
    inside = (slice(y + h // 4, y + h * 3 // 4), slice(x + w // 4, x + w * 3 // 4))
    assert np.abs(drawn[inside].astype(int) - photo[inside]).mean() < 4
    assert np.abs(drawn[..., 2].astype(int) - drawn[..., 0]).mean() > 5  # not gray
