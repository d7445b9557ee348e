"""Score unlabelled FER rows in bulk with Beam's RunInference (TFX's BulkInferrer).

    python -m pipeline.infer --model DIR --data PATH_OR_GLOB [PATH_OR_GLOB ...] --output DIR
                             [--format csv|jsonl] [Beam flags]

DIR is a SavedModel folder (a Trainer's serving_model, or one version under the serving
directory) or a model's folder in the serving directory (<serving-dir>/<model_name>), whose newest
version is used. --data names FER CSVs as ExampleGen reads them: files, folders of shards or
quoted globs, local or on object storage, plain or gzip (told by content), the header's names in
any case and order; only the pixels column is needed (emotion and Usage may be there or not) and
only it is checked. Each row is one 48x48 face, scored by the model's uint8-image signature in
batches, as `python -m pipeline.predict --no-detect` scores it.

Output under --output (files of an earlier run there are replaced):
    predictions-SSSSS-of-NNNNN.csv     one row per valid input row: file, line (1 is the
      (or .jsonl with --format jsonl)  header), emotion (the class the model picks), probability
                                       (its probability), then every class's probability
    quarantine/bad_rows-*.jsonl        one JSON object per invalid row: file, line, reason, row
    counts.json                        rows read, scored, quarantined (by reason) and blank

Every line read is accounted for: rows read = scored + quarantined + blank, checked against the
files written (exit 3 if they differ). Flags this program does not know go to Apache Beam, as
with python -m pipeline.run: --direct_num_workers=2 --direct_running_mode=multi_processing, or
--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
--setup_file=./setup.py, or --runner=PortableRunner --job_endpoint=HOST:PORT ...
"""
import argparse
import csv
import dataclasses
import io
import json
import sys
from typing import Any, Sequence

import numpy as np

import pipeline

if __name__ == "__main__":  # run as a command: quiet before Beam's Google libraries are imported
    pipeline.quiet()

import apache_beam as beam  # noqa: E402
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler,  # noqa: E402
                                           RunInference)
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from pipeline import artifacts, fer_csv, serving  # noqa: E402
from pipeline.artifact_types import INFERENCE  # noqa: E402
from pipeline.config import IngestConfig  # noqa: E402
from pipeline.errors import IntegrityError, UserError, disk_error, report_error  # noqa: E402

FORMATS = ("csv", "jsonl")
BATCH = 256  # images a model call, as pipeline.predict
_NAMESPACE = "pipeline.infer"
_PREDICTIONS = "predictions"


def main(argv=None) -> int:
    pipeline.quiet()
    parser = _parser()
    args, beam_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        _check_flags(parser, beam_args)
        run(args.model, args.data, args.output, args.format, beam_args)
    except (UserError, IntegrityError) as e:
        return report_error(e)
    except Exception as e:
        error = disk_error(e, f"the output folder {args.output}")
        if error is None:
            raise
        return report_error(error)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.infer", description=__doc__,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a SavedModel folder, or <serving-dir>/<model_name> (its newest "
                             "version)")
    parser.add_argument("--data", required=True, nargs="+", action="extend",
                        metavar="PATH_OR_GLOB",
                        help="FER CSVs: files, folders of shards or quoted globs; plain or gzip")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for the predictions, the quarantine and counts.json")
    parser.add_argument("--format", choices=FORMATS, default="csv",
                        help="predictions as CSV (default) or JSON lines")
    return parser


def _check_flags(parser: argparse.ArgumentParser, beam_args: Sequence[str]) -> None:
    """Beam's flags checked as pipeline.run checks them, with this program's flags as hints."""
    from pipeline.run import check_beam_args

    check_beam_args(list(beam_args), parser, "python -m pipeline.infer")


def run(model: str, data: str | list[str], output: str, fmt: str = "csv",
        beam_args: Sequence[str] = (), config: IngestConfig | None = None) -> dict:
    """Score every valid row of `data` with the model at `model` into `output` (see the module's
    doc); return the counts also written to counts.json. Raises UserError for a model, input or
    output that cannot be used, IntegrityError when the output does not account for every line
    read."""
    from components import example_gen

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    config = config or IngestConfig.load()
    found = fer_csv.said(fer_csv.list_inputs(data))
    _check_output(output, found.files)
    chunks, lines = [], {}
    for path in found.files:  # every header checked, every line counted, before any work
        file_chunks, lines[path] = example_gen._index(path, config, labelled=False)
        # Each read by its absolute path (a worker's folder is not this one), named as given.
        chunks += [(path, dataclasses.replace(c, path=artifacts.absolute(path)))
                   for c in file_chunks]
    rows_read = sum(lines.values())
    if rows_read == 0:
        raise UserError(f"{_shown(data)} holds only header lines, no rows to score. Pass FER "
                        f"CSVs with data.")
    model_dir = artifacts.absolute(_model_dir(model))  # as the workers load it
    loaded = _loaded(model_dir)
    classes, size = _classes(loaded), _image_size(loaded)
    config = dataclasses.replace(config, image_size=size)

    _remove_earlier_output(output)
    counters = _run_beam(chunks, model_dir, artifacts.absolute(output), fmt, classes, config,
                         beam_args)
    written = _count_predictions(output, fmt)
    reasons = example_gen._quarantine_reasons(_quarantine_dir(output))
    counts = {
        "model": model_dir, "input": data, "format": fmt, "files": lines,
        "rows_read": rows_read, "scored": written, "quarantined": sum(reasons.values()),
        "blank_lines": counters.get("blank_lines", 0), "quarantine_reasons": reasons,
        "skipped": dict(found.skipped),
    }
    artifacts.write_text(INFERENCE.path(output, "counts"), json.dumps(counts, indent=2))
    _reconcile(counts, counters, output)
    print(_summary(counts, output), flush=True)
    if written == 0:
        top = "; ".join(f"{n:,} x {r}" for r, n in list(reasons.items())[:3])
        raise UserError(f"No row of {_shown(data)} could be scored: all {counts['quarantined']:,} "
                        f"rows are invalid ({top}). Each row's file, line and reason are in "
                        f"{_quarantine_dir(output)}.")
    return counts


def _shown(data: str | list[str]) -> str:
    return data if isinstance(data, str) else ", ".join(data)


def _check_output(output: str, inputs: list[str]) -> None:
    if artifacts.exists(output) and not artifacts.is_dir(output):
        raise UserError(f"The output {output} is a file. Pass --output a folder (it is made if "
                        f"it is not there).")
    inside = [path for path in inputs if artifacts.within(path, output)]
    if inside:
        raise UserError(f"The input {inside[0]} lies in the output folder {output}: a later run "
                        f"would read the predictions as input. Pass --output a folder apart "
                        f"from the data.")


def _model_dir(model: str) -> str:
    """The SavedModel folder: `model` itself, or the newest version of a serving directory's
    model folder (as pipeline.predict resolves --model)."""
    model = model.rstrip("/") or model
    if artifacts.exists(artifacts.join(model, artifacts.SAVED_MODEL)):
        return model
    parent, name = model.rsplit("/", 1) if "/" in model else (".", model)
    newest = serving.latest(parent, name)
    if newest is None:
        raise UserError(f"{model} is neither a SavedModel (no saved_model.pb) nor a model folder "
                        f"of a serving directory with a version in it. Pass a Trainer's "
                        f"serving_model folder or <serving-dir>/<model_name>.")
    return newest


_MODELS: dict[str, Any] = {}  # loaded once per process: the driver's is reused by its workers


def _loaded(model_dir: str):
    if model_dir not in _MODELS:
        _MODELS[model_dir] = serving.load(model_dir)
    return _MODELS[model_dir]


def _classes(model) -> tuple[str, ...]:
    """The class names the model carries; the shipped ingestion config's for a model from
    before they were carried (as pipeline.predict names them)."""
    if hasattr(model, "class_names"):
        return tuple(name.decode() for name in model.class_names.numpy())
    return IngestConfig.load().classes


def _image_size(model) -> int:
    _, inputs = model.signatures["serve_images"].structured_input_signature
    return int(inputs["images"].shape[1])


def _quarantine_dir(output: str) -> str:
    return INFERENCE.path(output, "quarantine")


def _shards(output: str, fmt: str) -> list[str]:
    return artifacts.glob(artifacts.join(output, f"{_PREDICTIONS}-*-of-*.{fmt}"))


def _remove_earlier_output(output: str) -> None:
    """The files an earlier run wrote here (by their names only): shards of another count or
    format would otherwise be read with this run's."""
    old = [*_shards(output, "csv"), *_shards(output, "jsonl"),
           *artifacts.glob(artifacts.join(_quarantine_dir(output), "bad_rows-*-of-*.jsonl")),
           INFERENCE.path(output, "counts")]
    for path in old:
        artifacts.remove(path)


# --- the Beam pipeline -------------------------------------------------------------------------

def _run_beam(chunks, model_dir: str, output: str, fmt: str, classes: tuple[str, ...],
              config: IngestConfig, beam_args: Sequence[str]) -> dict[str, int]:
    """Run it; return its counters by name."""
    handler = KeyedModelHandler(_SavedModelHandler(model_dir, BATCH))
    header = _csv_line(["file", "line", "emotion", "probability", *classes]) \
        if fmt == "csv" else None
    p = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    parsed = (p
              | "Chunks" >> beam.Create(chunks)
              | "Parse" >> beam.ParDo(_ParseRows(config)).with_outputs(
                  _ParseRows.QUARANTINE, main="rows"))
    _ = (parsed.rows
         | "RunInference" >> RunInference(handler)
         | "Format" >> beam.ParDo(_Format(fmt, classes))
         | "WritePredictions" >> beam.io.WriteToText(
             artifacts.join(output, _PREDICTIONS), file_name_suffix=f".{fmt}", header=header))
    _ = parsed[_ParseRows.QUARANTINE] | "WriteQuarantine" >> beam.io.WriteToText(
        artifacts.join(_quarantine_dir(output), "bad_rows"), file_name_suffix=".jsonl")
    result = p.run()
    result.wait_until_finish()
    return {r.key.metric.name: r.committed for r in
            result.metrics().query(MetricsFilter().with_namespace(_NAMESPACE))["counters"]}


class _ParseRows(beam.DoFn):
    """Read one chunk of a FER CSV, given as (the file's name as given, the chunk): (file, line)
    and the uint8 image of each valid row; each invalid one to the quarantine with its reason;
    blank lines counted."""

    QUARANTINE = "quarantine"

    def __init__(self, config: IngestConfig):
        self._config = config
        self._blank = Metrics.counter(_NAMESPACE, "blank_lines")

    def process(self, element):
        shown, chunk = element
        cfg, size = self._config, self._config.image_size
        f, _ = fer_csv.open_binary(chunk.path)
        with f:
            if chunk.first_line == 2:
                f.readline(1 << 20)  # the header, already checked when the file was indexed
            else:
                f.seek(chunk.start)
            span = None if chunk.end is None else chunk.end - chunk.start
            for number, raw, row in fer_csv.pixel_rows(f, chunk.first_line, span,
                                                       chunk.layout, cfg):
                if row is None:
                    self._blank.inc()
                elif isinstance(row, str):
                    yield beam.pvalue.TaggedOutput(
                        self.QUARANTINE, _quarantined(shown, number, raw, row, cfg))
                else:
                    yield (shown, number), row.astype(np.uint8).reshape(size, size, 1)


def _quarantined(path: str, number: int, raw: bytes, reason: str, config: IngestConfig) -> str:
    """A bad row as ExampleGen quarantines one: file, line, reason, the row (cut short)."""
    keep = config.quarantine_row_chars
    text = raw[:keep * 4].decode("utf-8", errors="replace")
    record = {"file": path, "line": number, "reason": reason, "row": text[:keep]}
    if len(text) > keep or len(raw) > keep * 4:
        record["row_truncated"] = True
    return json.dumps(record)


class _SavedModelHandler(ModelHandler):
    """RunInference's model handler over this pipeline's SavedModel: loaded once per worker
    process (serving.load, which checks its signatures), called through its uint8-image
    signature (serve_images) on a batch of [size, size, 1] images; each image's answer is
    (class name, probabilities as float32[classes])."""

    def __init__(self, model_dir: str, batch_size: int):
        super().__init__()
        self._model_dir, self._batch_size = model_dir, batch_size

    def load_model(self):
        return _loaded(self._model_dir)

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf

        answer = model.signatures["serve_images"](images=tf.constant(np.stack(batch),
                                                                     tf.uint8))
        return list(zip((name.decode() for name in answer["class_name"].numpy()),
                        answer["probabilities"].numpy()))

    def get_num_bytes(self, batch) -> int:
        return sum(image.nbytes for image in batch)

    def batch_elements_kwargs(self):
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}


class _Format(beam.DoFn):
    """((file, line), (class name, probabilities)) as one CSV row or JSON line."""

    def __init__(self, fmt: str, classes: tuple[str, ...]):
        self._fmt, self._classes = fmt, classes
        self._written = Metrics.counter(_NAMESPACE, "rows_scored")

    def process(self, scored):
        (path, line), (name, probabilities) = scored
        values = [round(float(p), 6) for p in probabilities]
        chosen = values[self._classes.index(name)]
        self._written.inc()
        if self._fmt == "jsonl":
            yield json.dumps({"file": path, "line": line, "emotion": name,
                              "probability": chosen,
                              "probabilities": dict(zip(self._classes, values))})
        else:
            yield _csv_line([path, line, name, f"{chosen:.6f}", *(f"{v:.6f}" for v in values)])


def _csv_line(fields: list) -> str:
    """One CSV line without its line break, fields quoted where they need it."""
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(fields)
    return text.getvalue()


# --- what was written --------------------------------------------------------------------------

def _count_predictions(output: str, fmt: str) -> int:
    """Rows in the prediction shards on disk, each shard's header not counted."""
    count = 0
    for path in _shards(output, fmt):
        with artifacts.open_bytes(path) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            if fmt == "csv":
                count += max(sum(1 for _ in csv.reader(text)) - 1, 0)
            else:
                count += sum(1 for line in text if line.strip())
    return count


def _reconcile(counts: dict, counters: dict, output: str) -> None:
    accounted = counts["scored"] + counts["quarantined"] + counts["blank_lines"]
    scored = counters.get("rows_scored")
    if accounted != counts["rows_read"] or (scored is not None and scored != counts["scored"]):
        raise IntegrityError(
            f"pipeline.infer lost rows: {counts['rows_read']:,} lines read but {accounted:,} "
            f"accounted for (scored {counts['scored']:,} on disk, {scored} by the pipeline; "
            f"quarantined {counts['quarantined']:,}; blank {counts['blank_lines']:,}). The output "
            f"in {output} is incomplete and must not be used. Run again; if it repeats with "
            f"--direct_running_mode=multi_processing, use in_memory instead.")


def _summary(counts: dict, output: str) -> str:
    files = len(counts["files"])
    line = (f"infer: {counts['rows_read']:,} rows read from {files} file(s) = "
            f"{counts['scored']:,} scored + {counts['quarantined']:,} quarantined + "
            f"{counts['blank_lines']:,} blank; predictions in "
            f"{artifacts.join(output, _PREDICTIONS)}-*.{counts['format']}")
    if counts["quarantined"]:
        top = "; ".join(f"{n:,} x {r}" for r, n in list(counts["quarantine_reasons"].items())[:3])
        line += f"; quarantined rows ({top}) in {_quarantine_dir(output)}"
    return line


if __name__ == "__main__":
    from pipeline import infer  # the module by its name, so that Beam's workers find its classes

    sys.exit(infer.main())
