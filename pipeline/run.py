"""Run the FER pipeline: python -m pipeline.run --runner=DirectRunner [flags].

Flags this program does not know are passed to Apache Beam, e.g.
--direct_num_workers=2 --direct_running_mode=multi_processing, or
--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py
"""
import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import typing
from pathlib import Path

from pipeline.errors import IntegrityError, UserError, disk_error, report_error

COMPONENTS = ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Tuner",
              "Trainer", "Evaluator", "Pusher")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run", description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", metavar="PATH_OR_GLOB",
        help="FER CSV input: one file, a directory of shards, or a quoted glob; plain or gzip; "
             "local or any filesystem Beam knows (gs://...). Default: built-in synthetic faces, "
             "generated once under the pipeline root.")
    parser.add_argument(
        "--spans", metavar="N", type=int, default=1,
        help="when --data is a folder of dated drops (span-YYYYMMDD/), train on the newest N of "
             "them (default: 1)")
    parser.add_argument(
        "--pipeline-root", metavar="DIR", default="pipeline_root",
        help="where every component writes its outputs, one folder per execution "
             "(default: ./pipeline_root)")
    parser.add_argument(
        "--serving-dir", metavar="DIR", default="serving",
        help="where blessed models are pushed, as <DIR>/<model_name>/<version>/ (TF Serving's "
             "layout); the newest version there is the baseline a new model must not fall "
             "behind (default: ./serving)")
    parser.add_argument(
        "--stop-after", metavar="COMPONENT", choices=COMPONENTS, default=COMPONENTS[-1],
        help=f"stop after this component; one of {', '.join(COMPONENTS)}")
    parser.add_argument(
        "--max-bad-rows", metavar="FRACTION", type=float,
        help="largest share of invalid rows tolerated before ExampleGen stops the run "
             "(default from schemas/ingest.json: 0.01); invalid rows are quarantined either way")
    parser.add_argument(
        "--ingest-config", metavar="FILE",
        help="ingestion config (default: schemas/ingest.json): columns, classes, split ratios")
    parser.add_argument(
        "--epochs", metavar="N", type=int,
        help="most training epochs (early stopping may end sooner); default from "
             "schemas/trainer.json")
    parser.add_argument(
        "--batch-size", metavar="N", type=int,
        help="global batch size, split across devices and workers; default from "
             "schemas/trainer.json")
    parser.add_argument(
        "--trainer-config", metavar="FILE",
        help="hyperparameters (default: schemas/trainer.json): learning-rate schedule, batch "
             "size, batch-norm statistics, augmentation, class weighting, early stopping, warm "
             "start, seed")
    parser.add_argument(
        "--from-scratch", action="store_true",
        help="train from random weights even when a model serves (by default the Trainer "
             "starts from the serving model's weights and fine-tunes them on the new data)")
    parser.add_argument(
        "--tune", metavar="N", type=int, default=0,
        help="before training, try N hyperparameter settings (Optuna) from the search space of "
             "--tuner-config and train with the best; 0 (default) skips the Tuner")
    parser.add_argument(
        "--tuner-config", metavar="FILE",
        help="the Tuner's search space and epochs per trial (default: schemas/tuner.json)")
    parser.add_argument(
        "--evaluation-config", metavar="FILE",
        help="the gates a model must pass to be pushed (default: schemas/evaluation.json): "
             "floors for overall, macro and per-class accuracy, largest drop against the "
             "serving model, model name, evaluation split")
    parser.add_argument(
        "--distribution", choices=("default", "mirrored", "multi_worker"), default="default",
        help="tf.distribute strategy for the Trainer: default (one device), mirrored (all GPUs "
             "of this machine), multi_worker (MultiWorkerMirroredStrategy; the cluster comes "
             "from TF_CONFIG, and the other workers run python -m components.trainer)")
    return parser.parse_known_args(argv)


def main(argv=None) -> int:
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    # Beam logs a failing step's traceback before raising the error itself, which is then either
    # explained in one paragraph or, if unexpected, printed with its traceback anyway.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a scheduler's stop
        signal.signal(signum, _stop)
    try:
        check_beam_args(beam_args)
        run(args, beam_args)
    except (UserError, IntegrityError) as e:
        return report_error(e)
    except Exception as e:
        error = disk_error(e, f"the pipeline root {args.pipeline_root} and the serving directory "
                              f"{args.serving_dir}")
        if error is None:
            raise
        return report_error(error)
    return 0


def _stop(signum, frame):
    """Stop at once, as a kill would: an exception raised inside TensorFlow or Beam from a signal
    handler can be swallowed or turned into another error. Nothing is lost: outputs count only
    once marked complete, the next run records the unfinished steps as FAILED and resumes
    training, and a push is renamed into place whole or not at all."""
    print(f"\ninterrupted ({signal.Signals(signum).name}): the run stopped. Unfinished steps "
          f"will not be used (training resumes where it stopped on the next run); the serving "
          f"directory holds only complete versions.", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def check_beam_args(beam_args) -> None:
    """Refuse bad Beam flags before any work: a flag neither the pipeline nor Beam knows is a
    typo (Beam alone would drop it silently), and the runner must exist."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners import create_runner

    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    try:
        create_runner(runner or "DirectRunner")
    except ValueError as e:
        raise UserError(f"Apache Beam has no runner {runner!r} ({e}). Pass one it knows, for "
                        f"example --runner=DirectRunner or --runner=DataflowRunner.") from None
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                     - set(options.get_all_options(retain_unknown_options=False)))
    if unknown:
        flags = ", ".join("--" + name for name in unknown)
        raise UserError(f"Unknown flag(s) {flags}: neither a pipeline flag nor an Apache Beam "
                        f"option. See python -m pipeline.run --help for the pipeline's flags.")


def run(args, beam_args) -> None:
    # Components are imported where first used: an input error surfaces before TensorFlow loads.
    from pipeline.config import (SCHEMAS_DIR, EvaluationConfig, IngestConfig, TrainerConfig,
                                 TunerConfig, load_json)

    config = IngestConfig.load(args.ingest_config, max_bad_row_fraction=args.max_bad_rows)
    # The built-in data brings its own epoch budget (schemas/default_data.json); flags win.
    builtin_epochs = None if args.data or args.trainer_config else load_json(
        "default_data.json")["epochs"]
    trainer_config = TrainerConfig.load(args.trainer_config, epochs=args.epochs or builtin_epochs,
                                        batch_size=args.batch_size)
    gates = EvaluationConfig.load(config.classes, config.splits, args.evaluation_config)
    if args.tune < 0:
        raise UserError(f"--tune takes a number of trials, 0 or more (got {args.tune}).")
    tuner_config = TunerConfig.load(args.tuner_config) if args.tune else None
    validation = load_json("validation.json")
    curated_schema = SCHEMAS_DIR / "schema.pbtxt"
    root = Path(args.pipeline_root).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"The pipeline root {root} cannot be a folder: a file of that name (or "
                        f"above it) is in the way. Pass another --pipeline-root.") from None
    with _lock(root):
        _run(args, beam_args, root, config, trainer_config, tuner_config, gates, validation,
             curated_schema)


def _run(args, beam_args, root, config, trainer_config, tuner_config, gates, validation,
         curated_schema):
    from components import example_gen
    from pipeline import metadata

    data = _newest_spans(args.data, args.spans) if args.data else str(_default_data(root))
    steps = _Steps(root, metadata.Store(root))
    interrupted = steps.store.abandon_interrupted()
    if interrupted:
        print(f"Metadata: execution(s) {', '.join(map(str, interrupted))} of an earlier run "
              f"that was interrupted are now marked FAILED")

    def done(component: str) -> bool:
        return args.stop_after == component

    files = metadata.file_fingerprints(data)

    def ingest(out: str) -> dict:
        """ExampleGen, checked to have read the input that was fingerprinted: one that changed
        meanwhile is refused, even where the change broke the reading itself."""
        try:
            counts = example_gen.run(data, out, config, beam_args)
        finally:
            if metadata.file_fingerprints(data) != files:
                raise UserError(
                    f"The input {data} changed while it was being read (a file was written to, "
                    f"replaced, added or removed), so these examples would match no one version "
                    f"of it. Let whatever writes the data finish (write to a temporary name, then "
                    f"rename it into place) and run again.") from None
        return counts

    examples = steps.run("ExampleGen", {"data": data, "config": dataclasses.asdict(config)},
                         list(zip(steps.store.input_files(files), files.values())), ingest)
    print(_summary(examples.result))
    if done("ExampleGen"):
        return

    from components import example_validator, schema_gen, statistics_gen

    schema = schema_gen.load_curated(curated_schema) if curated_schema.exists() else None
    curated = curated_schema.read_text() if curated_schema.exists() else None
    statistics = steps.run(
        "StatisticsGen", {"exposure": validation["exposure"], "schema": curated}, [examples],
        lambda out: statistics_gen.run(examples.folder, out, config.splits,
                                       validation["exposure"], schema, beam_args))
    print(f"StatisticsGen: statistics of {', '.join(statistics.result)}; to look at them open "
          f"{statistics.folder}/Split-train/statistics.html")
    if done("StatisticsGen"):
        return

    schema_step = steps.run("SchemaGen", {"schema": curated}, [statistics], lambda out: (
        schema_gen.run(statistics.result["train"], out, curated_schema)))
    schema_path, is_curated = schema_step.result
    source = (f"the curated {curated_schema}" if is_curated
              else "the schema TFDV inferred (no curated schemas/schema.pbtxt yet)")
    print(f"SchemaGen: validating against {source}; inferred for review: "
          f"{Path(schema_path).parent / 'inferred_schema.pbtxt'}")
    if done("SchemaGen"):
        return

    previous = _previous_validated_statistics(root, validation["drift_split"],
                                              statistics.result["train"])
    findings = steps.run(
        "ExampleValidator", {"policy": validation, "previous": previous},
        [statistics, schema_step], lambda out: example_validator.run(
            statistics.result, schema_path, out, validation, previous)).result
    for f in findings:
        print(f"  warning [{f['check']}] {f['split']}, feature '{f['feature']}': {f['what']}")
    print(f"ExampleValidator: data passed ({len(findings)} warning(s); drift checked against "
          f"{previous or 'nothing: no earlier validated run'})")
    if done("ExampleValidator"):
        return

    from components import trainer
    from pipeline import serving

    inputs = [examples]
    if tuner_config:
        from components import tuner

        tuned = steps.run(
            "Tuner", {"trials": args.tune, "space": dataclasses.asdict(tuner_config),
                      "config": dataclasses.asdict(trainer_config)}, [examples],
            lambda out: tuner.run(examples.folder, out, trainer_config, config, tuner_config,
                                  args.tune))
        search = tuned.result
        print(f"Tuner: {len(search['trials'])} trial(s); best eval accuracy "
              f"{search['best_value']:.3f} with {search['best_hyperparameters']}")
        trainer_config = tuner.apply(trainer_config, search["best_hyperparameters"])
        inputs.append(tuned)
    if done("Tuner"):
        return

    baseline = serving.latest(args.serving_dir, gates.model_name)
    base_model = None if args.from_scratch else baseline
    problem = base_model and trainer.base_model_problem(str(base_model), config)
    if problem:  # the Evaluator, comparing with it, says more if it cannot be served either
        print(f"Trainer: cannot start from the serving model {base_model} ({problem}); "
              f"training from scratch")
        base_model = None
    # The base model is recorded in the lineage but is not part of the cache key: a model
    # trained on the same examples with the same settings and code is reused whatever it
    # started from, so an identical second run stays "nothing new".
    trained = steps.run(
        "Trainer", {"config": dataclasses.asdict(trainer_config),
                    "distribution": args.distribution, "warm_start": not args.from_scratch},
        inputs, lambda out: trainer.run(examples.folder, out, trainer_config, config,
                                        args.distribution,
                                        base_model=base_model and str(base_model)),
        resumable=True, records=[steps.store.model(base_model, metadata.tree_fingerprint(
            base_model))] if base_model else [])
    summary = trained.result
    best = summary["best_eval"]
    print(f"Trainer: {summary['epochs_run']} epoch(s); best eval accuracy "
          f"{best['val_accuracy']:.3f} at epoch {summary['best_epoch']}; SavedModel "
          f"{summary['serving_model']}; TensorBoard: tensorboard --logdir {trained.folder}/logs")
    if done("Trainer"):
        return

    metadata_line = (f"Metadata: {root / 'metadata.sqlite'} (python -m pipeline.lineage "
                     f"--pipeline-root {root} --serving-dir {args.serving_dir})")
    if trained.cached and baseline and steps.store.pushed(str(baseline)) and (
            metadata.tree_fingerprint(Path(summary["serving_model"]))
            == metadata.tree_fingerprint(baseline)):
        print(f"Nothing new: the data, parameters and code are those of an earlier run, whose "
              f"model already serves as {baseline}.")
        print(metadata_line)
        return

    from components import evaluator, pusher
    from pipeline import report

    evaluated = steps.run(
        "Evaluator", {"gates": dataclasses.asdict(gates), "baseline": str(baseline),
                      "baseline_content": metadata.tree_fingerprint(baseline)},
        [trained, examples], lambda out: evaluator.run(
            summary["serving_model"], examples.folder, out, gates, config.classes,
            baseline and str(baseline), beam_args))
    evaluation = evaluated.result
    values = evaluation["metrics"]["candidate"]
    print(f"Evaluator: {'BLESSED' if evaluation['blessed'] else 'NOT BLESSED'} on "
          f"{evaluation['examples']:,} {gates.split} examples: accuracy "
          f"{values['accuracy']:.3f}, macro {values['macro_accuracy']:.3f}; compared with "
          f"{baseline or 'no serving model'}")
    for reason in evaluation["reasons"]:
        print(f"  - {reason}")
    if done("Evaluator"):
        return

    pushed = steps.run(
        "Pusher", {"serving_dir": str(Path(args.serving_dir).resolve()),
                   "model_name": gates.model_name}, [trained, evaluated],
        lambda out: pusher.run(summary["serving_model"], args.serving_dir, gates.model_name,
                               evaluation, out),
        uri=lambda result: result.get("path", "")).result
    page = report.write(root / "reports" / f"{Path(evaluated.folder).name}.html", evaluation,
                        Path(trained.folder) / "history.csv",
                        Path(statistics.folder) / "Split-train" / "statistics.html", pushed,
                        summary)
    if pushed["pushed"]:
        print(f"Pusher: pushed; now serving version {pushed['version']}: {pushed['path']}")
    else:
        print(f"Pusher: not pushed (not blessed); still serving {baseline or 'nothing yet'}; "
              f"the model stays in {summary['serving_model']}")
    print(f"Report: {page}")
    print(metadata_line)


class _Step(typing.NamedTuple):
    folder: str
    result: typing.Any
    artifact: int
    fingerprint: str
    cached: bool


class _Steps:
    """Runs components as recorded, cached executions (pipeline.metadata)."""

    def __init__(self, root: Path, store):
        from pipeline import metadata

        self.root, self.store, self.code = root, store, metadata.code_version()

    def run(self, component: str, parameters: dict, inputs: list, body, resumable=False,
            uri=None, records=()) -> _Step:
        """Reuse a finished execution with the same fingerprint whose files are intact, or run
        one into a fresh folder (or, if `resumable`, into the folder of an unfinished one) and mark
        it complete only if it succeeds. An execution with effects outside the root (`uri` given)
        always runs. `records`: artifact ids recorded as inputs of a new execution, outside the
        fingerprint."""
        from pipeline import metadata

        upstream = [i for i in inputs if isinstance(i, _Step)]
        inputs = [(i.artifact, i.fingerprint) if isinstance(i, _Step) else i for i in inputs]
        print_ = metadata.fingerprint(component, parameters, [p for _, p in inputs], self.code)
        for execution, folder, result, artifact in [] if uri else self.store.finished(
                component, print_):
            if not self.store.intact(folder, artifact):
                print(f"{component}: not reusing {folder}: its files changed after it finished "
                      f"(damaged or edited); running it again")
                self.store.retire(artifact, "its files changed after it finished")
                continue
            self.store.associate(execution)
            print(f"{component}: reusing {folder} (same inputs, parameters and code)")
            return _Step(str(folder), result, artifact.id, print_, True)
        folder = self.store.unfinished(component, print_) if resumable else None
        if folder:
            print(f"{component}: continuing the unfinished execution {folder}")
        else:
            folder = _new_execution_dir(self.root, component)
        execution = self.store.start(component, print_, parameters,
                                     [a for a, _ in inputs] + list(records), folder, self.code)
        try:
            result = json.loads(json.dumps(body(str(folder)), default=str))
        except BaseException as e:
            try:
                self.store.fail(execution, f"{type(e).__name__}: {e}")
                for step in upstream:  # a failure may come from damaged inputs: retire them now
                    [artifact] = self.store.store.get_artifacts_by_id([step.artifact])
                    if not self.store.intact(Path(step.folder), artifact):
                        self.store.retire(artifact, "its files changed after it finished")
            except Exception:  # a full disk refuses this record too; the next run marks it FAILED
                pass
            raise
        (folder / "_COMPLETE").touch()
        artifact = self.store.finish(execution, component, uri(result) if uri else str(folder),
                                     result, content=metadata.tree_fingerprint(folder))
        return _Step(str(folder), result, artifact, print_, False)


@contextlib.contextmanager
def _lock(root: Path):
    """One run at a time per pipeline root: a second one exits at once and says why."""
    import fcntl

    with open(root / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"Another run is using the pipeline root {root} ({holder}). Wait "
                            f"for it to finish, or give this run its own --pipeline-root."
                            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield


def _previous_validated_statistics(root: Path, split: str, now: str) -> str | None:
    """The statistics of `split` that the newest successful ExampleValidator approved, other than
    this run's own (a reused StatisticsGen execution)."""
    runs = sorted((p for p in (root / "ExampleValidator").glob("*") if p.name.isdigit()),
                  key=lambda p: int(p.name), reverse=True)
    for run_dir in runs:
        report = run_dir / "anomalies.json"
        if (run_dir / "_COMPLETE").exists() and report.exists():
            path = json.loads(report.read_text())["statistics"].get(split)
            if path and Path(path).exists() and path != now:
                return path
    return None


def _newest_spans(data: str, window: int) -> str | list[str]:
    """A folder of dated drops (span-YYYYMMDD/) means its newest `window` spans; anything else
    (a file, a glob, a growing folder of shards) is taken as it is."""
    import re

    if window < 1:
        raise UserError(f"--spans must be 1 or more (got {window}).")
    if not Path(data).is_dir():
        return data
    spans = sorted(p for p in Path(data).iterdir()
                   if p.is_dir() and re.fullmatch(r"span-\d{8}", p.name))
    if not spans:
        return data
    chosen = spans[-window:]
    print(f"Spans: {', '.join(p.name for p in chosen)} (the newest {len(chosen)} of "
          f"{len(spans)} in {data})")
    return [str(p) for p in chosen]


def _default_data(root: Path) -> Path:
    from pipeline import default_data
    from pipeline.config import load_json

    spec = load_json("default_data.json")
    path = root / "default_data" / f"synthetic_faces_{spec['rows']}_seed{spec['seed']}.csv"
    if not path.exists():
        print(f"No --data given: drawing {spec['rows']:,} synthetic faces (seed {spec['seed']}) "
              f"into {path}")
        default_data.write_csv(path, spec["rows"], spec["seed"])
    return path


def _new_execution_dir(root: Path, component: str) -> Path:
    """A fresh <root>/<component>/<n>: numbered executions are never rewritten."""
    parent = root / component
    parent.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in parent.iterdir() if p.name.isdigit()), default=0)
    while True:
        n += 1
        try:
            (parent / str(n)).mkdir()
            return parent / str(n)
        except FileExistsError:
            continue


def _summary(counts: dict) -> str:
    written = counts["written"]
    parts = " | ".join(f"{s} {n:,}" for s, n in written.items())
    total = sum(written.values())
    lines = [
        f"ExampleGen: {counts['rows_read']:,} rows read from {len(counts['files'])} file(s): "
        f"{parts} | quarantined {counts['quarantined']:,} | blank {counts['blank_lines']:,}",
        f"  reconciled: {counts['rows_read']:,} = {total:,} written + "
        f"{counts['quarantined']:,} quarantined + {counts['blank_lines']:,} blank",
    ]
    lines += [f"  quarantined {n:,} x {r}" for r, n in counts["quarantine_reasons"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
