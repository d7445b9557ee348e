"""Face-aware predictions on real photos that ship inside a pinned package (matplotlib's sample
data, not made by this project): Grace Hopper's portrait has one face, a photo of a blue pack has
none. The model is the known model of test_evaluator (it answers class pixels[1] mod 7 of what
it is given)."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from matplotlib import cbook

from components import pusher
from pipeline import faces
from pipeline.predict import main as predict_main
from tests.test_evaluator import CLASSES, known_model

PORTRAIT = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
NO_FACE = cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False)
HER_FACE = (160, 110, 215, 215)  # x, y, w, h, marked by hand on the photo


def overlap(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    both = max(width, 0) * max(height, 0)
    return both / (a[2] * a[3] + b[2] * b[3] - both)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    pusher.run(known_model(base / "model"), str(base / "serving"), "fer",
               {"blessed": True, "reasons": []}, str(base))
    return base / "serving" / "fer"


def predict(model, *args):
    """The command as a user runs it: a process of its own."""
    return subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(model),
                           *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def predict_here(capsys):
    """The same command's main() in this process: what it prints and returns, without the few
    seconds a fresh interpreter takes to import TensorFlow (the portrait's test runs the real
    command)."""
    def run(model, *args):
        capsys.readouterr()  # only what this call prints
        returncode = predict_main(["--model", str(model), *map(str, args)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, returncode, out, err)
    return run


def test_the_face_in_a_portrait_is_found_cut_out_and_classified(model):
    result = predict(model, PORTRAIT)
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = result.stdout.strip().splitlines()
    where, box = line.split("  ")[0].split(" face at ")
    assert where == str(PORTRAIT)
    found = tuple(int(part.split("=")[1]) for part in box.split())
    assert overlap(found, HER_FACE) > 0.6
    # What the model saw is the levelled 48x48 crop: its answer is the crop's pixel 1.
    [face] = faces.find(cv2.imread(str(PORTRAIT), cv2.IMREAD_GRAYSCALE))
    assert face.crop.shape == (48, 48) and face.crop.dtype == np.uint8
    assert f"  {CLASSES[face.crop.reshape(-1)[1] % 7]} 0.35  |" in line


def test_a_photo_without_a_face_says_so_and_invents_nothing(model, tmp_path, predict_here):
    predict = predict_here
    result = predict(model, NO_FACE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{NO_FACE}  no face found"
    # A picture the size of a FER crop is likely one: the answer says how to classify it whole.
    cv2.imwrite(str(tmp_path / "crop.png"), np.full((48, 48), 128, np.uint8))
    crop = predict(model, tmp_path / "crop.png")
    assert crop.stdout.strip() == f"{tmp_path / 'crop.png'}  no face found (a picture that is " \
                                  f"already a face crop, like FER2013's 48x48 ones: pass --no-detect)"
    whole = predict(model, "--no-detect", tmp_path / "crop.png")
    assert whole.stdout.startswith(f"{tmp_path / 'crop.png'}  {CLASSES[128 % 7]} 0.35  |")


def test_json_and_annotation(model, tmp_path, predict_here):
    result = predict_here(model, "--json", "--annotate", tmp_path / "drawn", PORTRAIT, NO_FACE)
    assert result.returncode == 0, result.stderr[-2000:]
    portrait, empty = map(json.loads, result.stdout.strip().splitlines())
    assert portrait["input"] == str(PORTRAIT) and empty == {"input": str(NO_FACE), "faces": []}
    [face] = portrait["faces"]
    assert overlap(face["box"], HER_FACE) > 0.6
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert face["probabilities"][face["emotion"]] == face["probability"]

    drawn = cv2.imread(str(tmp_path / "drawn" / "grace_hopper.png"))
    photo = cv2.imread(str(PORTRAIT))
    assert drawn.shape == photo.shape
    x, y, w, h = face["box"]
    edge = drawn[y + h // 2, x]  # on the box's left side: drawn green
    assert edge[1] > 150 and edge[0] < 80 and edge[2] < 80
    assert (tmp_path / "drawn" / "Minduka_Present_Blue_Pack.png").exists()


def test_a_tilted_face_is_levelled_by_its_eyes():
    photo = cv2.imread(str(PORTRAIT), cv2.IMREAD_GRAYSCALE)
    [upright] = faces.find(photo)
    height, width = photo.shape
    turned = cv2.warpAffine(photo, cv2.getRotationMatrix2D((width / 2, height / 2), 8, 1.0),
                            (width, height), borderMode=cv2.BORDER_REPLICATE)
    [tilted] = faces.find(turned)
    assert tilted.tilt == pytest.approx(upright.tilt - 8, abs=3)
    # Levelled, the two crops show the same face: far closer than the tilted picture is.
    levelled = np.abs(tilted.crop.astype(int) - upright.crop).mean()
    unlevelled = np.abs(cv2.resize(turned[tilted.box[1]:tilted.box[1] + tilted.box[3],
                                          tilted.box[0]:tilted.box[0] + tilted.box[2]],
                                   (48, 48)).astype(int) - upright.crop).mean()
    assert levelled < unlevelled
