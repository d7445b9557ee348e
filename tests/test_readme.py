"""The README's commands, as a new user types them, in a fresh folder: each is taken from the
README word for word (the test fails if the README no longer has it), with `.venv/bin/python`
as this interpreter and, for the whole run, flags appended that make it small (one epoch, gates
that bless it). The set-up commands run in CI (.ci/run), the scheduling lines in test_schedule,
the TensorFlow Datasets snippet in test_tfds."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from matplotlib import cbook

from pipeline import default_data
from tests.helpers import run_inputs

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
README_QUIET = "TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore::FutureWarning"
pytestmark = pytest.mark.slow  # whole runs


def readme(line: str) -> list[str]:
    """A command of the README, split as the shell would, run by this interpreter."""
    assert f"    {line}\n" in README, f"the README no longer says: {line}"
    words = shlex.split(line)
    return [sys.executable if w == ".venv/bin/python" else w for w in words]


def run(folder: Path, command: list[str], *extra: str, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(command + list(extra), cwd=folder, capture_output=True, text=True,
                            timeout=900, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "warning" not in result.stderr.lower(), \
        result.stderr
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A user's folder: FER CSVs under the README's names, a photo, the README's runs done."""
    base = tmp_path_factory.mktemp("readme")
    data, gates = run_inputs(base)
    shutil.copy(data, base / "fer2013.csv")
    shutil.copy(data, base / "NEW.csv")
    (base / "drops").mkdir()
    default_data.write_csv(base / "drops" / "a.csv.gz", rows=300, seed=3)
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), base / "photo.jpg")
    rows = [line for line in data.read_text().splitlines()[:3]]
    (base / "more_faces.csv").write_text("\n".join(rows) + "\n")
    first = run(base, readme(".venv/bin/python -m pipeline.run --data fer2013.csv "
                             "--pipeline-root runs/"),
                "--epochs", "1", "--batch-size", "32", "--evaluation-config", str(gates),
                "--serving-dir", "serving")
    assert "now serving version 1" in first.stdout
    (base / "first-run.txt").write_text(first.stdout)
    return base


def test_help(folder):
    out = run(folder, readme(".venv/bin/python -m pipeline.run --help")).stdout
    assert "--pipeline-root" in out and "--metadata-config" in out


def test_drops_on_both_cores(folder):
    out = run(folder, readme(".venv/bin/python -m pipeline.run --data 'drops/*.csv.gz' "
                             "--direct_num_workers=2 --direct_running_mode=multi_processing"),
              "--stop-after", "ExampleGen", "--pipeline-root", "drops-root").stdout
    assert "ExampleGen: 300 rows read from 1 file(s)" in out


def test_refreshing_the_schema(folder):
    out = run(folder, readme(".venv/bin/python -m pipeline.run --data NEW.csv "
                             "--stop-after SchemaGen")).stdout
    inferred = folder / "pipeline_root" / "SchemaGen" / "1" / "inferred_schema.pbtxt"
    assert str(inferred) in out and inferred.exists()
    line = ("diff schemas/schema.pbtxt pipeline_root/SchemaGen/<n>/inferred_schema.pbtxt   "
            "# then edit schemas/schema.pbtxt")
    assert f"      {line}\n" in README
    (folder / "schemas").mkdir(exist_ok=True)
    shutil.copy(REPO / "schemas" / "schema.pbtxt", folder / "schemas" / "schema.pbtxt")
    diff = subprocess.run(shlex.split(line.replace("<n>", "1").split("#")[0]), cwd=folder,
                          capture_output=True, text=True, timeout=60)
    assert diff.returncode == 1 and "skew_comparator" in diff.stdout  # the curated one says more


def test_the_serving_signatures_snippet(folder):
    snippet = ('    m = tf.saved_model.load("pipeline_root/Trainer/1/serving_model")\n'
               '    m.signatures["serve_images"](images=tf.constant(batch_uint8))["class_name"]\n')
    assert snippet in README
    code = "import numpy as np, tensorflow as tf\n" \
           "batch_uint8 = np.zeros((2, 48, 48, 1), np.uint8)\n" + textwrap.dedent(snippet).replace(
               '["class_name"]', '["class_name"].numpy().tolist()').replace(
               "m.signatures", "print(m.signatures", 1).rstrip() + ")\n"
    # A user's own script: its TensorFlow and Google start-up notices are silenced as the README
    # says (the pipeline's commands do it themselves).
    assert README_QUIET in README
    quiet = dict(line.split("=", 1) for line in README_QUIET.split())
    out = run(folder, [sys.executable, "-c", code.replace("pipeline_root", "runs")],
              env=quiet).stdout
    assert len(eval(out.strip().splitlines()[-1])) == 2


def test_a_version_holds_the_saved_model_the_int8_model_or_why_not_and_the_card(folder):
    """The default-like run of the fixture (900 faces, one epoch): the InfraValidator blessed
    the model, the Exporter judged both exports, and version 1 holds the SavedModel, the
    int8 model (or the reason it did not ship) and the model card; the README's snippet runs the
    int8 model; TF Serving's folder still loads as the SavedModel it was pushed from."""
    out = (folder / "first-run.txt").read_text()
    assert "InfraValidator: INFRA_BLESSED: 32 test examples through serving_default, " \
           "serve_images, serve_pixels" in out
    assert "Exporter: scored on" in out and all(f"  {name}: " in out
                                                for name in ("float32", "int8", "onnx"))
    listing = run(folder, readme("ls serving/fer/1 serving/fer/1/exports")).stdout
    version = folder / "serving" / "fer" / "1"
    for name in ("saved_model.pb", "variables", "model_card.json", "model_card.html", "exports",
                 "model.onnx", "README.txt", "exports.json"):
        assert name in listing
    exports = json.loads((version / "exports" / "exports.json").read_text())["exports"]
    note = (version / "exports" / "README.txt").read_text()
    shipped = "serving/fer/1/exports/model_int8.tflite"
    if exports["int8"]["shipped"]:
        assert (folder / shipped).is_file() and "model_int8.tflite: shipped." in note
    else:  # the snippet then runs on the export the Exporter made
        assert not (folder / shipped).exists()
        assert "model_int8.tflite: NOT shipped: the int8 model's" in note
    snippet = (f'      it = tf.lite.Interpreter("{shipped}")\n'
               '      it.allocate_tensors()\n'
               '      it.set_tensor(it.get_input_details()[0]["index"], face_uint8)'
               '  # [1, 48, 48, 1]\n'
               '      it.invoke()\n'
               '      probabilities = it.get_tensor(it.get_output_details()[0]["index"])'
               ' / 256\n')
    assert snippet in README
    code = ("import pipeline; pipeline.quiet()\n"  # TensorFlow's and Google's start-up notices
            "import numpy as np, tensorflow as tf\n"
            "face_uint8 = np.zeros((1, 48, 48, 1), np.uint8)\n"
            + textwrap.dedent(snippet) + "print(probabilities.shape, probabilities.sum())\n")
    if not exports["int8"]["shipped"]:
        code = code.replace(shipped, "runs/Exporter/1/model_int8.tflite")
    shape, total = run(folder, [sys.executable, "-c", code]).stdout.split(")")
    assert shape == "(1, 7" and abs(float(total) - 1) < 0.05
    card = json.loads((version / "model_card.json").read_text())
    assert card["model_details"]["version"]["name"] == "1"
    trained_on, evaluated_on = card["model_parameters"]["data"]
    evaluation = json.loads((folder / "runs" / "Evaluator" / "1" / "evaluation.json").read_text())
    assert evaluated_on["counts"]["total"] == evaluation["examples"]
    assert trained_on["counts"]["total"] == json.loads(
        (folder / "runs" / "ExampleGen" / "1" / "counts.json").read_text())["written"]["train"]
    subprocess.run([sys.executable, "-c", "import sys, tensorflow as tf; "
                    "tf.saved_model.load(sys.argv[1]).signatures['serving_default']",
                    str(version)], check=True, capture_output=True, timeout=120)


def test_predictions(folder):
    out = run(folder, readme(".venv/bin/python -m pipeline.predict --model serving/fer "
                             "photo.jpg more_faces.csv")).stdout.splitlines()
    assert out[0].startswith("photo.jpg face at x=") and out[1].startswith("more_faces.csv:2  ")
    out = run(folder, readme(".venv/bin/python -m pipeline.predict --model serving/fer --json "
                             "--annotate boxed.png photo.jpg")).stdout
    assert len(json.loads(out)["faces"]) == 1 and (folder / "boxed.png").exists()


def test_batch_inference(folder):
    (folder / "frames").mkdir()
    default_data.write_csv(folder / "frames" / "drawn.csv", rows=40, seed=5)
    shutil.copy(folder / "more_faces.csv", folder / "frames" / "more_faces.csv")  # 2 rows
    out = run(folder, readme(".venv/bin/python -m pipeline.infer --model serving/fer "
                             "--data 'frames/*.csv' --output preds/")).stdout
    assert "infer: 42 rows read from 2 file(s) = 42 scored + 0 quarantined + 0 blank" in out
    rows = [line for shard in (folder / "preds").glob("predictions-*-of-*.csv")
            for line in shard.read_text().splitlines()[1:]]
    assert len(rows) == 42 and all(row.startswith("frames/") for row in rows)


def test_lineage(folder):
    out = run(folder, readme(".venv/bin/python -m pipeline.lineage --pipeline-root "
                             "pipeline_root --serving-dir serving"), "--pipeline-root",
              "runs").stdout
    assert "came from:" in out and "input file" in out and "ExampleValidator (execution" in out


def test_the_retraining_story(tmp_path):
    """The README's new-span story word for word, from an empty folder: the default run, a new
    span of 600 faces drawn by the same generator, the scheduled command. It passes validation
    (what differs is sampling noise), is judged on its test faces and the default run's, and
    ends as the README says."""
    first = run(tmp_path, readme(".venv/bin/python -m pipeline.run --runner=DirectRunner"))
    assert "now serving version 1" in first.stdout
    run(tmp_path, readme(".venv/bin/python -m pipeline.default_data "
                         "drops/span-20261201/faces.csv --rows 600 --seed 1"))
    span = run(tmp_path, readme(".venv/bin/python -m pipeline.run --data drops --spans 1"))
    out = span.stdout
    assert "ExampleValidator: data passed" in out and "sampling noise [skew] train vs test" in out
    assert "Trainer: starting from the weights of serving/fer/1" in out
    assert "(this run's and those of 1 earlier validated run(s))" in out
    assert "class Disgust not judged" in out
    assert "Evaluator: BLESSED" in out and "now serving version 2" in out, out[-3000:]
    again = run(tmp_path, readme(".venv/bin/python -m pipeline.run --data drops --spans 1"))
    assert "Nothing new" in again.stdout and "Trainer: reusing" in again.stdout
