"""Tiny FER CSVs written on the fly: every test builds exactly the data it needs."""
import gzip
from pathlib import Path

import numpy as np

USAGES = ("Training", "PublicTest", "PrivateTest")


def pixels_for(i: int) -> np.ndarray:
    """A distinct, reproducible 48x48 image for row i."""
    return np.random.default_rng(i).integers(0, 256, 2304)


def pixel_text(i: int) -> str:
    return " ".join(map(str, pixels_for(i)))


def valid_rows(n: int, start: int = 0, usage: bool = True) -> list[str]:
    """n valid rows; Usage cycles so every split gets rows."""
    rows = []
    for i in range(start, start + n):
        row = f"{i % 7},{pixel_text(i)}"
        rows.append(f"{row},{USAGES[i % 3]}" if usage else row)
    return rows


def write_csv(path: Path, lines: list[str], header: str = "emotion,pixels,Usage",
              newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join([header, *lines]) + newline
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path
