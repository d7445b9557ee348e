"""The built-in synthetic faces: deterministic, FER-shaped, learnable but not trivially."""
import numpy as np
import pytest

from components import example_gen
from pipeline import default_data
from pipeline.config import load_json


def test_same_seed_same_bytes_other_seed_other_faces(tmp_path):
    a = default_data.write_csv(tmp_path / "a.csv", 40, seed=3).read_bytes()
    b = default_data.write_csv(tmp_path / "b.csv", 40, seed=3).read_bytes()
    c = default_data.write_csv(tmp_path / "c.csv", 40, seed=4).read_bytes()
    assert a == b and a != c


def test_generated_csv_is_valid_fer_and_ingests_without_loss(tmp_path, config):
    path = default_data.write_csv(tmp_path / "faces.csv.gz", 300, seed=0)
    counts = example_gen.run(str(path), str(tmp_path / "out"), config)
    assert counts["quarantined"] == 0 and sum(counts["written"].values()) == 300


@pytest.fixture(scope="module")
def sample():
    """2400 generated faces (labels, images scaled to 0-1): both statistical tests below read
    them, rather than each drawing its own thousands."""
    labels, images = zip(*((l, im) for l, im, _ in default_data.generate(2400, seed=6)))
    return np.array(labels), np.stack(images).astype(np.float32) / 255


def test_class_imbalance_follows_fer2013(sample):
    labels, _ = sample
    counts = np.asarray(load_json("default_data.json")["fer2013_train_class_counts"], float)
    shares = np.bincount(labels, minlength=7) / len(labels)
    np.testing.assert_allclose(shares, counts / counts.sum(), atol=0.03)
    assert shares[1] < 0.04  # Disgust is rare, as in FER2013


def test_learnable_but_not_trivially(sample):
    """A linear model beats the majority class clearly, yet stays far from perfect."""
    labels, images = sample
    # 12x12 block means: a small feature space a linear model can fit in a second.
    x = images.reshape(-1, 12, 4, 12, 4).mean(axis=(2, 4)).reshape(len(labels), -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x = np.hstack([x, np.ones((len(x), 1))])
    train, test = slice(0, 2000), slice(2000, None)
    w = np.zeros((x.shape[1], 7))
    onehot = np.eye(7)[labels[train]]
    for _ in range(300):  # softmax regression, plain gradient descent
        logits = x[train] @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.5 * x[train].T @ (p - onehot) / 2000
    accuracy = np.mean(np.argmax(x[test] @ w, 1) == labels[test])
    majority = np.mean(labels[test] == np.bincount(labels[train]).argmax())
    assert accuracy > majority + 0.05, (accuracy, majority)
    assert accuracy < 0.9, accuracy


def test_the_header_is_the_ingestion_configs(tmp_path):
    """Column names come from the ingestion config the run uses, not from a second copy here."""
    import dataclasses

    from pipeline.config import IngestConfig

    ingest = dataclasses.replace(IngestConfig.load(), label_column="Expression",
                                 pixels_column="Image", usage_column="Set")
    path = default_data.write_csv(tmp_path / "faces.csv", rows=3, seed=1, ingest=ingest)
    assert path.read_text().splitlines()[0] == "Expression,Image,Set"
