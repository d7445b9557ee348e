"""ExampleGen: FER CSV files -> gzip TFRecords of tf.Example per split, and a quarantine.

Why not beam.io.ReadFromText: quarantined rows must carry their line number, and
the row count must be checked against a count Beam did not make (Beam's
multi-process runner has been seen to drop records, TFDV issue 247). So the
driver first indexes each file (one fast pass: header, line count, chunk
boundaries at line breaks), then Beam parses the chunks in parallel and writes
with its own TFRecord and text sinks. Afterwards the records on disk are counted
and must equal the lines read, less quarantined and blank lines, per split.

Output layout (output_dir):
    Split-<split>/data-*.tfrecord.gz   tf.Example: emotion int64[1], pixels int64[2304]
    quarantine/bad_rows-*.jsonl         one JSON object per bad row: file, line, reason, row
    counts.json                         what was read, written and quarantined, per file and split
"""
import collections
import dataclasses
import gzip
import json
import os
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import coders
from apache_beam.io import filebasedsink, tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from tfx_bsl.coders import example_coder

from pipeline import artifacts, fer_csv
from pipeline.artifact_types import EXAMPLES
from pipeline.config import LABEL_FEATURE, PIXELS_FEATURE, IngestConfig
from pipeline.errors import IntegrityError, UserError

_NAMESPACE = "ExampleGen"
_SCAN_BLOCK = 4 << 20


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A run of whole lines of one file: [start, end) bytes, beginning at line `first_line`."""

    path: str
    start: int
    end: int | None  # None: to the end of the file (compressed files are read whole)
    first_line: int
    layout: fer_csv.Layout


def run(data: str | list[str], output_dir: str, config: IngestConfig,
        beam_args: Sequence[str] = ()) -> dict:
    """Ingest `data` (a CSV path, directory or glob, or a list of them; plain or gzip) into
    output_dir.

    Returns the counts also written to counts.json. Raises UserError for bad input
    and IntegrityError if the output does not account for every input line.
    """
    found = fer_csv.said(fer_csv.list_inputs(data))
    files = found.files
    chunks, lines_by_file = [], {}
    for path in files:
        file_chunks, lines = _index(path, config)
        chunks += file_chunks
        lines_by_file[path] = lines
    rows_read = sum(lines_by_file.values())
    if rows_read == 0:
        raise UserError(f"{data} holds only header lines, no rows. Pass CSV files with data.")
    print(f"ExampleGen: {rows_read:,} rows in {len(files)} file(s), {len(chunks)} chunk(s) of "
          f"up to {config.chunk_bytes / 2**20:.0f} MiB read in parallel", flush=True)

    result = _run_beam(chunks, output_dir, config, beam_args)
    counters = {r.key.metric.name: r.committed for r in
                result.metrics().query(MetricsFilter().with_namespace(_NAMESPACE))["counters"]}

    written = {s: _count_records(artifacts.example_files(output_dir, s)) for s in config.splits}
    reasons = _quarantine_reasons(EXAMPLES.path(output_dir, "quarantine"))
    quarantined, blank = sum(reasons.values()), counters.get("blank_lines", 0)
    counts = {
        "input": data, "files": lines_by_file, "rows_read": rows_read, "blank_lines": blank,
        "written": written, "quarantined": quarantined, "quarantine_reasons": reasons,
        "skipped": dict(found.skipped),  # entries of the input folder or glob not read, and why
    }
    artifacts.write_text(EXAMPLES.path(output_dir, "counts"), json.dumps(counts, indent=2))

    _reconcile(counts, counters, output_dir)
    _check_quality(counts, config, output_dir)
    return counts


def _index(path: str, config: IngestConfig, labelled: bool = True
           ) -> tuple[list[Chunk], int]:
    """One pass over a file: validate its header, count its lines, cut it into chunks.
    labelled=False (pipeline.infer) needs only the pixels column in the header."""
    # IngestConfig.load bounds it; a config built otherwise must not cut chunks forever.
    assert config.chunk_bytes > 0, f"chunk_bytes must be positive (got {config.chunk_bytes})"
    f, compressed = fer_csv.open_binary(path)
    with f:
        layout, start = fer_csv.read_header(f, path, config, labelled=labelled)
        chunks, chunk_start, chunk_line = [], start, 2
        pos, line_no, last = start, 2, b"\n"
        target = start + config.chunk_bytes
        try:
            while block := f.read(_SCAN_BLOCK):
                while not compressed and target < pos + len(block):
                    i = block.find(b"\n", max(target - pos, 0))
                    if i < 0:
                        break
                    boundary, boundary_line = pos + i + 1, line_no + block.count(b"\n", 0, i + 1)
                    chunks.append(Chunk(path, chunk_start, boundary, chunk_line, layout))
                    chunk_start, chunk_line = boundary, boundary_line
                    target = boundary + config.chunk_bytes
                line_no += block.count(b"\n")
                pos += len(block)
                last = block[-1:]
        except (OSError, EOFError) as e:
            raise UserError(f"{path} is damaged: reading it failed after {pos:,} bytes ({e}). "
                            f"Fetch or compress the file again.") from None
    lines = line_no - 2 + (last != b"\n")
    if not compressed:
        if pos > chunk_start:
            chunks.append(Chunk(path, chunk_start, None, chunk_line, layout))
    elif lines:
        chunks = [Chunk(path, start, None, 2, layout)]
    return chunks, lines


class _ParseChunk(beam.DoFn):
    """Read one chunk's lines; emit serialized tf.Examples per split, bad rows to quarantine."""

    QUARANTINE = "quarantine"

    def __init__(self, config: IngestConfig):
        self._config = config
        self._blank = Metrics.counter(_NAMESPACE, "blank_lines")
        self._rows = {s: Metrics.counter(_NAMESPACE, f"rows_{s}") for s in config.splits}

    def setup(self):
        # TFX's C++ encoder: 4x faster than filling tf.train.Example in Python, and no
        # TensorFlow import (4 s) in every worker.
        self._encoder = example_coder.RecordBatchToExamplesEncoder()

    def process(self, chunk: Chunk):
        cfg = self._config
        batches = {split: ([], []) for split in cfg.splits}  # labels, pixel arrays
        f, _ = fer_csv.open_binary(chunk.path)
        with f:
            if chunk.first_line == 2:
                f.readline(1 << 20)  # the header, already validated by _index
            else:
                f.seek(chunk.start)
            for number, raw, row in fer_csv.read_rows(f, chunk.first_line, _span(chunk),
                                                      chunk.layout, cfg):
                if row is None:
                    self._blank.inc()
                    continue
                if isinstance(row, str):
                    yield self._quarantine(chunk, number, raw, row)
                    continue
                split, label, pixels = row
                batches[split][0].append(label)
                batches[split][1].append(pixels)
        for split, (labels, images) in batches.items():
            if labels:
                self._rows[split].inc(len(labels))
                for example in self._encoder.encode(_record_batch(labels, images)):
                    yield beam.pvalue.TaggedOutput(split, example)

    def _quarantine(self, chunk, number, raw: bytes, reason: str):
        keep = self._config.quarantine_row_chars
        text = raw[:keep * 4].decode("utf-8", errors="replace")
        record = {"file": chunk.path, "line": number, "reason": reason, "row": text[:keep]}
        if len(text) > keep or len(raw) > keep * 4:
            record["row_truncated"] = True
        return beam.pvalue.TaggedOutput(self.QUARANTINE, json.dumps(record))


def _record_batch(labels: list[int], images: list) -> pa.RecordBatch:
    """Rows as Arrow columns emotion: list<int64>[1], pixels: list<int64>[n_pixels]."""
    def lists(values: np.ndarray, per_row: int) -> pa.ListArray:
        offsets = np.arange(len(labels) + 1, dtype=np.int32) * per_row
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    return pa.RecordBatch.from_arrays(
        [lists(np.asarray(labels, np.int64), 1), lists(np.concatenate(images), images[0].size)],
        [LABEL_FEATURE, PIXELS_FEATURE])


def _span(chunk: Chunk) -> int | None:
    return None if chunk.end is None else chunk.end - chunk.start


def _run_beam(chunks, output_dir, config, beam_args):
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    parsed = (pipeline
              | "Chunks" >> beam.Create(chunks)
              | "Parse" >> beam.ParDo(_ParseChunk(config)).with_outputs(
                  _ParseChunk.QUARANTINE, *config.splits))
    for split in config.splits:
        _ = parsed[split] | f"Write-{split}" >> beam.io.Write(_GzipTFRecordSink(
            os.path.join(artifacts.split_dir(output_dir, split), "data"), config.records_per_shard))
    _ = parsed[_ParseChunk.QUARANTINE] | "WriteQuarantine" >> beam.io.WriteToText(
        artifacts.join(EXAMPLES.path(output_dir, "quarantine"), "bad_rows"), file_name_suffix=".jsonl")
    result = pipeline.run()
    result.wait_until_finish()
    return result


class _GzipTFRecordSink(tfrecordio._TFRecordSink):
    """Beam's TFRecord sink, gzip at level 1 and at most `records_per_shard` records a shard.

    Beam compresses at zlib's default level 6 and offers no option: on pixel data
    that cost more than parsing and building the examples together (231 vs 63 us
    a record at level 1) for files only about 10% smaller. The shard cap gives a
    large split several files on any runner, without a shuffle.
    """

    def __init__(self, file_path_prefix: str, records_per_shard: int):
        filebasedsink.FileBasedSink.__init__(
            self, file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=artifacts.EXAMPLES_SUFFIX,
            num_shards=0, shard_name_template=None, mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED, max_records_per_shard=records_per_shard)

    def open(self, temp_path):
        return _GzipWriter(super().open(temp_path))


class _GzipWriter(gzip.GzipFile):
    """Gzip level 1 over a Beam file handle; closing it closes the handle too."""

    def __init__(self, raw):
        super().__init__(fileobj=raw, mode="wb", compresslevel=1, mtime=0)
        self._raw = raw

    def close(self):
        try:
            super().close()
        finally:
            self._raw.close()


def _count_records(files: list[str]) -> int:
    """Records on disk, each one's checksums verified as it is read back."""
    count = 0
    for path in files:
        with FileSystems.open(path) as f:  # gunzipped, as its name says
            while tfrecordio._TFRecordUtil.read_record(f) is not None:
                count += 1
    return count


def _quarantine_reasons(quarantine_dir: str) -> dict[str, int]:
    """How many rows were quarantined for each kind of reason, most first. Reasons that differ
    only in their numbers are one kind ("found 2303 pixel values" and "found 12 ..."); a number
    that is the same in all of them is kept, one that differs shows its range
    ("found 12-2303 pixel values, expected 2304 (48x48)")."""
    kinds = {}  # template -> [count, [lowest, highest] (value, as written) of each number]
    for path in artifacts.glob(os.path.join(quarantine_dir, "*.jsonl")):
        for line in artifacts.read_text(path).splitlines():
            template, numbers = _reason_kind(json.loads(line)["reason"])
            kind = kinds.setdefault(template, [0, [[n, n] for n in numbers]])
            kind[0] += 1
            for span, number in zip(kind[1], numbers):
                span[:] = min(span[0], number), max(span[1], number)
    shown = collections.Counter()
    for template, (count, spans) in kinds.items():
        shown[template.format(*(low[1] if low[0] == high[0] else f"{low[1]}-{high[1]}"
                                for low, high in spans))] += count
    return dict(shown.most_common())


def _reason_kind(reason: str) -> tuple[str, list[tuple[int, str]]]:
    """The reason with each whole number as {} (a str.format template), and the numbers."""
    words, numbers = [], []
    for word in reason.replace("{", "{{").replace("}", "}}").split(" "):
        core = word.strip("(),'")
        if core and core.replace(",", "").isdigit():
            numbers.append((int(core.replace(",", "")), core))
            word = word.replace(core, "{}", 1)
        words.append(word)
    return " ".join(words), numbers


def _reconcile(counts: dict, counters: dict, output_dir: str) -> None:
    accounted = sum(counts["written"].values()) + counts["quarantined"] + counts["blank_lines"]
    mismatched = {s: (counters[f"rows_{s}"], n) for s, n in counts["written"].items()
                  if f"rows_{s}" in counters and counters[f"rows_{s}"] != n}
    if accounted != counts["rows_read"] or mismatched:
        raise IntegrityError(
            f"ExampleGen lost rows: {counts['rows_read']:,} lines read but {accounted:,} accounted "
            f"for (written {counts['written']}, quarantined {counts['quarantined']:,}, blank "
            f"{counts['blank_lines']:,}); parsed vs on disk per split: {mismatched or 'equal'}. "
            f"The output in {output_dir} is incomplete and must not be used. Run again; if it "
            f"repeats with --direct_running_mode=multi_processing, use in_memory instead.")


def _check_quality(counts: dict, config: IngestConfig, output_dir: str) -> None:
    good = sum(counts["written"].values())
    bad = counts["quarantined"]
    quarantine = EXAMPLES.path(output_dir, "quarantine")
    top = "; ".join(f"{n:,} x {r}" for r, n in list(counts["quarantine_reasons"].items())[:3])
    if good == 0:
        raise UserError(f"No valid row in {counts['input']}: all {bad:,} rows were quarantined "
                        f"({top}). See {quarantine} for each row's line and reason.")
    if bad > config.max_bad_row_fraction * (good + bad):
        raise UserError(
            f"{bad:,} of {good + bad:,} rows ({bad / (good + bad):.2%}) in {counts['input']} are "
            f"invalid, more than the allowed {config.max_bad_row_fraction:.2%} ({top}). Each bad "
            f"row's file, line and reason are in {quarantine}. Fix the data, or raise the limit "
            f"with --max-bad-rows if these rows may be dropped.")
    empty = [s for s, n in counts["written"].items() if n == 0]
    if empty:
        raise UserError(
            f"The {', '.join(empty)} split(s) received no rows from {counts['input']}, so the "
            f"model could not be evaluated. With a {config.usage_column} column every split needs "
            f"rows ({', '.join(f'{u} -> {s}' for u, s in config.usage_to_split.items())}); "
            f"without it rows are split by content hash {config.hash_split}, which needs more rows.")
