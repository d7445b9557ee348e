"""Evaluator (real TFMA), Pusher, the gates, predict and the report, with models whose every
prediction is known, so TFMA's figures can be checked against a hand computation."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components import evaluator, pusher
from pipeline import default_data, report, serving
from pipeline.config import SCHEMAS_DIR, EvaluationConfig, IngestConfig
from pipeline.errors import UserError
from tests.test_validation import write_examples

CLASSES = IngestConfig.load().classes
SPLITS = IngestConfig.load().splits
# Examples per class, and how many of them the known model gets right (class 5: none, and no
# example is predicted as 5 either: TFMA's Recall(top_k=1) would call that 1.0).
PER_CLASS = [6, 5, 4, 6, 5, 3, 6]
RIGHT = [6, 4, 1, 3, 5, 0, 2]


def known_model(path, spoil: int | None = None, confidence: float = 0.35) -> str:
    """A SavedModel with the Trainer's signatures that predicts class pixels[1] mod 7 (or, for the
    class `spoil`, the next one) with probability `confidence`: below 0.5 on purpose, where a
    0.5 threshold would count nothing as predicted."""
    rest = (1 - confidence) / 6

    def answer(pixels):
        predicted = tf.cast(pixels[:, 1] % 7, tf.int32)
        if spoil is not None:
            predicted = tf.where(predicted == spoil, (predicted + 1) % 7, predicted)
        probabilities = tf.one_hot(predicted, 7) * (confidence - rest) + rest
        return {"probabilities": probabilities, "class_id": predicted,
                "class_name": tf.gather(tf.constant(CLASSES), predicted)}

    class Known(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def examples(self, examples):
            return answer(tf.io.parse_example(
                examples, {"pixels": tf.io.FixedLenFeature([2304], tf.int64)})["pixels"])

        @tf.function(input_signature=[tf.TensorSpec([None, 48, 48, 1], tf.uint8, name="images")])
        def images(self, images):
            return answer(tf.reshape(tf.cast(images, tf.int64), (-1, 2304)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="pixels")])
        def pixels(self, pixels):
            values = tf.strings.to_number(tf.strings.split(pixels), tf.int64)
            return answer(values.to_tensor())

    module = Known()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.examples, "serve_images": module.images,
        "serve_pixels": module.pixels})
    return str(path)


def known_examples(root, right=RIGHT, scale: int = 1) -> tuple[str, np.ndarray, np.ndarray]:
    """Test examples whose pixel 1 is the class the known model will predict (`scale` times as
    many, in the same proportions)."""
    labels, predicted, rows = [], [], []
    for c, (n, k) in enumerate(zip(PER_CLASS, right)):
        for i in (j // scale for j in range(n * scale)):
            guess = c if i < k else (c + 1) % 7 if (c + 1) % 7 != 5 else 6
            pixels = np.full(2304, 100, np.int64)
            pixels[1] = guess
            rows.append((c, pixels))
            labels.append(c)
            predicted.append(guess)
    return write_examples(root, {"test": rows}), np.array(labels), np.array(predicted)


def gates(**changes) -> EvaluationConfig:
    return dataclasses.replace(EvaluationConfig.load(CLASSES, SPLITS), **changes)


NO_FLOORS = {"accuracy": 0, "macro_accuracy": 0, "class_accuracy": {"default": 0}}


def test_per_class_accuracy_equals_the_hand_computation(tmp_path):
    examples, labels, predicted = known_examples(tmp_path / "examples")
    model = known_model(tmp_path / "model")
    result = evaluator.run(model, examples, str(tmp_path / "eval"),
                           gates(floors=NO_FLOORS, min_class_examples=1), CLASSES)
    by_hand = {name: float(np.mean(predicted[labels == c] == c)) for c, name in enumerate(CLASSES)}
    assert result["metrics"]["candidate"]["class_accuracy"] == pytest.approx(by_hand)
    assert by_hand["Surprise"] == 0 and by_hand["Angry"] == 1  # the traps would differ here
    assert result["metrics"]["candidate"]["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert result["metrics"]["candidate"]["macro_accuracy"] == pytest.approx(
        np.mean(list(by_hand.values())))
    matrix = np.zeros((7, 7), int)
    np.add.at(matrix, (labels, predicted), 1)
    assert result["confusion_matrix"] == matrix.tolist()
    assert result["examples"] == len(labels) and result["blessed"]
    assert (tmp_path / "eval" / "BLESSED").exists()


def test_raised_gates_are_not_blessed_and_say_why(tmp_path):
    examples, _, _ = known_examples(tmp_path / "examples", scale=10)
    model = known_model(tmp_path / "model")
    strict = {"accuracy": 0.9, "macro_accuracy": 0.2,
              "class_accuracy": {"default": 0.2, "Fear": 0.5}}
    result = evaluator.run(model, examples, str(tmp_path / "eval"), gates(floors=strict),
                           CLASSES)
    assert not result["blessed"] and (tmp_path / "eval" / "NOT_BLESSED").exists()
    # Wilson intervals at 95%: 210 of 350, 10 of 40 and 0 of 30 right.
    assert result["reasons"] == [
        "overall accuracy is 0.600 (95% interval 0.548-0.650), below its floor of 0.900",
        "accuracy of class Fear is 0.250 (95% interval 0.142-0.402), below its floor of 0.500",
        "accuracy of class Surprise is 0.000 (95% interval 0.000-0.114), below its floor of "
        "0.200",
    ]
    stored = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert stored["reasons"] == result["reasons"] and stored["blessed"] is False


def test_a_floor_blocks_only_what_the_evidence_puts_below_it(tmp_path):
    """Fear is 0.250 on 4 examples (interval 0.05-0.70) and on 40 (0.14-0.40): below a floor of
    0.5 only the second says so; with 3 examples a class is not judged at all."""
    floors = {"accuracy": 0, "macro_accuracy": 0, "class_accuracy": {"default": 0, "Fear": 0.5}}
    few, _, _ = known_examples(tmp_path / "few")
    judged = evaluator.run(known_model(tmp_path / "model"), few, str(tmp_path / "e1"),
                           gates(floors=floors, min_class_examples=4), CLASSES)
    assert judged["blessed"], judged["reasons"]
    assert judged["intervals"]["Fear"]["low"] < 0.25 < 0.5 < judged["intervals"]["Fear"]["high"]
    assert judged["not_judged"] == {"Surprise": 3}
    strict = {**floors, "class_accuracy": {"default": 0.9}}
    unjudged = evaluator.run(known_model(tmp_path / "model"), few, str(tmp_path / "e2"),
                             gates(floors=strict, min_class_examples=7), CLASSES)
    assert unjudged["not_judged"] == dict(zip(CLASSES, PER_CLASS))  # 3-6 each: none judged
    assert unjudged["blessed"] and unjudged["metrics"]["candidate"]["macro_accuracy"] is None


def test_a_model_worse_than_the_serving_one_is_not_pushed(tmp_path):
    examples, _, _ = known_examples(tmp_path / "examples", scale=10)
    serving_dir = tmp_path / "serving"
    good = known_model(tmp_path / "good")
    first = evaluator.run(good, examples, str(tmp_path / "e1"), gates(floors=NO_FLOORS), CLASSES)
    pushed = pusher.run(good, str(serving_dir), "fer", first, str(tmp_path / "e1"))
    assert pushed == {"pushed": True, "version": 1, "path": str(serving_dir / "fer" / "1")}

    worse = known_model(tmp_path / "worse", spoil=3)  # never right about Happy (3 of 6 were)
    second = evaluator.run(worse, examples, str(tmp_path / "e2"), gates(floors=NO_FLOORS),
                           CLASSES, str(serving.latest(serving_dir, "fer")))
    assert not second["blessed"]
    assert second["metrics"]["baseline"]["class_accuracy"]["Happy"] == 0.5
    assert [r.split(" (")[0] for r in second["reasons"]] == [
        f"overall accuracy dropped by {30 / 350:.3f} against the serving model",
        f"macro-averaged accuracy dropped by {0.5 / 7:.3f} against the serving model",
        "accuracy of class Happy dropped by 0.500 against the serving model",
    ]
    assert " (at most 0.050 allowed; 95% interval of the change " in second["reasons"][2]
    # Paired: the two differ on Happy's 30 right answers alone, which only the serving model has.
    happy = second["intervals"]["Happy"]
    assert happy["change"] == -0.5 and happy["change_high"] < -0.05
    assert pusher.run(worse, str(serving_dir), "fer", second, str(tmp_path / "e2")) == {
        "pushed": False, "reasons": second["reasons"]}
    assert serving.versions(serving_dir / "fer") == [1]


def test_one_example_does_not_decide_against_the_serving_model(tmp_path):
    """A candidate that misses the one Fear face of 4 the serving model gets: a raw drop of
    0.25, five times the 0.05 allowed, yet no evidence (the paired interval reaches above 0).
    On 10 times the examples, the same shares are evidence."""
    serving_model = known_model(tmp_path / "serving")
    candidate = known_model(tmp_path / "candidate", spoil=2)  # never predicts Fear
    lenient = gates(floors=NO_FLOORS, min_class_examples=4)
    few, _, _ = known_examples(tmp_path / "few")
    result = evaluator.run(candidate, few, str(tmp_path / "e1"), lenient, CLASSES,
                           serving_model)
    fear = result["intervals"]["Fear"]
    assert fear["change"] == -0.25 and fear["change_low"] < -0.25 < 0 < fear["change_high"]
    assert result["blessed"], result["reasons"]
    many, _, _ = known_examples(tmp_path / "many", scale=10)
    result = evaluator.run(candidate, many, str(tmp_path / "e2"), lenient, CLASSES,
                           serving_model)
    assert not result["blessed"] and result["intervals"]["Fear"]["change_high"] < 0
    assert any(r.startswith("accuracy of class Fear dropped by 0.250") for r in result["reasons"])


def test_the_evaluator_judges_several_example_sets_together(tmp_path):
    first, _, _ = known_examples(tmp_path / "first")
    second, _, _ = known_examples(tmp_path / "second", scale=2)
    result = evaluator.run(known_model(tmp_path / "model"), [first, second],
                           str(tmp_path / "eval"), gates(floors=NO_FLOORS), CLASSES)
    assert result["examples"] == 3 * sum(PER_CLASS) and result["examples_from"] == [first, second]
    assert result["confusion_matrix"][0][0] == 3 * PER_CLASS[0]


def test_pusher_versions_are_atomic_increasing_never_overwritten_nor_repeated(tmp_path):
    model, other = known_model(tmp_path / "model"), known_model(tmp_path / "other", spoil=3)
    serving_dir = tmp_path / "serving"
    blessed = {"blessed": True, "reasons": []}
    (serving_dir / "fer" / ".partial-1").mkdir(parents=True)  # an interrupted push
    (serving_dir / "fer" / "7").mkdir()  # a version folder without a model: not a version
    assert pusher.run(model, str(serving_dir), "fer", blessed, str(tmp_path))["version"] == 1
    first = (serving_dir / "fer" / "1" / "saved_model.pb").stat().st_mtime_ns
    # The model serving already is not pushed again (a run that died before recording its push).
    assert pusher.run(model, str(serving_dir), "fer", blessed, str(tmp_path))["version"] == 1
    assert pusher.run(other, str(serving_dir), "fer", blessed, str(tmp_path))["version"] == 2
    assert (serving_dir / "fer" / "1" / "saved_model.pb").stat().st_mtime_ns == first
    assert sorted(p.name for p in (serving_dir / "fer").iterdir()) == [".push.lock", "1", "2", "7"]
    assert serving.latest(serving_dir, "fer") == str(serving_dir / "fer" / "2")
    loaded = tf.saved_model.load(str(serving_dir / "fer" / "2"))
    assert "serving_default" in loaded.signatures


def test_pusher_reports_an_unwritable_serving_directory(tmp_path):
    model = known_model(tmp_path / "model")
    (tmp_path / "serving").write_text("a file where the serving directory should be")
    with pytest.raises(UserError, match="Could not push the model"):
        pusher.run(model, str(tmp_path / "serving"), "fer", {"blessed": True, "reasons": []},
                   str(tmp_path))


@pytest.mark.parametrize("change, complaint", [
    ({"floors": {"auc": 0.5}}, "names the metric 'auc', which the Evaluator does not compute"),
    ({"floors": {"class_accuracy": {"Disgusted": 0.2}}}, "names the class 'Disgusted'"),
    ({"floors": {"accuracy": 1.5}}, "must be a number in [0, 1]"),
    ({"floors": {"class_accuracy": 0.3}}, 'must be an object {"default"'),
    ({"split": "holdout"}, "split 'holdout' is not one of the splits"),
    ({"model_name": "../evil"}, "model_name '../evil' must be"),
])
def test_a_gating_config_that_cannot_work_is_refused(tmp_path, change, complaint):
    raw = json.loads((SCHEMAS_DIR / "evaluation.json").read_text())
    path = tmp_path / "gates.json"
    path.write_text(json.dumps({**raw, **change}))
    with pytest.raises(UserError) as caught:
        EvaluationConfig.load(CLASSES, SPLITS, path)
    assert complaint in str(caught.value)


def test_a_bad_gating_config_stops_the_command_line_before_any_work(tmp_path):
    raw = json.loads((SCHEMAS_DIR / "evaluation.json").read_text())
    path = tmp_path / "gates.json"
    path.write_text(json.dumps({**raw, "floors": {"auc": 0.5}}))
    complaint = f"Gating config {path} is wrong: floors names the metric 'auc'"
    result = subprocess.run([sys.executable, "-m", "pipeline.run", "--evaluation-config",
                             str(path), "--pipeline-root", str(tmp_path / "root")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert complaint in " ".join(result.stderr.split())
    assert not (tmp_path / "root").exists()  # refused before any work, training included


def test_predict_reads_images_and_csv(tmp_path, capsys):
    import matplotlib.pyplot as plt

    from pipeline.predict import main as predict_main

    serving_dir = tmp_path / "serving"
    pusher.run(known_model(tmp_path / "model"), str(serving_dir), "fer",
               {"blessed": True, "reasons": []}, str(tmp_path))
    plt.imsave(tmp_path / "face.png", np.zeros((96, 96)), cmap="gray")  # any size, RGBA
    rows = ["emotion,pixels"] + [f"0,{' '.join(['9', str(c)] + ['9'] * 2302)}" for c in (3, 5)]
    (tmp_path / "faces.csv").write_text("\n".join(rows) + "\n")

    def predict(*inputs, model=serving_dir / "fer"):
        return subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(model),
                               "--no-detect", *map(str, inputs)], capture_output=True, text=True,
                              timeout=120)

    def predict_here(*inputs, model=serving_dir / "fer"):
        """The same command's main() in this process, for its refusals: no fresh interpreter."""
        capsys.readouterr()
        code = predict_main(["--model", str(model), "--no-detect", *map(str, inputs)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(inputs, code, out, err)

    result = predict(tmp_path / "face.png", tmp_path / "faces.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:3] for line in lines] == [
        [str(tmp_path / "face.png"), "Angry", "0.35"],  # black: pixel 1 is 0
        [f"{tmp_path / 'faces.csv'}:2", "Happy", "0.35"],
        [f"{tmp_path / 'faces.csv'}:3", "Surprise", "0.35"]]
    assert "Neutral 0.11" in lines[0]

    missing = predict_here(tmp_path / "x.png", model=tmp_path / "nowhere")
    assert missing.returncode == 2 and "neither a SavedModel" in " ".join(missing.stderr.split())
    (tmp_path / "notes.txt").write_text("hello")
    other = predict_here(tmp_path / "notes.txt")
    assert other.returncode == 2 and "neither an image" in " ".join(other.stderr.split())
    assert "Traceback" not in missing.stderr + other.stderr


def test_report_shows_blessing_reasons_and_plots(tmp_path):
    evaluation = {
        "model": "m", "baseline": None, "split": "test", "examples": 35, "blessed": False,
        "reasons": ["accuracy of class Fear is 0.250, below its floor of 0.500"],
        "metrics": {"candidate": {"accuracy": 0.6, "macro_accuracy": 0.55,
                                  "class_accuracy": dict(zip(CLASSES, [1, .8, .25, .5, 1, 0, .3]))}},
        "confusion_matrix": np.eye(7, dtype=int).tolist(), "classes": list(CLASSES),
        "gates": {"floors": {"class_accuracy": {"default": 0.2, "Fear": 0.5}}},
        # A class all right: Wilson's upper bound in floats is a hair below its accuracy of 1.
        "intervals": {"Angry": {"low": 0.72, "high": 1 - 2e-16},
                      "Fear": {"low": 0.05, "high": 0.6}},
    }
    history = tmp_path / "history.csv"
    history.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.2,2,0.3,1.9\n1,0.5,1,0.6,1\n")
    training = {"best_epoch": 2, "epochs_run": 2, "warm_start": {"base_model": "serving/fer/1"},
                "batch_norm_gap": {"inference_mode": 0.6, "training_mode": 0.62, "gap": 0.02}}
    page = report.write(str(tmp_path / "reports" / "r.html"), evaluation, str(history),
                        str(tmp_path / "Split-train" / "stats.html"), {"pushed": False}, training)
    text = open(page).read()
    assert "NOT BLESSED" in text and "accuracy of class Fear is 0.250" in text
    assert "started from</td><td>serving/fer/1" in text and "0.600 / 0.620 (gap +0.020)" in text
    assert text.count("data:image/png;base64,") == 3  # confusion, per class, curves
    assert 'href="../Split-train/stats.html"' in text  # relative: the root can be moved


def test_report_shows_the_most_confident_mistakes_of_a_real_model(tmp_path):
    examples, labels, predicted = known_examples(tmp_path / "examples")
    evaluation = evaluator.run(known_model(tmp_path / "model"), examples, str(tmp_path / "eval"),
                               gates(floors=NO_FLOORS), CLASSES)
    page = report.write(str(tmp_path / "r.html"), evaluation, str(tmp_path / "none.csv"),
                        str(tmp_path / "data.html"), {"pushed": False},
                        {"best_epoch": 1, "epochs_run": 1}, examples_dir=examples)
    text = open(page).read()
    assert "Most confident mistakes on the test split" in text
    assert text.count("data:image/png;base64,") == 3  # confusion, per class, mistakes
    # Which faces: every wrong one of each class here (all equally confident), in file order.
    probabilities = np.eye(7)[predicted] * 0.3 + 0.1
    chosen = report.most_confident_mistakes(labels, probabilities, 7, 4)
    assert [len(c) for c in chosen] == [min(n - k, 4) for n, k in zip(PER_CLASS, RIGHT)]
    assert all(labels[i] == c and predicted[i] != c for c, found in enumerate(chosen)
               for i in found)
    probabilities[chosen[2][1]] *= 2  # one mistake made more confidently comes first
    assert report.most_confident_mistakes(labels, probabilities, 7, 4)[2][0] == chosen[2][1]


@pytest.mark.slow  # whole runs
def test_the_command_line_pushes_a_blessed_model_and_keeps_it_when_gates_rise(tmp_path):
    data = default_data.write_csv(tmp_path / "faces.csv", rows=900, seed=11)
    lenient = tmp_path / "lenient.json"
    raw = json.loads((SCHEMAS_DIR / "evaluation.json").read_text())
    lenient.write_text(json.dumps({**raw, "floors": NO_FLOORS, "max_drop_vs_serving": {}}))
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({**raw, "floors": {"accuracy": 0.999}}))
    common = ["--data", str(data), "--pipeline-root", str(tmp_path / "root"), "--serving-dir",
              str(tmp_path / "serving"), "--epochs", "1", "--batch-size", "32"]

    def run(gates_file, *extra):
        return subprocess.run([sys.executable, "-m", "pipeline.run", *common,
                               "--evaluation-config", str(gates_file), *extra],
                              capture_output=True, text=True, timeout=600)

    first = run(lenient)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Evaluator: BLESSED" in first.stdout and "now serving version 1" in first.stdout
    version_1 = tmp_path / "serving" / "fer" / "1"
    stamp = (version_1 / "saved_model.pb").stat().st_mtime_ns
    second = run(strict, "--epochs", "2")  # a new model, judged by raised gates
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Evaluator: NOT BLESSED" in second.stdout
    assert "overall accuracy is" in second.stdout and "below its floor of 0.999" in second.stdout
    assert f"still serving {version_1}" in second.stdout
    assert serving.versions(tmp_path / "serving" / "fer") == [1]
    assert (version_1 / "saved_model.pb").stat().st_mtime_ns == stamp
    reports = sorted((tmp_path / "root" / "Report").glob("*/report.html"))
    assert len(reports) == 2 and "NOT BLESSED" in reports[-1].read_text()
    # The pushed model serves a face read from the CSV through predict.
    answer = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model",
                             str(tmp_path / "serving" / "fer"), str(data)],
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    lines = answer.stdout.strip().splitlines()
    assert len(lines) == 900 and all(line.split()[1] in CLASSES for line in lines)


@pytest.mark.slow  # a model exported, a process of its own
def test_predict_names_the_classes_the_model_carries(tmp_path):
    """An 8-class model (FER+ adds Contempt): predict reads the names from the model it loads,
    not from the checkout's configuration."""
    from components import model as cnn, trainer

    ingest = dataclasses.replace(IngestConfig.load(), classes=(*CLASSES, "Contempt"))
    trainer._export(cnn.build_cnn(48, 8), str(tmp_path / "model"), ingest)
    rows = ["pixels", " ".join(["9"] * 2304)]
    (tmp_path / "faces.csv").write_text("\n".join(rows) + "\n")
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model",
                             str(tmp_path / "model"), "--json", str(tmp_path / "faces.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    [face] = json.loads(result.stdout)["faces"]
    assert list(face["probabilities"]) == [*CLASSES, "Contempt"]
