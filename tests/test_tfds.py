"""tfds.load('fer2013') yields the pipeline's splits, row for row."""
import dataclasses
import textwrap

import pytest
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


@pytest.mark.slow  # a fresh interpreter building a TFDS dataset
def test_the_readme_snippet_runs_and_ends_without_a_traceback(tmp_path):
    """The README's snippet as a script of its own, word for word but for the folder: it used
    to end with TensorFlow's "Exception ignored in AtomicFunction.__del__" tracebacks."""
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("    import tensorflow_datasets as tfds\n")
    snippet = textwrap.dedent(readme[start:readme.index("\n\n", start)])
    assert "manual_dir='path/with/fer2013.csv'" in snippet
    write_csv(tmp_path / "fer2013.csv", valid_rows(14))
    script = snippet.replace("'path/with/fer2013.csv'", repr(str(tmp_path))).replace(
        "split='train',", f"split='train', data_dir={str(tmp_path / 'tfds')!r},")
    result = subprocess.run([sys.executable, "-c", script + "\nprint(sum(1 for _ in ds))"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "5"  # 14 rows, every third Training
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
