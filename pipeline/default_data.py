"""Built-in default data: procedurally drawn 48x48 faces whose expression follows FER2013's classes.

Each face is drawn in its own coordinate frame (then shifted, scaled and rotated
into the image), with an identity (face shape, skin, hair, eye spacing, glasses)
and an expression: brows (height, inner-end tilt), eyes (openness), mouth
(curvature, opening, width, asymmetry) and nose wrinkles. Expressions are drawn
at a random intensity, so weak ones are genuinely ambiguous; lighting, noise
and occluders make the task non-trivial. Class shares and Usage shares follow
FER2013 (schemas/default_data.json). The same seed gives the same bytes.

    python -m pipeline.default_data OUT.csv[.gz] [--rows N] [--seed S]
"""
import argparse
import gzip
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import pipeline
from pipeline import artifacts
from pipeline.config import IngestConfig, load_json

_SUPERSAMPLE = 2

# Expression parameters per class, in face units (face half-height = 1, y points down).
# Order: Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral.
#            eye_open brow_lift brow_tilt curve  open  width wrinkle asym
_EXPRESSIONS = np.array([
    [0.65, -0.06, -0.13, -0.05, 0.05, 0.24, 0.5, 0.00],   # Angry: V brows, narrowed eyes
    [0.60, -0.04, -0.06, -0.07, 0.02, 0.26, 1.0, 0.09],   # Disgust: wrinkled nose, raised lip side
    [1.45, 0.10, 0.09, -0.04, 0.13, 0.33, 0.0, 0.00],     # Fear: raised worried brows, stretched mouth
    [0.55, 0.02, 0.00, 0.17, 0.07, 0.36, 0.0, 0.00],      # Happy: smile, squint
    [0.80, 0.00, 0.11, -0.13, 0.00, 0.26, 0.0, 0.00],     # Sad: inner brows up, frown
    [1.65, 0.14, 0.02, 0.00, 0.24, 0.16, 0.0, 0.00],      # Surprise: high brows, round open mouth
    [1.00, 0.00, 0.00, 0.00, 0.00, 0.28, 0.0, 0.00],      # Neutral
])
_NEUTRAL = _EXPRESSIONS[6]


def generate(rows: int, seed: int):
    """Yield (label, uint8[48, 48] image, Usage) for `rows` faces, deterministic for `seed`."""
    spec = load_json("default_data.json")
    size = IngestConfig.load().image_size
    class_p = np.asarray(spec["fer2013_train_class_counts"], float)
    usage_names = list(spec["usage_counts"])
    usage_p = np.asarray(list(spec["usage_counts"].values()), float)
    rng = np.random.default_rng(seed)
    n = size * _SUPERSAMPLE
    grid_y, grid_x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    for _ in range(rows):
        label = int(rng.choice(len(class_p), p=class_p / class_p.sum()))
        usage = usage_names[int(rng.choice(len(usage_p), p=usage_p / usage_p.sum()))]
        image = _draw_face(rng, label, grid_x, grid_y, n)
        small = image.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))
        yield label, np.clip(np.rint(small * 255), 0, 255).astype(np.uint8), usage


def write_csv(path: str | Path, rows: int, seed: int,
              ingest: IngestConfig | None = None) -> str | Path:
    """Write a FER2013-format CSV (gzip if the name ends in .gz), its header the ingestion
    config's column names; atomically, via a temp name (on a local disk even when the CSV goes to
    object storage)."""
    if artifacts.remote(path):
        with tempfile.TemporaryDirectory() as local:
            artifacts.publish(write_csv(Path(local, os.path.basename(path)), rows, seed, ingest),
                              path)
        return path
    ingest = ingest or IngestConfig.load()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = artifacts.staging_path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(tmp, "wt", newline="") as f:
        f.write(f"{ingest.label_column},{ingest.pixels_column},{ingest.usage_column}\n")
        for label, image, usage in generate(rows, seed):
            f.write(f"{label},{' '.join(map(str, image.ravel().tolist()))},{usage}\n")
    artifacts.publish(tmp, path)
    return path


def _draw_face(rng, label, gx, gy, n) -> np.ndarray:
    """One face of class `label` on an n x n grid (gx, gy), values in [0, 1]. The random draws
    happen in a fixed order, so a seed always gives the same faces."""
    # Expression at a random intensity between neutral and the full class expression.
    intensity = rng.uniform(0.35, 1.0)
    eye_open, brow_lift, brow_tilt, curve, mouth_open, width, wrinkle, asym = (
        _NEUTRAL + intensity * (_EXPRESSIONS[label] - _NEUTRAL))
    x, y = _pose(rng, gx, gy, n)
    img, skin, eye_x, eye_y, mouth_y = _head(rng, x, y, gx, n)
    _eyes_and_brows(img, rng, x, y, skin, eye_x, eye_y, eye_open, brow_lift, brow_tilt)
    _nose(img, x, y, skin, wrinkle)
    _mouth(img, x, y, skin, mouth_y, curve, mouth_open, width, asym, smile=label == 3)
    return _camera(img, rng, gx, gy, n)


def _pose(rng, gx, gy, n) -> tuple[np.ndarray, np.ndarray]:
    """Image pixel -> face coordinates: the face's size, tilt, centre, and a mirror image
    (asymmetric expressions appear on either side)."""
    half = n / 2 * rng.uniform(0.78, 0.98)
    angle = np.deg2rad(np.clip(rng.normal(0, 7), -18, 18))
    cx, cy = n / 2 + rng.normal(0, n * 0.04, 2)
    dx, dy = gx - cx, gy - cy
    x = (dx * np.cos(angle) + dy * np.sin(angle)) / half
    y = (-dx * np.sin(angle) + dy * np.cos(angle)) / half
    return (-x if rng.random() < 0.5 else x), y


def _head(rng, x, y, gx, n) -> tuple:
    """Identity (face width, skin, eye and mouth placement), background, hair, lighting."""
    face_w = rng.uniform(0.68, 0.82)
    skin = rng.uniform(0.45, 0.85)
    eye_x, eye_y = rng.uniform(0.27, 0.36), rng.uniform(-0.30, -0.18)
    mouth_y = rng.uniform(0.45, 0.58)
    bg = rng.uniform(0.05, 0.9) + rng.uniform(-0.25, 0.25) * (gx / n - 0.5)
    img = np.broadcast_to(bg, x.shape).copy()
    face = (x / face_w) ** 2 + (y / 1.0) ** 2 <= 1
    img[face] = skin
    if rng.random() < 0.8:
        hair = ((x / (face_w * 1.08)) ** 2 + ((y + 0.08) / 1.06) ** 2 <= 1) & (
            y < -0.62 + 0.15 * np.abs(x))
        img[hair] = rng.uniform(0.03, 0.4)
    light = rng.uniform(-0.3, 0.3)
    img[face] *= 1 + light * x[face]
    return img, skin, eye_x, eye_y, mouth_y


def _eyes_and_brows(img, rng, x, y, skin, eye_x, eye_y, eye_open, brow_lift, brow_tilt) -> None:
    """Eyes with irises, optional glasses; brows as thick segments from the inner end (tilted by
    brow_tilt) to the outer end."""
    eye_ry = 0.075 * eye_open
    for side in (-1, 1):
        ex = side * eye_x
        sclera = ((x - ex) / 0.13) ** 2 + ((y - eye_y) / eye_ry) ** 2 <= 1
        img[sclera] = 0.92 * skin + 0.1
        img[sclera & ((x - ex) ** 2 + (y - eye_y) ** 2 <= 0.055 ** 2)] = 0.1
    if rng.random() < 0.1:
        for side in (-1, 1):
            r = np.hypot(x - side * eye_x, y - eye_y)
            img[(r > 0.16) & (r < 0.2)] = 0.08
    for side in (-1, 1):
        base = eye_y - 0.17 - brow_lift
        inner = np.array([side * 0.08, base - brow_tilt])
        outer = np.array([side * 0.47, base + 0.02])
        img[_segment_distance(x, y, inner, outer) < 0.035] = 0.12


def _nose(img, x, y, skin, wrinkle) -> None:
    """Nostrils, and wrinkles on the bridge (disgust, anger)."""
    for side in (-1, 1):
        img[(x - side * 0.06) ** 2 + (y - 0.22) ** 2 <= 0.03 ** 2] = skin * 0.45
    for k in range(int(round(wrinkle * 3))):
        img[(np.abs(y - (-0.02 + 0.05 * k)) < 0.012) & (np.abs(x) < 0.09)] = skin * 0.55


def _mouth(img, x, y, skin, mouth_y, curve, mouth_open, width, asym, smile: bool) -> None:
    """A curve whose corners rise (smile) or fall (frown), optionally open, teeth in a smile."""
    u = x / width
    within = np.abs(u) <= 1
    centre = mouth_y - curve * u ** 2 + asym * u
    gap = mouth_open * (1 - u ** 2)
    inside = within & (y > centre - gap / 2) & (y < centre + gap / 2)
    img[inside] = 0.08
    if smile and mouth_open > 0.03:
        img[inside & (y < centre)] = 0.9
    lips = within & ((np.abs(y - (centre - gap / 2)) < 0.03)
                     | (np.abs(y - (centre + gap / 2)) < 0.03))
    img[lips] = skin * 0.55


def _camera(img, rng, gx, gy, n) -> np.ndarray:
    """An occluder (a hand, a strand of hair, a watermark), camera gamma and noise."""
    if rng.random() < 0.12:
        x0, y0 = rng.uniform(0, n, 2)
        w, h = rng.uniform(n * 0.1, n * 0.35, 2)
        img[(gx > x0) & (gx < x0 + w) & (gy > y0) & (gy < y0 + h)] = rng.uniform(0, 1)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    return np.clip(img + rng.normal(0, rng.uniform(0.01, 0.06), img.shape), 0, 1)


def _segment_distance(x, y, a, b) -> np.ndarray:
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab), 0, 1)
    return np.hypot(x - (a[0] + t * ab[0]), y - (a[1] + t * ab[1]))


def main(argv=None) -> int:
    pipeline.quiet()
    spec = load_json("default_data.json")
    parser = argparse.ArgumentParser(prog="python -m pipeline.default_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="CSV file to write (.gz for gzip)")
    parser.add_argument("--rows", type=int, default=spec["rows"], help="number of faces")
    parser.add_argument("--seed", type=int, default=spec["seed"], help="random seed")
    args = parser.parse_args(argv)
    path = write_csv(args.out, args.rows, args.seed)
    print(f"wrote {args.rows:,} synthetic faces to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
