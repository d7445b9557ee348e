"""Tiny FER CSVs written on the fly: every test builds exactly the data it needs."""
import gzip
import json
import socket
from pathlib import Path

import numpy as np

from pipeline import default_data
from pipeline.config import SCHEMAS_DIR

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


def run_inputs(base: Path) -> tuple[Path, Path]:
    """900 synthetic faces (every class in every split) and gates that bless any model, for
    tests of whole runs: (CSV, evaluation config)."""
    data = default_data.write_csv(base / "faces.csv", rows=900, seed=11)
    gates = base / "gates.json"
    raw = json.loads((SCHEMAS_DIR / "evaluation.json").read_text())
    no_floors = {"accuracy": 0, "macro_accuracy": 0, "class_accuracy": {"default": 0}}
    gates.write_text(json.dumps({**raw, "floors": no_floors, "max_drop_vs_serving": {}}))
    return data, gates


def example_gen_output(root: Path, rows: int, seed: int) -> str:
    """ExampleGen's output folder for `rows` synthetic faces drawn with `seed`."""
    from components import example_gen
    from pipeline.config import IngestConfig

    data = default_data.write_csv(root / "faces.csv", rows=rows, seed=seed)
    example_gen.run(str(data), str(root / "out"), IngestConfig.load(), [])
    return str(root / "out")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(result, code, *words):
    """Failed with `code`: one readable paragraph naming `words`, no traceback; the message."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.count("error: ") == 1, \
        result.stderr[-3000:]
    message = " ".join(result.stderr[result.stderr.index("error: "):].split())
    for word in words:
        assert word in message, message
    return message
