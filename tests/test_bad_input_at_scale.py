"""A 100 MB CSV with 0.5% malformed rows of every kind, through the real command: every bad row
is quarantined with its reason, every good row is written, byte for byte, to its split."""
import collections
import glob
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import IngestConfig

pytestmark = pytest.mark.slow  # 100 MB of input

TARGET_BYTES = 100_000_000
USAGE = {"Training": "train", "PublicTest": "eval", "PrivateTest": "test"}
# kind -> (how a good row is spoiled, words its quarantine reason must hold)
SPOILERS = {
    "too few values": (lambda l, p, u: f"{l},{p.rsplit(' ', 1)[0]},{u}", "found 2303 pixel"),
    "too many values": (lambda l, p, u: f"{l},{p} 17,{u}", "found 2305 pixel"),
    "out of range": (lambda l, p, u: f"{l},256 {p.split(' ', 1)[1]},{u}", "outside 0-255"),
    "negative": (lambda l, p, u: f"{l},-1 {p.split(' ', 1)[1]},{u}", "non-integer value '-1'"),
    "non-numeric": (lambda l, p, u: f"{l},{p[:20]} x7 {p[20:].split(' ', 1)[1]},{u}",
                    "non-integer value 'x7'"),
    "float": (lambda l, p, u: f"{l},1.5 {p.split(' ', 1)[1]},{u}", "non-integer value '1.5'"),
    "label out of range": (lambda l, p, u: f"7,{p},{u}", "is not a class id"),
    "label not a number": (lambda l, p, u: f"happy,{p},{u}", "is not a class id"),
    "unknown Usage": (lambda l, p, u: f"{l},{p},Validation", "Usage 'Validation' is not"),
    "extra column": (lambda l, p, u: f"{l},{p},{u},extra", "expected 3 fields"),
    "missing column": (lambda l, p, u: f"{l},{p}", "expected 3 fields"),
    "empty label": (lambda l, p, u: f",{p},{u}", "empty emotion"),
    "empty pixels": (lambda l, p, u: f"{l},,{u}", "empty pixels"),
    "empty Usage": (lambda l, p, u: f"{l},{p},", "Usage '' is not"),
}


def test_a_100_mb_csv_with_half_a_percent_bad_rows_of_every_kind(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "big.csv"
    good, bad = collections.Counter(), {}  # (split, label, sha1 of pixels) -> n; line -> words
    per_kind = collections.Counter()
    kinds = list(SPOILERS)
    written_bytes, line = 0, 1
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        while written_bytes < TARGET_BYTES:
            line += 1
            pixels = rng.integers(0, 256, 2304, dtype=np.uint8)
            label, usage = int(rng.integers(0, 7)), list(USAGE)[line % 3]
            text = " ".join(map(str, pixels.tolist()))
            if line % 200 == 0:  # 0.5%, the kinds in turn
                kind = kinds[(line // 200) % len(kinds)]
                spoil, words = SPOILERS[kind]
                row = spoil(label, text, usage)
                bad[line] = words
                per_kind[kind] += 1
            else:
                row = f"{label},{text},{usage}"
                good[(USAGE[usage], label, hashlib.sha1(pixels.tobytes()).hexdigest())] += 1
            f.write(row + "\n")
            written_bytes += len(row) + 1
    assert path.stat().st_size >= TARGET_BYTES and min(per_kind[k] for k in kinds) >= 4

    root = tmp_path / "root"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--data", str(path), "--pipeline-root", str(root),
         "--stop-after", "ExampleGen"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [counts_file] = glob.glob(str(root / "ExampleGen" / "*" / "counts.json"))
    counts = json.loads(open(counts_file).read())
    assert counts["rows_read"] == line - 1
    assert counts["quarantined"] == len(bad)
    assert sum(counts["written"].values()) == sum(good.values())

    quarantined = {}
    for part in glob.glob(str(root / "ExampleGen" / "*" / "quarantine" / "*.jsonl")):
        for record in map(json.loads, open(part)):
            quarantined[record["line"]] = record["reason"]
    assert quarantined.keys() == bad.keys()
    wrong = {n: (quarantined[n], words) for n, words in bad.items() if words not in quarantined[n]}
    assert not wrong, list(wrong.items())[:5]

    found = collections.Counter()
    for split in IngestConfig.load().splits:
        files = glob.glob(str(root / "ExampleGen" / "*" / f"Split-{split}" / "*.tfrecord.gz"))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            features = tf.train.Example.FromString(record.numpy()).features.feature
            pixels = np.array(features["pixels"].int64_list.value, np.uint8)
            found[(split, features["emotion"].int64_list.value[0],
                   hashlib.sha1(pixels.tobytes()).hexdigest())] += 1
    assert found == good
