"""StatisticsGen: TFDV statistics for every split, plus TFDV's HTML view of them.

TFDV sees the pixels only as one long list of integers, which cannot tell a
face from a black, blank or inverted image. So per image we add mean_brightness,
contrast (standard deviation), saturated_share (pixels within a margin of 0 or
255) and exposure (ok, dark, bright or flat: thresholds in schemas/validation.json);
their statistics make such datasets visible to the schema and to drift checks.

Output layout (output_dir):
    Split-<split>/FeatureStats.pb    DatasetFeatureStatisticsList (binary), as TFX writes it
    Split-<split>/statistics.html    TFDV's Facets view of the split
    <train>_vs_<split>.html          the split side by side with the train split
"""
import os
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_data_validation.utils.display_util import get_statistics_html
from tfx_bsl.public import tfxio

from pipeline import artifacts
from pipeline.artifact_types import STATISTICS
from pipeline.config import PIXELS_FEATURE
from pipeline.errors import UserError


def run(examples_dir: str, output_dir: str, splits: Sequence[str], exposure: dict,
        schema=None, beam_args: Sequence[str] = (), train_split: str = "train") -> dict[str, str]:
    """Compute statistics of each split of ExampleGen's output; return the stats file per split.

    With a schema (the curated one), TFDV treats categorical int features, such as the
    label, as categories and records which classes occur.
    """
    options = tfdv.StatsOptions(schema=schema) if schema is not None else tfdv.StatsOptions()
    paths = {}
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        for split in splits:
            pattern = artifacts.examples_pattern(examples_dir, split)
            if not artifacts.glob(pattern):
                raise UserError(f"No examples for split {split!r} under {examples_dir}. Run "
                                f"ExampleGen again; its output is incomplete.")
            paths[split] = STATISTICS.path(output_dir, "statistics", split)
            _ = (pipeline
                 | f"Read-{split}" >> tfxio.TFExampleRecord(
                     pattern, telemetry_descriptors=["fer", "StatisticsGen"]).BeamSource()
                 | f"ImageFeatures-{split}" >> beam.Map(add_image_features, exposure)
                 | f"Stats-{split}" >> tfdv.GenerateStatistics(options)
                 | f"Write-{split}" >> tfdv.WriteStatisticsToBinaryFile(paths[split]))
    _write_html(paths, output_dir, train_split)
    return paths


def add_image_features(batch: pa.RecordBatch, exposure: dict) -> pa.RecordBatch:
    """Append per-image mean_brightness, contrast, saturated_share and exposure columns."""
    pixels = batch.column(batch.schema.get_field_index(PIXELS_FEATURE))
    values = np.asarray(pixels.flatten(), dtype=np.float64)
    starts = np.asarray(pixels.offsets)[:-1]
    counts = np.diff(np.asarray(pixels.offsets))
    has = counts > 0
    safe_starts = np.minimum(starts, max(len(values) - 1, 0))

    def per_image(x: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat(x, safe_starts) if len(values) else np.zeros(len(counts))
        return np.where(has, sums / np.maximum(counts, 1), np.nan)

    mean = per_image(values)
    contrast = np.sqrt(np.maximum(per_image(values ** 2) - mean ** 2, 0))
    margin = exposure["saturated_value_margin"]
    saturated = per_image(((values <= margin) | (values >= 255 - margin)).astype(np.float64))
    kind = np.where(mean < exposure["dark_mean_below"], "dark",
                    np.where(mean > exposure["bright_mean_above"], "bright",
                             np.where(contrast < exposure["flat_contrast_below"], "flat", "ok")))
    columns = {"mean_brightness": mean, "contrast": contrast, "saturated_share": saturated,
               "exposure": kind}
    return pa.RecordBatch.from_arrays(
        batch.columns + [_one_per_row(c, has) for c in columns.values()],
        batch.schema.names + list(columns))


def _one_per_row(values: np.ndarray, present: np.ndarray) -> pa.ListArray:
    """A list column with one value per row, or no value where the image had no pixels."""
    offsets = np.concatenate([[0], np.cumsum(present)]).astype(np.int32)
    kept = values[present]
    array = pa.array(kept.astype(np.float32)) if kept.dtype.kind == "f" else pa.array(
        kept.astype(object).tolist(), type=pa.binary())
    return pa.ListArray.from_arrays(pa.array(offsets), array)


def _write_html(paths: dict[str, str], output_dir: str, train: str) -> None:
    stats = {split: tfdv.load_stats_binary(path) for split, path in paths.items()}
    for split, split_stats in stats.items():
        artifacts.write_text(
            STATISTICS.path(output_dir, "view", split),
            get_statistics_html(split_stats, lhs_name=split))
    if train in stats:
        for split in stats.keys() - {train}:
            artifacts.write_text(os.path.join(output_dir, f"{train}_vs_{split}.html"),
                   get_statistics_html(stats[train], stats[split], lhs_name=train,
                                       rhs_name=split))

