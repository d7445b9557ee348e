"""StatisticsGen, SchemaGen and ExampleValidator with real TFDV: each anomaly made to happen."""
import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from components import example_validator, schema_gen, statistics_gen
from pipeline import metadata
from pipeline.config import SCHEMAS_DIR, load_json
from tests.helpers import write_csv

POLICY = load_json("validation.json")
SPLITS = ("train", "eval", "test")


def faces(n: int, seed: int, labels=None, black: int = 0) -> list[tuple[int, np.ndarray]]:
    """n noise images of varied brightness and contrast, as faces have; classes in turn (or
    `labels`); the first `black` images all zero."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        level, spread = rng.uniform(60, 190), rng.uniform(20, 60)
        pixels = np.zeros(2304, np.int64) if i < black else np.clip(
            rng.normal(level, spread, 2304), 0, 255).astype(np.int64)
        rows.append((labels[i % len(labels)] if labels else i % 7, pixels))
    return rows


def write_examples(root, rows_by_split) -> str:
    """Examples written directly, as any producer could: the schema is the last line of defence."""
    for split, rows in rows_by_split.items():
        os.makedirs(root / f"Split-{split}", exist_ok=True)
        path = str(root / f"Split-{split}" / "data-00000-of-00001.tfrecord.gz")
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for label, pixels in rows:
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    "emotion": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    "pixels": tf.train.Feature(int64_list=tf.train.Int64List(value=pixels)),
                })).SerializeToString())
    return str(root)


def statistics(tmp_path, name, rows_by_split) -> dict[str, str]:
    examples = write_examples(tmp_path / name / "examples", rows_by_split)
    out = tmp_path / name / "stats"
    return statistics_gen.run(examples, str(out), list(rows_by_split), POLICY["exposure"],
                              schema_gen.load_curated(SCHEMAS_DIR / "schema.pbtxt"))


def validate(tmp_path, rows_by_split, policy=POLICY, previous=None):
    stats = statistics(tmp_path, "now", rows_by_split)
    out = tmp_path / "validator"
    out.mkdir(exist_ok=True)
    return example_validator.run(stats, str(SCHEMAS_DIR / "schema.pbtxt"), str(out), policy,
                                 previous)


def clean(seed=0):
    return {split: faces(280, seed + k) for k, split in enumerate(SPLITS)}


@pytest.fixture(scope="module")
def clean_statistics(tmp_path_factory):
    """Statistics of clean() (one TFDV run), read by the tests that validate clean data:
    (stats file per split, their folder)."""
    root = tmp_path_factory.mktemp("clean")
    return statistics(root, "now", clean()), root / "now" / "stats"


def validate_statistics(tmp_path, stats, policy=POLICY, previous=None):
    """The ExampleValidator alone, on statistics already computed."""
    out = tmp_path / "validator"
    out.mkdir(exist_ok=True)
    return example_validator.run(stats, str(SCHEMAS_DIR / "schema.pbtxt"), str(out), policy,
                                 previous)


def test_clean_data_passes_and_statistics_are_browsable(clean_statistics, tmp_path):
    stats, stats_dir = clean_statistics
    assert validate_statistics(tmp_path, stats) == []
    html = (stats_dir / "Split-train" / "statistics.html").read_text()
    assert "facets" in html.lower()
    assert (stats_dir / "train_vs_eval.html").exists()
    train = tfdv.load_stats_binary(str(stats_dir / "Split-train" / "FeatureStats.pb"))
    features = {f.path.step[0]: f for f in train.datasets[0].features}
    assert {"emotion", "pixels", "mean_brightness", "contrast", "exposure"} <= set(features)
    assert train.datasets[0].num_examples == 280
    assert features["pixels"].num_stats.common_stats.min_num_values == 2304
    assert 100 < features["mean_brightness"].num_stats.mean < 155  # levels drawn from 60-190


def stop_findings(error) -> str:
    return str(error.value)


@pytest.mark.slow  # one more validation
def test_label_out_of_domain_stops_the_run(tmp_path):
    rows = clean()
    rows["train"][3] = (9, rows["train"][3][1])
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows)
    assert "[schema] train, feature 'emotion'" in stop_findings(caught)


@pytest.mark.slow  # two more validations
@pytest.mark.parametrize("bad_pixels", [np.full(2303, 100), np.full(2304, 300)],
                         ids=["2303 values", "value 300"])
def test_pixel_count_and_range_are_enforced_by_the_schema(tmp_path, bad_pixels):
    rows = clean()
    rows["test"][5] = (rows["test"][5][0], bad_pixels)
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows)
    assert "[schema] test, feature 'pixels'" in stop_findings(caught)


@pytest.mark.slow  # one more validation
def test_a_dataset_of_black_images_stops_the_run(tmp_path):
    rows = {split: faces(280, k, black=60) for k, split in enumerate(SPLITS)}
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows)
    message = stop_findings(caught)
    assert "feature 'exposure'" in message and "dark" in message


@pytest.mark.slow  # one more validation
def test_a_few_blank_images_are_tolerated(tmp_path):
    """FER2013 itself holds a few blank faces: under 1% of a split passes."""
    rows = {split: faces(280, k, black=2 if split == "train" else 0)
            for k, split in enumerate(SPLITS)}
    assert validate(tmp_path, rows) == []


def test_a_class_missing_from_a_split_stops_the_run(tmp_path):
    rows = clean()
    rows["eval"] = faces(280, 9, labels=[0, 2, 3, 4, 5, 6])
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows)
    assert "[missing_class] eval" in stop_findings(caught) and "[1]" in stop_findings(caught)


def test_label_skew_between_train_and_eval_stops_the_run(tmp_path):
    rows = clean()
    rows["eval"] = faces(280, 9, labels=[3, 3, 3, 0, 1, 2, 4, 5, 6])  # Happy 3x as common
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows)
    message = stop_findings(caught)
    assert "[skew] train vs eval, feature 'emotion'" in message
    assert "missing_class" not in message  # every class is there, only the shares moved


@pytest.mark.slow  # one more validation
def test_skew_can_be_set_to_warn(tmp_path):
    rows = clean()
    rows["eval"] = faces(280, 9, labels=[3, 3, 3, 0, 1, 2, 4, 5, 6])
    policy = {**POLICY, "on_anomaly": {**POLICY["on_anomaly"], "skew": "warn"}}
    findings = validate(tmp_path, rows, policy)
    assert [(f["check"], f["feature"], f["action"]) for f in findings] == [
        ("skew", "emotion", "warn")]
    report = json.loads((tmp_path / "validator" / "anomalies.json").read_text())
    assert report["findings"] == findings


@pytest.mark.slow  # two ingestions and statistics; skew's weighing is fast-tested above
def test_drift_from_the_previous_run_stops_the_run(clean_statistics, tmp_path):
    previous = statistics(tmp_path, "before", clean(seed=20))["train"]
    # Same distribution: no drift.
    assert validate_statistics(tmp_path, clean_statistics[0], previous=previous) == []
    rows = clean()
    rows["train"] = [(label, 255 - p // 3) for label, p in rows["train"]]  # far brighter images
    rows["eval"] = [(label, 255 - p // 3) for label, p in rows["eval"]]
    rows["test"] = [(label, 255 - p // 3) for label, p in rows["test"]]
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows, previous=previous)
    message = stop_findings(caught)
    assert "[drift] train vs previous run, feature 'mean_brightness'" in message
    assert "[skew]" not in message  # all splits moved together


SHARES = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965]) / 28709  # FER2013's train split


def drawn_labels(n: int, seed: int, shares=SHARES) -> list[int]:
    return list(np.random.default_rng(seed).choice(7, size=n, p=shares))


def test_sampling_noise_in_a_small_span_warns_nothing_and_stops_nothing(tmp_path):
    """30 test faces drawn like 240 train faces differ in their class shares by more than the
    schema's 0.1 from sampling alone; the chi-square test on the counts says it is noise."""
    rows = {"train": faces(240, 0, labels=drawn_labels(240, 1)),
            "eval": faces(30, 1, labels=drawn_labels(30, 10)),
            "test": faces(30, 2, labels=drawn_labels(30, 18), black=1)}
    findings = validate(tmp_path, rows)
    noise = [f for f in findings if f["check"] == "skew" and f["feature"] == "emotion"]
    assert noise, findings  # TFDV's distance alone would stop this run
    assert all(f["action"] == "noise" and f["p_value"] >= POLICY["significance_level"]
               and "within sampling noise for 240 vs 30 examples" in f["what"] for f in noise)
    # One black face of 30 is 3% of the split where 1% may be badly exposed: chance, too.
    [dark] = [f for f in findings if f["check"] == "schema" and f["feature"] == "exposure"]
    assert dark["action"] == "noise" and "1 of 30 examples, 1% allowed" in dark["what"]
    # Disgust (1.5%) is absent from the 30-face splits, as it is by chance in 63% of them.
    missing = [f for f in findings if f["check"] == "missing_class"]
    assert missing and all(f["action"] == "noise" and "[1]" in f["what"] for f in missing)
    assert not [f for f in findings if f["action"] == "stop"]


@pytest.mark.slow  # three more statistics, one of 1,000 faces
def test_a_small_span_that_really_changed_stops_the_run(tmp_path):
    """Against a previous run of 1,000 faces, 240 faces whose Happy share grew by 15 points, or
    whose images are 20 grey levels darker, are a real change: the run stops."""
    previous = statistics(tmp_path, "before", {"train": faces(1000, 20, labels=drawn_labels(
        1000, 21))})["train"]
    happier = SHARES * (1 - 0.15 / (1 - SHARES[3]))
    happier[3] = SHARES[3] + 0.15
    rows = {split: faces(240 if split == "train" else 30, k, labels=drawn_labels(
        240 if split == "train" else 30, 5 + k, happier)) for k, split in enumerate(SPLITS)}
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path, rows, previous=previous)
    message = stop_findings(caught)
    assert "[drift] train vs previous run, feature 'emotion'" in message
    assert "not sampling noise (1,000 vs 240 examples" in message
    darker = {split: [(label, np.clip(p - 20, 0, 255)) for label, p in faces(
        240 if split == "train" else 30, k, labels=drawn_labels(240, 30 + k))]
        for k, split in enumerate(SPLITS)}
    with pytest.raises(example_validator.DataValidationError) as caught:
        validate(tmp_path / "darker", darker, previous=previous)
    assert "[drift] train vs previous run, feature 'mean_brightness'" in stop_findings(caught)
    assert "feature 'emotion'" not in stop_findings(caught)


@pytest.mark.slow  # a whole command; the validator's stops are unit-tested above
def test_planted_anomaly_stops_the_cli_before_training(tmp_path, capsys, monkeypatch):
    header = "emotion,pixels,Usage"
    lines = [f"{i % 7},{' '.join(['0'] * 2304)},{('Training', 'PublicTest', 'PrivateTest')[i % 3]}"
             for i in range(63)]
    data = write_csv(tmp_path / "black.csv", lines, header=header)
    # pipeline.run's main() in this process (test_cli runs the real command): what it prints and
    # returns; its Ctrl-C/SIGTERM handlers are undone after.
    import signal

    from pipeline.run import main

    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    capsys.readouterr()
    try:
        code = main(["--data", str(data), "--pipeline-root", str(tmp_path / "root")])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    result = subprocess.CompletedProcess([], code, *capsys.readouterr())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith("error: ExampleValidator stopped the run before training")
    assert "feature 'exposure'" in message
    page = tmp_path / "root" / "DataPage" / "1" / "data.html"
    assert message.endswith(f"The data page shows them: {page}")  # what stopped it, to look at
    assert "exposure" in page.read_text() and 'class="stop"' in page.read_text()
    assert not (tmp_path / "root" / "Trainer").exists()
    # The findings are kept (as TFX's ExampleValidator keeps its anomalies), never as data that
    # passed: the same data again stops the same way, from the recorded validation.
    store = metadata.Store(str(tmp_path / "root"))
    assert not list(store._validated_statistics())


def test_the_data_page_shows_counts_features_faces_and_findings_offline(tmp_path):
    from pipeline import data_page
    from pipeline.config import IngestConfig

    rows = {"train": faces(70, 0, labels=[0, 3, 3, 6]), "eval": faces(21, 1), "test": faces(14, 2)}
    stats = statistics(tmp_path, "now", rows)
    examples = str(tmp_path / "now" / "examples")
    finding = {"check": "drift", "split": "train vs previous run", "feature": "contrast",
               "what": "L-infinity distance <b>0.4</b>", "action": "warn"}
    pages = {s: os.path.join(os.path.dirname(p), "statistics.html") for s, p in stats.items()}
    classes = IngestConfig.load().classes
    page = data_page.write(str(tmp_path / "validator" / "data.html"), stats, examples, classes,
                           48, [finding], pages)
    text = open(page).read()
    # Counts from TFDV's statistics: train has 18 Angry, 35 Happy (twice in the label cycle),
    # 17 Neutral; eval cycles through all 7 classes, 3 each.
    assert "<tr><td>train</td><td>70</td><td>18</td><td>0</td><td>0</td><td>35</td>" in text
    assert "<tr><td>eval</td><td>21</td>" + "<td>3</td>" * 7 + "</tr>" in text
    assert text.count("data:image/png;base64,") == 4  # classes, features, exposure, faces
    assert "L-infinity distance &lt;b&gt;0.4&lt;/b&gt;" in text  # escaped
    assert 'href="../now/stats/Split-train/statistics.html"' in text  # relative
    assert "http" not in text.replace("they load their viewer from the web", "")  # offline
    assert data_page._class_counts(tfdv.load_stats_binary(stats["train"]).datasets[0], 7) == [
        18, 0, 0, 35, 0, 0, 17]


def test_the_label_domain_comes_from_the_classes(tmp_path):
    """The curated schema says 0-6; an ingestion config with an 8th class widens the schema in
    force, so an 8-class dataset needs no schema edit."""
    stats = statistics(tmp_path, "now", {"train": faces(16, 0, labels=list(range(8)))})
    path, curated = schema_gen.run(stats["train"], str(tmp_path), str(SCHEMAS_DIR / "schema.pbtxt"),
                                   tuple(f"c{i}" for i in range(8)))
    domain = tfdv.get_feature(tfdv.load_schema_text(path), "emotion").int_domain
    assert curated and (domain.min, domain.max, domain.is_categorical) == (0, 7, True)
    out = tmp_path / "validator"
    out.mkdir()
    assert example_validator.run(stats, path, str(out), {**POLICY, "skew_against_train": []}) == []
