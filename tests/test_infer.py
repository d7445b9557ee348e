"""pipeline.infer: Beam's RunInference over the exported SavedModel scores every valid row of
FER CSVs (labelled or not, gzip by content, several files and chunks) exactly as
`pipeline.predict --no-detect --json` scores the same rows, quarantines the rows predict refuses,
and accounts for every line; on DirectRunner here, and through Beam's own job service and SDK
workers of their own (PortableRunner) in the slow test. The model is the conftest's trained one."""
import contextlib
import csv
import dataclasses
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import default_data, infer
from pipeline import predict as predict_module
from pipeline.config import IngestConfig
from tests.helpers import pixel_text, write_csv
from tests.test_portable import REPO, services  # noqa: F401 (the job service and worker pool)

BAD_LABELLED = [  # (row, the start of its quarantine reason)
    (f"3,{' '.join(['7'] * 2303)},Training", "found 2303 pixel values"),
    (f"3,{pixel_text(1).replace(' ', ' x ', 1)},Training", "pixels holds the non-integer"),
    (f"3,256 {' '.join(['0'] * 2303)},Training", "pixel 0 has the value 256"),
]
BAD_UNLABELLED = [
    (f"Training,{pixel_text(2)},extra", "expected 2 fields"),
    ("Training,", "empty pixels"),
]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A folder of 302 lines in two files: a labelled FER CSV (180 faces, 3 bad rows, 2 blank
    lines) and an unlabelled one (115 faces, 2 bad rows), gzip-compressed under a plain .csv
    name, whose header is 'Usage,Pixels' with the pixels quoted."""
    folder = tmp_path_factory.mktemp("frames")
    faces = Path(default_data.write_csv(folder / "faces.tmp", rows=295, seed=21))
    header, *rows = faces.read_text().splitlines()
    faces.unlink()
    labelled = rows[:180]
    for i, (bad, _) in enumerate(BAD_LABELLED):
        labelled.insert(40 * i + 7, bad)
    labelled[100:100] = ["", "  "]
    write_csv(folder / "labelled.csv", labelled, header=header)
    unlabelled = [f'{usage},"{pixels}"' for _, pixels, usage in
                  (row.split(",") for row in rows[180:])]
    unlabelled[50:50] = [bad for bad, _ in BAD_UNLABELLED]
    path = write_csv(folder / "gzipped.csv", unlabelled, header="Usage,Pixels")
    path.write_bytes(gzip.compress(path.read_bytes()))
    return folder


@pytest.fixture(scope="module")
def model(trained) -> str:
    summary, _ = trained
    return summary["serving_model"]


@pytest.fixture(scope="module")
def predicted(model, frames) -> dict:
    """What `pipeline.predict --no-detect --json` says of each row of the two files:
    {"faces": {(file, line): face}, "errors": {(file, line): error}}."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = predict_module.main(["--model", model, "--no-detect", "--json",
                                    *sorted(map(str, frames.iterdir()))])
    assert code == 2  # the bad rows
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    found = {"faces": {}, "errors": {}}
    for kind, field in found.items():
        for answer in answers:
            for item in answer.get(kind, []):
                path, line = item["where"].rsplit(":", 1)
                field[path, int(line)] = item if kind == "faces" else item["error"]
    assert len(found["faces"]) == 295 and len(found["errors"]) == 5
    return found


def read_predictions(output: Path, fmt: str) -> dict:
    """{(file, line): (emotion, probability, {class: probability})} from the shards."""
    found = {}
    for shard in sorted(output.glob(f"predictions-*-of-*.{fmt}")):
        if fmt == "csv":
            header, *rows = list(csv.reader(shard.open(newline="")))
            assert header[:4] == ["file", "line", "emotion", "probability"]
            for row in rows:
                key = (row[0], int(row[1]))
                assert key not in found
                found[key] = (row[2], float(row[3]), dict(zip(header[4:], map(float, row[4:]))))
        else:
            for line in shard.read_text().splitlines():
                row = json.loads(line)
                key = (row["file"], row["line"])
                assert key not in found
                found[key] = (row["emotion"], row["probability"], row["probabilities"])
    return found


def quarantined(output: Path) -> dict:
    return {(r["file"], r["line"]): r["reason"] for shard in (output / "quarantine").glob("*.jsonl")
            for r in map(json.loads, shard.read_text().splitlines())}


def assert_as_predict_says(output: Path, fmt: str, predicted: dict) -> None:
    """Every row predict answers, with its class and (predict prints 4 decimals) every
    probability within 1e-5 of it, beyond predict's rounding; every row it refuses quarantined
    for the same reason."""
    ours = read_predictions(output, fmt)
    assert ours.keys() == predicted["faces"].keys()
    for key, (emotion, probability, probabilities) in ours.items():
        theirs = predicted["faces"][key]
        assert emotion == theirs["emotion"], key
        assert list(probabilities) == list(theirs["probabilities"])  # the model's class order
        assert probabilities == pytest.approx(theirs["probabilities"], abs=5e-5 + 1e-5), key
        assert probability == probabilities[emotion]
    reasons = quarantined(output)
    assert reasons.keys() == predicted["errors"].keys()
    for key, reason in reasons.items():
        assert f"was not classified: {reason} (" in predicted["errors"][key]
    assert sorted(r[:17] for r in reasons.values()) == \
        sorted(start[:17] for _, start in BAD_LABELLED + BAD_UNLABELLED)


def test_predictions_equal_predict_no_detect(model, frames, predicted, tmp_path, capsys):
    output = tmp_path / "preds"
    code = infer.main(["--model", model, "--data", str(frames), "--output", str(output)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "infer: 302 rows read from 2 file(s) = 295 scored + 5 quarantined + 2 blank" in out
    assert_as_predict_says(output, "csv", predicted)
    counts = json.loads((output / "counts.json").read_text())
    assert counts["rows_read"] == 302 and counts["scored"] == 295
    assert counts["files"] == {str(frames / "gzipped.csv"): 117,
                               str(frames / "labelled.csv"): 185}


def test_json_lines_across_many_chunks_and_files_of_an_earlier_run_replaced(
        model, frames, predicted, tmp_path):
    output = tmp_path / "preds"
    output.mkdir()
    (output / "predictions-00000-of-00009.jsonl").write_text('{"stale": 1}\n')
    (output / "notes.txt").write_text("kept")
    small = dataclasses.replace(IngestConfig.load(), chunk_bytes=64 * 1024)  # ~9 rows a chunk
    counts = infer.run(model, [str(frames / "labelled.csv"), str(frames / "*.csv")],
                       str(output), "jsonl", config=small)
    assert counts["scored"] == 295 and counts["blank_lines"] == 2
    assert not (output / "predictions-00000-of-00009.jsonl").exists()
    assert (output / "notes.txt").read_text() == "kept"
    assert_as_predict_says(output, "jsonl", predicted)


@pytest.mark.parametrize("args, words", [
    (["--model", "{tmp}/none", "--data", "{frames}"], "is neither a SavedModel"),
    (["--model", "{model}", "--data", "{tmp}/nothing*.csv"], "No input file matches"),
    (["--model", "{model}", "--data", "{frames}", "--ouput", "x"], "did you mean --output?"),
    (["--model", "{model}", "--data", "{frames}", "--runner=NoSuchRunner"], "has no runner"),
    (["--model", "{model}", "--data", "{frames}", "--format", "csv", "--output", "{frames}"],
     "lies in the output folder"),
])
def test_errors_are_one_paragraph(model, frames, tmp_path, capsys, args, words):
    args = [a.format(tmp=tmp_path, frames=frames, model=model) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    code = infer.main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert words in " ".join(err.split()), err


@pytest.mark.slow  # a job service and a worker pool (tests/test_portable.py's)
def test_the_portable_runner_scores_as_predict_does(services, model, frames, predicted,  # noqa: F811
                                                   tmp_path):
    job, pool = services
    output = tmp_path / "preds"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.infer", "--model", model, "--data", str(frames),
         "--output", str(output), "--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{job}",
         "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{pool}"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "295 scored + 5 quarantined + 2 blank" in result.stdout
    assert_as_predict_says(output, "csv", predicted)
