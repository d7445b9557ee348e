"""ExampleGen as a real Beam pipeline on tiny CSVs: splits, variants, quarantine, errors."""
import dataclasses
import glob
import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import example_gen
from pipeline.errors import UserError
from tests.helpers import pixel_text, pixels_for, valid_rows, write_csv

SPEC = {"emotion": tf.io.FixedLenFeature([1], tf.int64),
        "pixels": tf.io.FixedLenFeature([2304], tf.int64)}


def read_split(out, split) -> list[tuple[int, np.ndarray]]:
    files = sorted(glob.glob(os.path.join(out, f"Split-{split}", "*.tfrecord.gz")))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [(int(r["emotion"][0]), r["pixels"].numpy())
            for r in records.map(lambda x: tf.io.parse_single_example(x, SPEC))]


def quarantine(out) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(out, "quarantine", "*.jsonl")):
        rows += [json.loads(line) for line in open(path)]
    return sorted(rows, key=lambda r: (r["file"], r["line"]))


def test_usage_maps_to_splits_and_examples_round_trip(tmp_path, config):
    data = write_csv(tmp_path / "fer.csv", valid_rows(30))
    counts = example_gen.run(str(data), str(tmp_path / "out"), config)
    assert counts["written"] == {"train": 10, "eval": 10, "test": 10}
    assert counts["rows_read"] == 30 and counts["quarantined"] == 0
    # Usage cycles Training, PublicTest, PrivateTest: row i goes to split i % 3.
    for split, offset in (("train", 0), ("eval", 1), ("test", 2)):
        got = sorted(read_split(tmp_path / "out", split), key=lambda r: r[1].tolist())
        want = sorted(((i % 7, pixels_for(i)) for i in range(offset, 30, 3)),
                      key=lambda r: r[1].tolist())
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_array_equal(np.stack([g[1] for g in got]), np.stack([w[1] for w in want]))
    saved = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert saved["written"] == counts["written"]


def test_entries_of_the_folder_that_are_not_read_are_recorded(tmp_path, config, capsys):
    data = tmp_path / "drop"
    data.mkdir()
    write_csv(data / "a.csv", valid_rows(6))
    (data / "gone.csv").symlink_to(data / "moved.csv")
    (data / "older").mkdir()
    counts = example_gen.run(str(data), str(tmp_path / "out"), config)
    assert list(counts["files"]) == [str(data / "a.csv")] and counts["rows_read"] == 6
    skipped = {str(data / "gone.csv"): f"a broken symbolic link to {data / 'moved.csv'}",
               str(data / "older"): "a folder: only the files directly in the input folder are "
                                    "read"}
    assert counts["skipped"] == skipped
    assert json.loads((tmp_path / "out" / "counts.json").read_text())["skipped"] == skipped
    assert f"skipped: {data / 'gone.csv'} (a broken symbolic link" in capsys.readouterr().out


def test_two_column_file_is_hash_split_deterministically(tmp_path, config):
    data = write_csv(tmp_path / "fer.csv", valid_rows(200, usage=False), header="emotion,pixels")
    first = example_gen.run(str(data), str(tmp_path / "a"), config)
    second = example_gen.run(str(data), str(tmp_path / "b"), config)
    assert first["written"] == second["written"]
    assert sum(first["written"].values()) == 200 and min(first["written"].values()) > 0
    for split in config.splits:
        a = {r[1].tobytes() for r in read_split(tmp_path / "a", split)}
        assert a == {r[1].tobytes() for r in read_split(tmp_path / "b", split)}


def test_header_variant_crlf_bom_and_quotes(tmp_path, config):
    lines = [f'{i % 7},{["Training", "PublicTest", "PrivateTest"][i % 3]},"{pixel_text(i)}"'
             for i in range(12)]
    data = write_csv(tmp_path / "fer.csv", lines, header="emotion, Usage, pixels",
                     newline="\r\n", bom=True)
    counts = example_gen.run(str(data), str(tmp_path / "out"), config)
    assert counts["written"] == {"train": 4, "eval": 4, "test": 4}
    assert counts["quarantined"] == 0


def test_glob_of_gzip_and_plain_shards_with_own_column_orders(tmp_path, config):
    write_csv(tmp_path / "part-0.csv.gz", valid_rows(9))
    reordered = [f"{r.split(',')[2]},{r.split(',')[1]},{r.split(',')[0]}"
                 for r in valid_rows(6, start=9)]
    write_csv(tmp_path / "part-1.csv", reordered, header="Usage,pixels,emotion")
    # A gzip shard without the .gz suffix is recognised by its content.
    (tmp_path / "part-2.csv").write_bytes(
        gzip.compress(("emotion,pixels,Usage\n" + "\n".join(valid_rows(3, start=15)) + "\n").encode()))
    counts = example_gen.run(str(tmp_path / "part-*"), str(tmp_path / "out"), config)
    assert counts["rows_read"] == 18 and sum(counts["written"].values()) == 18
    assert sorted(os.path.basename(p) for p in counts["files"]) == [
        "part-0.csv.gz", "part-1.csv", "part-2.csv"]
    labels = sorted(label for s in config.splits for label, _ in read_split(tmp_path / "out", s))
    assert labels == sorted(i % 7 for i in range(18))


BAD_ROWS = {
    "wrong count": "1," + " ".join(["5"] * 2000) + ",Training",
    "out of range": "1," + " ".join(["300"] * 2304) + ",Training",
    "non-numeric": "1," + " ".join(["a"] * 2304) + ",Training",
    "bad label": f"9,{pixel_text(0)},Training",
    "unknown usage": f"1,{pixel_text(0)},Holdout",
    "extra column": f"1,{pixel_text(0)},Training,x",
    "empty fields": ",,",
}


def test_bad_rows_are_quarantined_with_line_and_reason(tmp_path, config):
    lines = valid_rows(20)
    for n, bad in enumerate(BAD_ROWS.values()):
        lines.insert(2 * n + 1, bad)
    lines.insert(5, "")  # a blank line is skipped and counted, not quarantined
    data = write_csv(tmp_path / "fer.csv", lines)
    counts = example_gen.run(str(data), str(tmp_path / "out"),
                             dataclasses.replace(config, max_bad_row_fraction=0.5))
    assert counts["rows_read"] == 28 and counts["blank_lines"] == 1
    assert sum(counts["written"].values()) == 20 and counts["quarantined"] == 7
    bad = quarantine(tmp_path / "out")
    # File line numbers: line 1 is the header, so list index k is line k + 2.
    assert [r["line"] for r in bad] == [lines.index(b) + 2 for b in BAD_ROWS.values()]
    assert [r["row"] for r in bad] == list(BAD_ROWS.values())
    reasons = [r["reason"] for r in bad]
    assert reasons[0] == "found 2000 pixel values, expected 2304 (48x48)"
    assert reasons[1] == "pixel 0 has the value 300, outside 0-255"
    assert reasons[4].startswith("Usage 'Holdout'") and "found 4" in reasons[5]


def test_too_many_bad_rows_stop_the_run_and_point_to_the_quarantine(tmp_path, config):
    data = write_csv(tmp_path / "fer.csv", valid_rows(30) + list(BAD_ROWS.values())[:2])
    with pytest.raises(UserError) as caught:
        example_gen.run(str(data), str(tmp_path / "out"), config)
    message = str(caught.value)
    assert "2 of 32 rows (6.25%)" in message and "1.00%" in message
    assert os.path.join(str(tmp_path / "out"), "quarantine") in message
    assert len(quarantine(tmp_path / "out")) == 2


def test_no_valid_row_is_an_error(tmp_path, config):
    data = write_csv(tmp_path / "fer.csv", list(BAD_ROWS.values()))
    with pytest.raises(UserError, match="No valid row"):
        example_gen.run(str(data), str(tmp_path / "out"), config)


def test_missing_split_is_an_error(tmp_path, config):
    data = write_csv(tmp_path / "fer.csv", [f"{i % 7},{pixel_text(i)},Training" for i in range(9)])
    with pytest.raises(UserError, match="eval, test split"):
        example_gen.run(str(data), str(tmp_path / "out"), config)


def test_small_chunks_keep_line_numbers_and_counts_exact(tmp_path, config):
    lines = valid_rows(60)
    for k in (7, 23, 41, 58):
        lines[k] = f"8,{pixel_text(k)},Training"
    data = write_csv(tmp_path / "fer.csv", lines)
    small = dataclasses.replace(config, chunk_bytes=20_000, max_bad_row_fraction=0.2)
    chunks, n_lines = example_gen._index(str(data), small)
    assert n_lines == 60 and len(chunks) > 10
    counts = example_gen.run(str(data), str(tmp_path / "out"), small)
    assert sum(counts["written"].values()) == 56
    assert [r["line"] for r in quarantine(tmp_path / "out")] == [9, 25, 43, 60]


def test_an_endless_line_after_the_header_is_quarantined(tmp_path, config):
    data = tmp_path / "fer.csv"
    data.write_bytes(("emotion,pixels,Usage\n" + "\n".join(valid_rows(60)) + "\n").encode()
                     + b"1 " * 1_000_000)
    counts = example_gen.run(str(data), str(tmp_path / "out"),
                             dataclasses.replace(config, max_line_bytes=100_000,
                                                 max_bad_row_fraction=0.05))
    (bad,) = quarantine(tmp_path / "out")
    assert bad["line"] == 62 and "2,000,000 bytes long" in bad["reason"]
    assert bad["row_truncated"] and sum(counts["written"].values()) == 60


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "nope.csv", "No input file matches"),
    (lambda p: (p / "e.csv").write_bytes(b"") and p / "e.csv" or p / "e.csv", "is empty"),
    (lambda p: write_csv(p / "h.csv", valid_rows(3), header="label,image,set"), "lacks the column"),
    (lambda p: (p / "b.csv").write_bytes(os.urandom(4096)) and p / "b.csv", "not a text CSV"),
    (lambda p: (p / "z.csv").write_bytes(b"PK\x03\x04" + os.urandom(100)) and p / "z.csv", "ZIP"),
    (lambda p: (p / "g.csv.gz").write_bytes(gzip.compress(b"x" * 10)[:12]) and p / "g.csv.gz",
     "cannot be read"),
    (lambda p: (p / "long.csv").write_bytes(b"7" * 30_000_000) and p / "long.csv", "64 KB"),
    (lambda p: write_csv(p / "only_header.csv", []), "only header lines"),
])
def test_unusable_input_is_one_clear_user_error(tmp_path, config, make, words):
    path = make(tmp_path)
    with pytest.raises(UserError) as caught:
        example_gen.run(str(path), str(tmp_path / "out"), config)
    assert words in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.slow  # two worker processes; test_small_chunks_... checks the same counts in-process
def test_multi_process_runner_loses_nothing(tmp_path, config):
    data = write_csv(tmp_path / "fer.csv", valid_rows(90))
    counts = example_gen.run(
        str(data), str(tmp_path / "out"), dataclasses.replace(config, chunk_bytes=50_000),
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert counts["written"] == {"train": 30, "eval": 30, "test": 30}
