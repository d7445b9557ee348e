"""Run the FER pipeline: python -m pipeline.run --runner=DirectRunner [flags].

Flags this program does not know are passed to Apache Beam, e.g.
--direct_num_workers=2 --direct_running_mode=multi_processing, or
--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py
"""
import argparse
import dataclasses
import difflib
import json
import os
import signal
import sys
import typing

import pipeline
from pipeline import artifacts, config
from pipeline.artifact_types import (ANOMALIES, DATA_PAGE, EVALUATION, EXAMPLES, HYPERPARAMETERS,
                                     INFRA_BLESSING, MODEL, PUSHED_MODEL, REPORT, SCHEMA,
                                     STATISTICS, EXPORTED_MODELS, ArtifactType)
from pipeline.errors import IntegrityError, UserError, disk_error, report_error


def parse_args(argv):
    return _parser().parse_known_args(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run", description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_flags(parser)
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
        "--metadata-config", metavar="FILE",
        help="where ML Metadata lives instead of <pipeline root>/metadata.sqlite: a JSON file, "
             "{\"mysql\": {\"host\", \"port\", \"database\", \"user\", \"password\"}} for a "
             "database every machine reaches (password also from $FER_METADATA_PASSWORD; one "
             "run per root is then held by a lease in it), or {\"sqlite\": {\"filename_uri\": "
             "FILE}} for a local file (needed when the root is on object storage)")
    parser.add_argument(
        "--stop-after", metavar="COMPONENT", choices=COMPONENTS, default=COMPONENTS[-1],
        help=f"stop after this step; one of {', '.join(COMPONENTS)}")
    parser.add_argument(
        "--from-scratch", action="store_true",
        help="train from random weights even when a model serves (by default the Trainer "
             "starts from the serving model's weights and fine-tunes them on the new data)")
    parser.add_argument(
        "--distribution", choices=("default", "mirrored", "multi_worker"), default="default",
        help="tf.distribute strategy for the Trainer: default (one device), mirrored (all GPUs "
             "of this machine), multi_worker (MultiWorkerMirroredStrategy; the cluster comes "
             "from TF_CONFIG, and the other workers run python -m components.trainer)")
    parser.add_argument(
        "--stall-timeout", metavar="SECONDS", type=float, default=3600,
        help="end the run when a step prints nothing for this long (a hang must not hold the "
             "pipeline root; default 3600, from 10 to 604800)")
    parser.add_argument(
        "--quiet", action="store_true",
        help="print only the verdict (Evaluator, Pusher), what ends the run, and errors")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="json: one JSON event per line on stdout (run, step started/running/finished, "
             "log lines labelled with their step, run finished or failed), for schedulers")
    return parser


def main(argv=None) -> int:
    from pipeline.progress import Progress

    pipeline.quiet()
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a scheduler's stop
        signal.signal(signum, _stop)
    progress = Progress(args.log_format, args.quiet, args.stall_timeout)
    try:
        if not 10 <= args.stall_timeout <= 604800:
            raise UserError(f"--stall-timeout must lie from 10 to 604800 seconds (got "
                            f"{args.stall_timeout:g}).")
        check_beam_args(beam_args)
        with progress.capture():
            run(args, beam_args, progress)
    except (UserError, IntegrityError) as e:
        error = e
    except Exception as e:
        error = disk_error(e, f"the pipeline root {args.pipeline_root} and the serving directory "
                              f"{args.serving_dir}")
        if error is None:
            progress.failed(f"{type(e).__name__}: {e}", 1)
            raise
    else:
        return 0
    code = report_error(error)
    progress.failed(str(error), code)
    return code


def _stop(signum, frame):
    """Stop at once, as a kill would: an exception raised inside TensorFlow or Beam from a signal
    handler can be swallowed or turned into another error. Nothing is lost: outputs count only
    once marked complete, the next run records the unfinished steps as FAILED and resumes
    training, and a push is renamed into place whole or not at all."""
    print(f"\ninterrupted ({signal.Signals(signum).name}): the run stopped. Unfinished steps "
          f"will not be used (training resumes where it stopped on the next run); the serving "
          f"directory holds only complete versions.", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def check_beam_args(beam_args, parser: argparse.ArgumentParser | None = None,
                    program: str = "python -m pipeline.run") -> None:
    """Refuse bad Beam flags before any work: a flag neither the program (`parser`, default
    pipeline.run's) nor Beam knows is a typo (Beam alone would drop it silently), and the runner
    must exist."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners import create_runner

    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if runner and "dask" in str(runner).lower():  # by its short name or its class path
        raise UserError(
            f"The runner {runner} cannot run this pipeline: Beam's Dask runner never calls "
            f"DoFn.setup or start_bundle and has no sources, sinks or metrics, so ExampleGen and "
            f"TFDV would give wrong results without an error. Use --runner=DirectRunner on one "
            f"machine, or PortableRunner, DataflowRunner, FlinkRunner or SparkRunner beyond it.")
    try:
        create_runner(runner or "DirectRunner")
    except ValueError as e:
        raise UserError(f"Apache Beam has no runner {runner!r} ({e}). Pass one it knows, for "
                        f"example --runner=DirectRunner or --runner=DataflowRunner.") from None
    known = set(options.get_all_options(retain_unknown_options=False))
    strays = set(options.get_all_options(retain_unknown_options=True)) - known
    unknown = [flag for flag in (arg.split("=")[0] for arg in beam_args if arg.startswith("--"))
               if flag[2:].replace("-", "_") in strays]  # named as typed
    if unknown:
        candidates = [*(parser or _parser())._option_string_actions,
                      *("--" + name for name in known)]
        hints = [f"{flag} (did you mean {close[0]}?)" if (
            close := difflib.get_close_matches(flag, candidates, n=1, cutoff=0.75)) else flag
            for flag in unknown]
        raise UserError(f"Unknown flag(s) {', '.join(hints)}: neither a flag of {program} nor "
                        f"an Apache Beam option. See {program} --help for its flags.")


def run(args, beam_args, progress=None) -> None:
    from pipeline import fer_csv

    settings = config.resolve(args)  # every config file and flag checked before any work
    root = artifacts.absolute(args.pipeline_root)
    artifacts.check_layout(root, args.serving_dir, args.data)  # before the root is made or held
    data = _newest_spans(args.data, args.spans) if args.data else None
    if data:
        fer_csv.input_files(data)  # no input: said before anything is made
    try:
        artifacts.makedirs(root)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"The pipeline root {root} cannot be a folder: a file of that name (or "
                        f"above it) is in the way. Pass another --pipeline-root.") from None
    from pipeline import metadata
    from pipeline.progress import Progress

    connection = metadata.store_connection(root, args.metadata_config)
    try:
        with metadata.exclusive(root, connection) as lease:
            Run(Context(settings, args, tuple(beam_args), root, data),
                metadata.Store(root, connection, lease), progress or Progress()).all()
    except artifacts.Busy as holder:
        raise UserError(f"Another run is using the pipeline root {root} ({holder}). Wait for it "
                        f"to finish, or give this run its own --pipeline-root.") from None


class Context(typing.NamedTuple):
    """What every step may know besides its inputs: the checked settings and the run's flags."""

    settings: config.Settings
    args: argparse.Namespace
    beam_args: tuple[str, ...]
    root: str
    data: str | list[str] | None = None  # the input (the newest spans of a folder of them);
    #                                       None: the built-in faces


class Output(typing.NamedTuple):
    """An artifact as a step receives it: where it is, what its producer returned, its ML
    Metadata id, its fingerprint, and whether this run reused it."""

    uri: str
    result: typing.Any
    artifact: int
    fingerprint: str | None
    cached: bool = False


class Step(typing.NamedTuple):
    """One step of the pipeline, as data. `inputs` names, for each argument of its body, the
    earlier step whose output it reads or the resolver (RESOLVERS) that finds it in ML Metadata;
    the runner binds them. Its output is reused when a finished execution has the same
    fingerprint: component, parameters, every input but the `unkeyed` ones, and the code. body,
    say and then get the Context and the bound inputs (as keyword arguments); parameters and
    when, which decide before any input is bound, the Context alone."""

    name: str
    produces: ArtifactType
    body: typing.Callable                    # (context, out, **inputs) -> result: the component
    say: typing.Callable                     # (context, output, **inputs) -> what it prints
    inputs: dict[str, str] = {}
    parameters: typing.Callable = lambda context: {}  # what else decides its output
    when: typing.Callable = lambda context: True      # (context) -> whether it runs at all
    unkeyed: tuple[str, ...] = ()            # inputs in its lineage but not its fingerprint
    resumable: bool = False                  # an unfinished execution is continued, not redone
    effect: typing.Callable | None = None    # (result) -> where it acted outside the root: never
    #                                          reused, always run
    then: typing.Callable = lambda context, output, **inputs: None  # a message that ends the
    #                                          run, or None; raises to stop it with an error


def steps() -> tuple[Step, ...]:
    """The pipeline's DAG, in the order it runs."""
    return checked((
        Step("ExampleGen", EXAMPLES, _ingest, _say_examples, inputs={"data": "data files"},
             parameters=lambda c: {"data": c.args.data or "built-in",
                                   "config": dataclasses.asdict(c.settings.ingest)}),
        Step("StatisticsGen", STATISTICS, _statistics, _say_statistics,
             inputs={"examples": "ExampleGen"}, parameters=lambda c: {
                 "exposure": c.settings.validation["exposure"], "schema": _curated_text(c)}),
        Step("SchemaGen", SCHEMA, _schema, _say_schema, inputs={"statistics": "StatisticsGen"},
             parameters=lambda c: {"schema": _curated_text(c),
                                   "classes": c.settings.ingest.classes}),
        Step("ExampleValidator", ANOMALIES, _validate, _say_validation, then=_stop_here,
             inputs={"statistics": "StatisticsGen", "schema": "SchemaGen",
                     "previous": "previous statistics"},
             parameters=lambda c: {"policy": c.settings.validation}),
        Step("DataPage", DATA_PAGE, _data_page, _say_data_page, then=_stop_on_anomalies,
             inputs={"statistics": "StatisticsGen", "examples": "ExampleGen",
                     "anomalies": "ExampleValidator"},
             parameters=lambda c: {"classes": c.settings.ingest.classes}),
        Step("Tuner", HYPERPARAMETERS, _tune, _say_tuner, inputs={"examples": "ExampleGen"},
             when=lambda c: c.settings.tune > 0, parameters=lambda c: {
                 "trials": c.settings.tune, "space": dataclasses.asdict(c.settings.tuner),
                 "config": dataclasses.asdict(c.settings.trainer)}),
        Step("Trainer", MODEL, _train, _say_trainer, resumable=True, then=_nothing_new,
             inputs={"examples": "ExampleGen", "hyperparameters": "Tuner",
                     "validation": "ExampleValidator", "serving": "serving model"},
             unkeyed=("validation", "serving"),  # see _train
             parameters=lambda c: {"config": dataclasses.asdict(c.settings.trainer),
                                   "distribution": c.args.distribution,
                                   "warm_start": not c.args.from_scratch}),
        Step("Evaluator", EVALUATION, _evaluate, _say_evaluation,
             inputs={"model": "Trainer", "examples": "ExampleGen",
                     "earlier": "earlier examples", "baseline": "serving model"},
             parameters=lambda c: {"gates": dataclasses.asdict(c.settings.evaluation)}),
        Step("Exporter", EXPORTED_MODELS, _export, _say_exports,
             inputs={"model": "Trainer", "examples": "ExampleGen", "evaluation": "Evaluator"},
             parameters=lambda c: {"config": c.settings.deployment.exports,
                                   "parity": c.settings.evaluation.export_parity,
                                   "confidence": c.settings.evaluation.confidence,
                                   "split": c.settings.evaluation.split,
                                   "min_class_examples": c.settings.evaluation.min_class_examples}),
        Step("InfraValidator", INFRA_BLESSING, _infra_validate, _say_infra,
             inputs={"model": "Trainer", "examples": "ExampleGen", "evaluation": "Evaluator"},
             parameters=lambda c: {"config": c.settings.deployment.infra_validation,
                                   "split": c.settings.evaluation.split}),
        Step("Pusher", PUSHED_MODEL, _push, _say_push,
             inputs={"model": "Trainer", "evaluation": "Evaluator",
                     "infra_blessing": "InfraValidator", "exports": "Exporter",
                     "examples": "ExampleGen", "serving": "serving model"},
             effect=lambda result: result.get("path", ""),
             parameters=lambda c: {"serving_dir": artifacts.absolute(c.args.serving_dir),
                                   "model_name": c.settings.evaluation.model_name}),
        Step("Report", REPORT, _report, _say_report, then=_nothing_new_after_evaluation,
             inputs={"evaluation": "Evaluator", "model": "Trainer", "push": "Pusher",
                     "data_page": "DataPage", "examples": "ExampleGen",
                     "serving": "serving model"}),
    ))


def checked(pipeline: tuple[Step, ...]) -> tuple[Step, ...]:
    """The steps, refused when one names an input that is neither an earlier step nor a
    resolver, or that its body does not take: a misspelt name fails here, not mid-run."""
    import inspect

    earlier = set()
    for step in pipeline:
        unknown = [f"{arg}={source!r}" for arg, source in step.inputs.items()
                   if source not in earlier and source not in RESOLVERS]
        takes = inspect.signature(step.body).parameters
        untaken = [arg for arg in step.inputs if arg not in takes]
        if unknown or untaken or not set(step.unkeyed) <= set(step.inputs):
            raise ValueError(
                f"Step {step.name}: inputs {', '.join(unknown) or '-'} name no earlier step (of "
                f"{', '.join(sorted(earlier)) or 'none'}) and no resolver (of "
                f"{', '.join(RESOLVERS)}); its body takes no {', '.join(untaken) or '-'}; "
                f"unkeyed {step.unkeyed} must be inputs.")
        earlier.add(step.name)
    return pipeline


class Run:
    """One run of the pipeline over a root: binds each step's inputs, runs it as a recorded,
    cached execution (pipeline.metadata) and keeps its output for the steps after it."""

    def __init__(self, context: Context, store, progress):
        from pipeline import metadata

        self.context, self.store, self.code = context, store, metadata.code_version()
        self.progress = progress
        self.outputs: dict[str, Output] = {}
        self.resolved: dict[str, typing.Any] = {}

    def all(self) -> None:
        interrupted = self.store.abandon_interrupted()
        if interrupted:
            print(f"Metadata: execution(s) {', '.join(map(str, interrupted))} of an earlier run "
                  f"that was interrupted are now marked FAILED")
        args, progress = self.context.args, self.progress
        for step in steps():
            if step.when(self.context):
                with progress.running(step.name):
                    inputs = self.bind(step)
                    output = self.execute(step, inputs)
                progress.finished(step.name, step.say(self.context, output, **inputs),
                                  output.cached, output.uri)
                ending = step.then(self.context, output, **inputs)
                if ending:
                    progress.message(ending)
                    break
            if step.name == args.stop_after:
                break
        config = f" --metadata-config {args.metadata_config}" if args.metadata_config else ""
        progress.end(f"Metadata: {self.store.where} (python -m pipeline.lineage "
                     f"--pipeline-root {self.context.root} --serving-dir {args.serving_dir}"
                     f"{config})")

    def bind(self, step: Step) -> dict[str, typing.Any]:
        """Each input: an earlier step's Output (None if that step did not run), or what its
        resolver found (an Output, a list of them, or None), resolved once per run."""
        bound = {}
        for arg, source in step.inputs.items():
            if source in RESOLVERS:
                if source not in self.resolved:
                    self.resolved[source] = RESOLVERS[source](self)
                bound[arg] = self.resolved[source]
            else:
                bound[arg] = self.outputs.get(source)
        return bound

    def execute(self, step: Step, inputs: dict[str, typing.Any]) -> Output:
        """Reuse a finished execution with the same fingerprint whose files are intact, or run
        one into a fresh folder (or, if resumable, the folder of an unfinished one), recorded
        COMPLETE with its output only if it succeeds, and only then marked complete on disk."""
        from pipeline import metadata

        def outputs(value) -> list[Output]:
            return [] if value is None else value if isinstance(value, list) else [value]

        upstream = [(arg, o) for arg, value in inputs.items() for o in outputs(value)]
        keyed = [o.fingerprint for arg, o in upstream if arg not in step.unkeyed]
        parameters = step.parameters(self.context)
        print_ = metadata.fingerprint(step.name, parameters, keyed, self.code)
        for execution, folder, result, artifact in [] if step.effect else self.store.finished(
                step.name, print_):
            if not self.store.intact(folder, artifact):
                print(f"{step.name}: not reusing {folder}: its files changed after it finished "
                      f"(damaged or edited); running it again")
                self.store.retire(artifact, "its files changed after it finished")
                continue
            self.store.associate(execution)
            print(f"{step.name}: reusing {folder} (same inputs, parameters and code)")
            return self._keep(step, Output(folder, result, artifact.id, print_, True))
        folder = self.store.unfinished(step.name, print_) if step.resumable else None
        if folder:
            print(f"{step.name}: continuing the unfinished execution {folder}")
        else:
            folder = artifacts.new_execution_dir(self.context.root, step.name)
        execution = self.store.start(step.name, print_, parameters,
                                     [(o.artifact, arg) for arg, o in upstream], folder,
                                     self.code)
        try:
            result = json.loads(json.dumps(step.body(self.context, folder, **inputs),
                                           default=str))
        except BaseException as e:
            try:
                self.store.fail(execution, f"{type(e).__name__}: {e}")
                print(f"{step.name}: FAILED; recorded in ML Metadata (execution {execution.id}) "
                      f"with its reason; its folder {folder} is never reused")
                for _, output in upstream:  # a failure may come from damaged inputs: retire them
                    [artifact] = self.store.store.get_artifacts_by_id([output.artifact])
                    if artifacts.is_dir(output.uri) and not self.store.intact(output.uri,
                                                                              artifact):
                        self.store.retire(artifact, "its files changed after it finished")
            except Exception:  # a full disk refuses this record too; the next run marks it FAILED
                pass
            raise
        artifact = self.store.finish(
            execution, step.produces, step.effect(result) if step.effect else folder, result,
            content=metadata.tree_fingerprint(folder))
        artifacts.mark_complete(folder)  # last: the folder counts once this is there
        if step.effect:  # what it did, not only how it was asked, is what comes after it
            print_ = metadata.fingerprint(print_, result)
        return self._keep(step, Output(folder, result, artifact, print_, False))

    def _keep(self, step: Step, output: Output) -> Output:
        self.outputs[step.name] = output
        return output


# Resolvers: inputs that are no step's output of this run, found through ML Metadata (scoped to
# this root) or outside the root. Each gets the Run and is asked once per run.

def _data_files(run: Run) -> list[Output]:
    """The input files, one artifact per path and content: the data ExampleGen reads."""
    from pipeline import metadata

    data = run.context.data or _default_data(run.context.root, run.context.settings.ingest)
    prints = metadata.file_fingerprints(data)
    if not prints:
        from pipeline import fer_csv

        fer_csv.input_files(data)  # nothing matches: it says so, in its own words
        raise UserError(f"The input {data} changed while it was being listed (its files were "
                        f"removed). Let whatever writes the data finish and run again.")
    return [Output(path, data, artifact, sha) for (path, sha), artifact in
            zip(prints.items(), run.store.input_files(prints))]


def _previous_statistics(run: Run) -> Output | None:
    """The drift split's statistics that the newest earlier validation of this root passed."""
    split = run.context.settings.validation["drift_split"]
    found = run.store.previous_statistics(split, run.outputs["StatisticsGen"].artifact)
    if found is None:
        return None
    path, artifact = found
    return Output(path, None, artifact.id, artifact.custom_properties["fingerprint"].string_value)


def _serving_model(run: Run) -> Output | None:
    """The model serving now (TF Serving's rule: the newest complete version), recorded as this
    root's push of it or as a model found there; its fingerprint is its path and content."""
    from pipeline import metadata, serving

    context = run.context
    path = serving.latest(context.args.serving_dir, context.settings.evaluation.model_name)
    if path is None:
        return None
    content = serving.model_content(path)  # the SavedModel's: not its exports or model card
    return Output(str(path), {"content": content, "pushed_here": run.store.pushed(path) is not None},
                  run.store.model(path, content), metadata.fingerprint(str(path), content))


def _earlier_examples(run: Run) -> list[Output]:
    """The evaluation split of earlier validated runs on other data, newest first, until this
    run's and theirs reach the gates' min_examples (at most max_earlier_runs of them): a span of
    a few hundred faces is too few to judge a model on."""
    gates, split = run.context.settings.evaluation, run.context.settings.evaluation.split
    own, files = run.outputs["ExampleGen"], run.resolved["data files"]
    chosen, count = [], own.result["written"].get(split, 0)
    used = {o.artifact for o in files}
    for folder, result, artifact, print_, inputs in run.store.validated_examples():
        if count >= gates.min_examples or len(chosen) >= gates.max_earlier_runs:
            break
        if artifact == own.artifact or inputs & used:
            continue
        chosen.append(Output(folder, result, artifact, print_, True))
        used |= inputs
        count += result["written"].get(split, 0)
    return chosen


RESOLVERS = {"data files": _data_files, "previous statistics": _previous_statistics,
             "serving model": _serving_model, "earlier examples": _earlier_examples}


# The steps' bodies (each calls its component) and what each prints.

def _ingest(context: Context, out: str, data: list[Output]) -> dict:
    """ExampleGen, checked to have read the input that was fingerprinted: one that changed
    meanwhile is refused, even where the change broke the reading itself."""
    from components import example_gen
    from pipeline import metadata

    given = data[0].result
    try:
        counts = example_gen.run(given, out, context.settings.ingest, context.beam_args)
    finally:
        if metadata.file_fingerprints(given) != {o.uri: o.fingerprint for o in data}:
            raise UserError(
                f"The input {given} changed while it was being read (a file was written to, "
                f"replaced, added or removed), so these examples would match no one version of "
                f"it. Let whatever writes the data finish (write to a temporary name, then "
                f"rename it into place) and run again.") from None
    return counts


def _say_examples(context: Context, output: Output, **_) -> str:
    counts = output.result
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


def _curated_text(context: Context) -> str | None:
    path = context.settings.schema
    return artifacts.read_text(path) if path else None


def _statistics(context: Context, out: str, examples: Output) -> dict:
    from components import schema_gen, statistics_gen

    settings = context.settings
    return statistics_gen.run(
        examples.uri, out, settings.ingest.splits, settings.validation["exposure"],
        schema_gen.load_curated(settings.schema) if settings.schema else None,
        context.beam_args, settings.ingest.train_split)


def _say_statistics(context: Context, output: Output, **_) -> str:
    return (f"StatisticsGen: statistics of {', '.join(output.result)} (TFDV's view, which needs "
            f"the web: {STATISTICS.path(output.uri, 'view', context.settings.ingest.train_split)})")


def _schema(context: Context, out: str, statistics: Output):
    from components import schema_gen

    ingest = context.settings.ingest
    return schema_gen.run(statistics.result[ingest.train_split], out, context.settings.schema,
                          ingest.classes)


def _say_schema(context: Context, output: Output, **_) -> str:
    source = (f"the curated {context.settings.schema}" if output.result[1]
              else "the schema TFDV inferred (no curated schema.pbtxt yet)")
    return (f"SchemaGen: validating against {source}; inferred for review: "
            f"{SCHEMA.path(output.uri, 'inferred')}")


def _validate(context: Context, out: str, statistics: Output, schema: Output,
              previous: Output | None) -> list:
    """The findings, kept also when one stops the run: the data page after it shows them, and
    then the run stops (_stop_on_anomalies)."""
    from components import example_validator

    return example_validator.run(statistics.result, schema.result[0], out,
                                 context.settings.validation, previous and previous.uri,
                                 stop=False, train_split=context.settings.ingest.train_split)


def _say_validation(context: Context, output: Output, previous: Output | None, **_) -> str:
    findings = output.result
    lines = [f"  {_FINDING[f['action']]} [{f['check']}] {f['split']}, feature '{f['feature']}': "
             f"{f['what']}" for f in findings]
    count = {action: sum(f["action"] == action for f in findings) for action in _FINDING}
    verdict = (f"{count['stop']} anomal{'y stops' if count['stop'] == 1 else 'ies stop'} the run"
               if count["stop"] else "data passed")
    return "\n".join([*lines, (
        f"ExampleValidator: {verdict} ({count['warn']} warning(s), {count['noise']} "
        f"difference(s) within sampling noise; drift checked against "
        f"{previous.uri if previous else 'nothing: no earlier validated run'})")])


_FINDING = {"stop": "STOP", "warn": "warning", "noise": "sampling noise"}


def _data_page(context: Context, out: str, statistics: Output, examples: Output,
               anomalies: Output) -> str:
    from pipeline import data_page

    ingest = context.settings.ingest
    return data_page.write(
        DATA_PAGE.path(out, "page"), statistics.result, examples.uri, ingest.classes,
        ingest.image_size, anomalies.result,
        {split: STATISTICS.path(statistics.uri, "view", split) for split in statistics.result},
        ingest.train_split)


def _say_data_page(context: Context, output: Output, **_) -> str:
    return f"  data page (class counts, image features, sample faces, findings): {output.result}"


def _stop_here(context: Context, output: Output, **_) -> None:
    """Asked to stop after the ExampleValidator, a run still fails on what it found."""
    if context.args.stop_after == "ExampleValidator":
        _stop_on_anomalies(context, None, output)


def _stop_on_anomalies(context: Context, output: Output | None, anomalies: Output, **_) -> None:
    from components import example_validator

    error = example_validator.stop_error(
        anomalies.result, ANOMALIES.path(anomalies.uri, "anomalies"), context.settings.schema)
    if error:
        raise example_validator.DataValidationError(
            f"{error}" + (f" The data page shows them: {output.result}" if output else ""))


def _tune(context: Context, out: str, examples: Output) -> dict:
    from components import tuner

    settings = context.settings
    return tuner.run(examples.uri, out, settings.trainer, settings.ingest, settings.tuner,
                     settings.tune)


def _say_tuner(context: Context, output: Output, **_) -> str:
    search = output.result
    return (f"Tuner: {len(search['trials'])} trial(s); best eval accuracy "
            f"{search['best_value']:.3f} with {search['best_hyperparameters']}")


def _trainer_config(context: Context, hyperparameters: Output | None):
    """The trainer settings, with the Tuner's best values when it ran."""
    if hyperparameters is None:
        return context.settings.trainer
    return context.settings.trainer.tuned(hyperparameters.result["best_hyperparameters"])


def _train(context: Context, out: str, examples: Output, hyperparameters: Output | None,
           validation: Output, serving: Output | None) -> dict:
    """The Trainer, from the serving model's weights unless --from-scratch or they cannot be
    read. The validation and the serving model are in its lineage but not its fingerprint: a
    model trained on the same examples with the same settings and code is reused whatever it
    started from, so an identical second run stays "nothing new"."""
    from components import trainer

    base_model = None
    if serving and not context.args.from_scratch:
        problem = trainer.base_model_problem(serving.uri, context.settings.ingest)
        if problem:
            print(f"Trainer: cannot start from the serving model {serving.uri} ({problem}); "
                  f"training from scratch")
        else:
            base_model = serving.uri
    if context.args.distribution == "multi_worker":
        print(f"Trainer: each other worker runs "
              f"{_worker_command(context, examples, hyperparameters, base_model)}", flush=True)
    return trainer.run(examples.uri, out, _trainer_config(context, hyperparameters),
                       context.settings.ingest, context.args.distribution, base_model=base_model)


def _worker_command(context: Context, examples: Output, hyperparameters: Output | None,
                    base_model: str | None) -> str:
    """The command that makes a machine of the cluster (TF_CONFIG) train beside this chief, with
    exactly its settings: the same configuration flags, base model and tuned values; quoted for
    a shell (a glob given as --data reaches the worker as the chief got it)."""
    import shlex

    command = ["python", "-m", "components.trainer", "--examples", examples.uri,
               "--distribution", "multi_worker"]
    if base_model:
        command += ["--base-model", base_model]
    if hyperparameters:
        command += ["--hyperparameters", HYPERPARAMETERS.path(hyperparameters.uri, "best")]
    for flag in ("data", "ingest_config", "max_bad_rows", "trainer_config", "epochs",
                 "batch_size"):
        value = getattr(context.args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(command)


def _say_trainer(context: Context, output: Output, **_) -> str:
    summary, best = output.result, output.result["best_eval"]
    return (f"Trainer: {summary['epochs_run']} epoch(s); best eval accuracy "
            f"{best['val_accuracy']:.3f} at epoch {summary['best_epoch']}; SavedModel "
            f"{summary['serving_model']}; TensorBoard: tensorboard --logdir "
            f"{MODEL.path(output.uri, 'logs')}")


def _nothing_new(context: Context, output: Output, serving: Output | None, **_) -> str | None:
    """An identical run whose model this root already pushed: nothing to evaluate or push."""
    from pipeline.serving import model_content

    if output.cached and serving and serving.result["pushed_here"] and (
            model_content(output.result["serving_model"]) == serving.result["content"]):
        return (f"Nothing new: the data, parameters and code are those of an earlier run, whose "
                f"model already serves as {serving.uri}.")
    return None


def _evaluate(context: Context, out: str, model: Output, examples: Output,
              earlier: list[Output], baseline: Output | None) -> dict:
    from components import evaluator

    split = context.settings.evaluation.split
    sources = [examples, *earlier]
    print(f"Evaluator: scoring {sum(o.result['written'].get(split, 0) for o in sources):,} "
          f"{split} examples from {len(sources)} run(s)"
          + (f" and the serving model on the same ones" if baseline else ""), flush=True)
    return evaluator.run(model.result["serving_model"], [examples.uri, *(o.uri for o in earlier)],
                         out, context.settings.evaluation, context.settings.ingest.classes,
                         baseline and baseline.uri, context.beam_args)


def _say_evaluation(context: Context, output: Output, baseline: Output | None, **_) -> str:
    evaluation = output.result
    values = evaluation["metrics"]["candidate"]
    earlier = len(evaluation["examples_from"]) - 1
    macro = values["macro_accuracy"]
    return "\n".join([
        f"Evaluator: {'BLESSED' if evaluation['blessed'] else 'NOT BLESSED'} on "
        f"{evaluation['examples']:,} {context.settings.evaluation.split} examples"
        + (f" (this run's and those of {earlier} earlier validated run(s))" if earlier else "")
        + f": accuracy {values['accuracy']:.3f}, macro "
        f"{'n/a' if macro is None else f'{macro:.3f}'}; compared with "
        f"{baseline.uri if baseline else 'no serving model'}",
        *(f"  - {reason}" for reason in evaluation["reasons"]),
        *(f"  - class {name} not judged: only {n} {evaluation['split']} example(s) (fewer than "
          f"{evaluation['gates']['min_class_examples']}); it neither blesses nor blocks"
          for name, n in evaluation["not_judged"].items())])


# What the Exporter and the InfraValidator record for a model the Evaluator did not bless.
_NOT_FOR_AN_UNBLESSED_MODEL = {"skipped": "the Evaluator did not bless the model"}


def _export(context: Context, out: str, model: Output, examples: Output,
            evaluation: Output) -> dict:
    """TensorFlow Lite float32 and int8 and ONNX, each judged against the SavedModel (not made
    for a model the Evaluator did not bless: it would not be pushed)."""
    from components import exporter

    if not evaluation.result["blessed"]:
        return dict(_NOT_FOR_AN_UNBLESSED_MODEL)
    gates, ingest = context.settings.evaluation, context.settings.ingest
    return exporter.run(MODEL.path(model.uri, "keras"), model.result["serving_model"],
                        examples.uri, out, context.settings.deployment.exports,
                        gates.export_parity, gates.confidence, ingest.classes, gates.split,
                        gates.min_class_examples, ingest.train_split, ingest.image_size)


def _say_exports(context: Context, output: Output, **_) -> str:
    made = output.result
    if "skipped" in made:
        return f"Exporter: skipped: {made['skipped']}"
    parity = made["parity"]
    lines = [f"Exporter: scored on {made['examples']:,} {made['split']} examples beside "
             f"the SavedModel (accuracy {made['saved_model']['accuracy']:.3f}); parity gate: "
             f"held back if shown behind by more than {parity['accuracy']} overall or "
             f"{parity['class_accuracy']} in a class" + (
                 f" (not judged, too few examples: "
                 f"{', '.join(f'{c} {n}' for c, n in made['not_judged'].items())})"
                 if made["not_judged"] else "")]
    for name, export in made["exports"].items():
        if "accuracy" not in export:
            lines.append(f"  {name}: NOT shipped: {'; '.join(export['reasons'])}")
            continue
        measured = (f"accuracy {export['accuracy']:.3f} ({export['accuracy_difference']:+.3f}), "
                    f"top-1 agreement with the SavedModel {export['agreement']:.1%}, "
                    f"{export['bytes'] / 1e6:.1f} MB, {export['latency_ms']['median']:.1f} ms "
                    f"per image (one thread): {EXPORTED_MODELS.path(output.uri, name)}")
        lines.append(f"  {name}: {'ships' if export['shipped'] else 'NOT shipped'}: {measured}"
                     + "".join(f"\n    - {reason}" for reason in export["reasons"]))
    return "\n".join(lines)


def _infra_validate(context: Context, out: str, model: Output, examples: Output,
                    evaluation: Output) -> dict:
    """The candidate loaded and queried as a server would (not for a model the Evaluator did
    not bless: it would not be pushed)."""
    from components import infra_validator

    if not evaluation.result["blessed"]:
        return dict(_NOT_FOR_AN_UNBLESSED_MODEL)
    ingest = context.settings.ingest
    return infra_validator.run(model.result["serving_model"], MODEL.path(model.uri, "keras"),
                               examples.uri, out, context.settings.deployment.infra_validation,
                               ingest.classes, context.settings.evaluation.split,
                               ingest.image_size)


def _say_infra(context: Context, output: Output, **_) -> str:
    verdict = output.result
    if "skipped" in verdict:
        return f"InfraValidator: skipped: {verdict['skipped']}"
    bounds = verdict["bounds"]
    head = (f"InfraValidator: {'INFRA_BLESSED' if verdict['blessed'] else 'INFRA_NOT_BLESSED'}: "
            f"{verdict['canary_examples']} {verdict['split']} examples through "
            f"{', '.join(verdict['signatures']) or 'the serving signatures'} in a process of "
            f"its own (at most {bounds['memory_limit_mib']:,} MiB, {bounds['timeout_seconds']} s)")
    if not verdict["blessed"]:
        return "\n".join([head, *(f"  - {reason}" for reason in verdict["reasons"])])
    timed = verdict["signatures"]["serving_default"]["latency_ms"]
    return (f"{head}: answers as the Trainer's model (largest difference "
            f"{max(s['max_difference'] for s in verdict['signatures'].values()):.1g}); loaded "
            f"in {verdict['load_seconds']:.1f} s, peak {verdict['peak_memory_mib']:,.0f} MiB; "
            f"serving_default latency batch 1 median {timed['batch_1']['median']:.1f} ms, p99 "
            f"{timed['batch_1']['p99']:.1f} ms; batch 32 median "
            f"{timed['batch_32']['median']:.1f} ms, p99 {timed['batch_32']['p99']:.1f} ms")


def _push(context: Context, out: str, model: Output, evaluation: Output,
          infra_blessing: Output | None, exports: Output | None, examples: Output,
          serving: Output | None) -> dict:
    """The Pusher, with the InfraValidator's verdict, the exports that ship and the model card
    (each only when its step ran and did not skip)."""
    from components import pusher
    from pipeline import metadata, model_card

    def made(output):
        return output if output and "skipped" not in output.result else None

    infra, tflite = made(infra_blessing), made(exports)
    card = model_card.build(
        context.settings.evaluation.model_name, evaluation.result, model.result,
        examples.result, infra and infra.result, tflite and tflite.result,
        metadata.source_commit(), context.settings.ingest.classes,
        context.settings.ingest.split_roles) if evaluation.result["blessed"] else None
    where = infra and INFRA_BLESSING.path(infra.uri, "result")
    return pusher.run(model.result["serving_model"], context.args.serving_dir,
                      context.settings.evaluation.model_name, evaluation.result, out,
                      infra=infra and (where, infra.result),
                      exports=tflite and (tflite.uri, tflite.result), card=card)


def _say_push(context: Context, output: Output, model: Output, serving: Output | None,
              **_) -> str:
    pushed = output.result
    if pushed["pushed"]:
        extras = [f"{name} {how}" for name, how in (pushed.get("exports") or {}).items()]
        return (f"Pusher: pushed; now serving version {pushed['version']}: {pushed['path']}"
                + (f"\n  exports: {'; '.join(extras)}" if extras else "")
                + (f"\n  model card: {pushed['model_card']}" if pushed.get("model_card")
                   else ""))
    why = (f"not pushed: {pushed['why']}" if pushed.get("refused_by")
           else "not pushed (not blessed)")
    return (f"Pusher: {why}; still serving {serving.uri if serving else 'nothing yet'}; the "
            f"model stays in {model.result['serving_model']} (its lineage: python -m "
            f"pipeline.lineage --pipeline-root {context.root} --execution {model.uri})")


def _report(context: Context, out: str, evaluation: Output, model: Output, push: Output,
            data_page: Output, examples: Output, serving: Output | None) -> str:
    """The run report: what was decided, on what evidence, and where the model went."""
    from pipeline import report

    return report.write(REPORT.path(out, "page"), evaluation.result,
                        MODEL.path(model.uri, "history"), data_page.result, push.result,
                        model.result, examples_dir=examples.uri)


def _say_report(context: Context, output: Output, **_) -> str:
    return f"Report: {output.result}"


def _nothing_new_after_evaluation(context: Context, output: Output, model: Output,
                                  evaluation: Output, serving: Output | None,
                                  **_) -> str | None:
    """A model already judged NOT BLESSED against this same serving model: nothing was pushed,
    and the report is the earlier run's."""
    if model.cached and evaluation.cached and not evaluation.result["blessed"]:
        return (f"Nothing new: the data, parameters and code are those of an earlier run, whose "
                f"model was NOT BLESSED for the reasons above, so nothing was pushed; still "
                f"serving {serving.uri if serving else 'nothing yet'}. Its report: "
                f"{output.result}")
    return None


def _newest_spans(data: str, window: int) -> str | list[str]:
    """A folder of dated drops (span-YYYYMMDD/) means its newest `window` spans; anything else
    (a file, a glob, a growing folder of shards) is taken as it is."""
    import re

    if window < 1:
        raise UserError(f"--spans must be 1 or more (got {window}).")
    if "*" in data or "?" in data or not artifacts.is_dir(data):
        return data
    spans = [name for name in artifacts.listdir(data) if re.fullmatch(r"span-\d{8}", name)
             and artifacts.is_dir(artifacts.join(data, name))]
    if not spans:
        return data
    chosen = spans[-window:]
    print(f"Spans: {', '.join(chosen)} (the newest {len(chosen)} of {len(spans)} in {data})")
    empty = [name for name in chosen if not [
        f for f in artifacts.listdir(artifacts.join(data, name)) if not f.startswith(".")]]
    if empty:
        print(f"Spans: {', '.join(empty)} hold(s) no file: this run reads "
              f"{len(chosen) - len(empty)} span(s), not {len(chosen)}")
    if len(empty) == len(chosen):
        raise UserError(f"The newest {len(chosen)} span(s) of {data} ({', '.join(chosen)}) hold "
                        f"no file. Let the drop finish, or pass a larger --spans.")
    others = [name for name in artifacts.listdir(data) if name not in spans
              and not name.startswith(".")]
    if others:
        print(f"Spans: not read, being outside span-YYYYMMDD folders: {', '.join(others)}")
    return [artifacts.join(data, name) for name in chosen if name not in empty]


def _default_data(root: str, ingest) -> str:
    from pipeline import default_data
    from pipeline.config import load_json

    spec = load_json("default_data.json")
    path = artifacts.join(root, "default_data",
                          f"synthetic_faces_{spec['rows']}_seed{spec['seed']}.csv")
    if not artifacts.exists(path):
        print(f"No --data given: drawing {spec['rows']:,} synthetic faces (seed {spec['seed']}) "
              f"into {path}")
        default_data.write_csv(path, spec["rows"], spec["seed"], ingest)
    return path


COMPONENTS = tuple(step.name for step in steps())

if __name__ == "__main__":
    sys.exit(main())
