"""tfds.load('fer2013') yields the pipeline's splits, row for row."""
import dataclasses

import tensorflow_datasets as tfds

import pipeline.fer2013_tfds  # noqa: F401  (registers 'fer2013')
from components import example_gen
from tests.helpers import valid_rows, write_csv


def test_tfds_splits_match_example_gen(tmp_path, config):
    manual = tmp_path / "manual"
    manual.mkdir()
    lines = valid_rows(21)
    lines.insert(4, "9,1 2 3,Training")  # invalid: skipped by both readers
    write_csv(manual / "fer2013.csv", lines)
    counts = example_gen.run(str(manual), str(tmp_path / "eg"),
                             dataclasses.replace(config, max_bad_row_fraction=0.1))

    splits = tfds.load("fer2013", data_dir=str(tmp_path / "tfds"), download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=str(manual))})
    sizes = {name: sum(1 for _ in ds) for name, ds in splits.items()}
    assert sizes == {"train": counts["written"]["train"],
                     "validation": counts["written"]["eval"], "test": counts["written"]["test"]}
    first = next(iter(splits["train"]))
    assert first["image"].shape == (48, 48, 1) and 0 <= int(first["label"]) < 7
