"""Run the FER pipeline: python -m pipeline.run --runner=DirectRunner [flags].

Flags this program does not know are passed to Apache Beam, e.g.
--direct_num_workers=2 --direct_running_mode=multi_processing, or
--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py
"""
import argparse
import dataclasses
import difflib
import functools
import json
import os
import signal
import sys
import typing

import pipeline
from pipeline import artifacts, config
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
    return parser


def main(argv=None) -> int:
    pipeline.quiet()
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
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
        candidates = [*_parser()._option_string_actions, *("--" + name for name in known)]
        hints = [f"{flag} (did you mean {close[0]}?)" if (
            close := difflib.get_close_matches(flag, candidates, n=1, cutoff=0.75)) else flag
            for flag in unknown]
        raise UserError(f"Unknown flag(s) {', '.join(hints)}: neither a pipeline flag nor an "
                        f"Apache Beam option. See python -m pipeline.run --help for the "
                        f"pipeline's flags.")


def run(args, beam_args) -> None:
    settings = config.resolve(args)  # every config file and flag checked before any work
    root = artifacts.absolute(args.pipeline_root)
    artifacts.check_layout(root, args.serving_dir, args.data)  # before the root is made or held
    try:
        artifacts.makedirs(root)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"The pipeline root {root} cannot be a folder: a file of that name (or "
                        f"above it) is in the way. Pass another --pipeline-root.") from None
    from pipeline import metadata

    connection = metadata.store_connection(root, args.metadata_config)
    try:
        with metadata.exclusive(root, connection) as lease:
            Run(args, beam_args, settings, root, metadata.Store(root, connection, lease)).all()
    except artifacts.Busy as holder:
        raise UserError(f"Another run is using the pipeline root {root} ({holder}). Wait for it "
                        f"to finish, or give this run its own --pipeline-root.") from None


class Step(typing.NamedTuple):
    """One step of the pipeline, as data. Its output is reused when a finished execution has the
    same fingerprint: component, parameters, the outputs of `inputs` (and the `recorded` inputs
    that carry a fingerprint), and the code."""

    name: str
    inputs: tuple[str, ...]                 # the earlier steps whose outputs it reads
    body: typing.Callable                   # (run, output folder) -> result: the component
    say: typing.Callable                    # (run, Output) -> what it prints
    parameters: typing.Callable             # (run) -> dict: what else decides its output
    when: typing.Callable = lambda run: True
    resumable: bool = False                 # an unfinished execution is continued, not redone
    effect: typing.Callable | None = None   # (result) -> where it acted outside the root: never
    #                                         reused, always run
    recorded: typing.Callable = lambda run: []  # (run) -> [(artifact id, fingerprint or None)]:
    #                                         inputs that are no step's output (None: not in key)
    then: typing.Callable = lambda run: None    # (run) -> a message that ends the run, or None


def steps() -> tuple[Step, ...]:
    """The pipeline's DAG, in the order it runs."""
    return (
        Step("ExampleGen", (), _ingest, _summary, recorded=_data_files, parameters=lambda r: {
            "data": r.data, "config": dataclasses.asdict(r.settings.ingest)}),
        Step("StatisticsGen", ("ExampleGen",), _statistics, _say_statistics, parameters=lambda r: {
            "exposure": r.settings.validation["exposure"], "schema": r.curated_schema_text}),
        Step("SchemaGen", ("StatisticsGen",), _schema, _say_schema, parameters=lambda r: {
            "schema": r.curated_schema_text, "classes": r.settings.ingest.classes}),
        Step("ExampleValidator", ("StatisticsGen", "SchemaGen"), _validate, _say_validation,
             parameters=lambda r: {"policy": r.settings.validation,
                                   "previous": r.previous_statistics}),
        Step("Tuner", ("ExampleGen",), _tune, _say_tuner, when=lambda r: r.settings.tune > 0,
             parameters=lambda r: {"trials": r.settings.tune,
                                   "space": dataclasses.asdict(r.settings.tuner),
                                   "config": dataclasses.asdict(r.settings.trainer)}),
        Step("Trainer", ("ExampleGen", "Tuner"), _train, _say_trainer, resumable=True,
             recorded=_trainer_lineage, then=_nothing_new, parameters=lambda r: {
                 "config": dataclasses.asdict(r.trainer_config),
                 "distribution": r.args.distribution, "warm_start": not r.args.from_scratch}),
        Step("Evaluator", ("Trainer", "ExampleGen"), _evaluate, _say_evaluation,
             recorded=lambda r: [(artifact, print_) for _, artifact, print_ in
                                 r.evaluation_examples[1:]],
             then=_nothing_new_after_evaluation,
             parameters=lambda r: {"gates": dataclasses.asdict(r.settings.evaluation),
                                   "baseline": str(r.baseline),
                                   "baseline_content": r.baseline_content}),
        Step("Pusher", ("Trainer", "Evaluator"), _push, _say_push,
             effect=lambda result: result.get("path", ""),
             parameters=lambda r: {"serving_dir": artifacts.absolute(r.args.serving_dir),
                                   "model_name": r.settings.evaluation.model_name}),
    )


class Output(typing.NamedTuple):
    folder: str
    result: typing.Any
    artifact: int
    fingerprint: str
    cached: bool


class Run:
    """One run of the pipeline over a root: runs the steps as recorded, cached executions
    (pipeline.metadata), and holds their outputs for the steps after them."""

    def __init__(self, args, beam_args, settings, root: str, store):
        from pipeline import metadata

        self.args, self.beam_args, self.settings, self.root = args, beam_args, settings, root
        self.store, self.code = store, metadata.code_version()
        self.outputs: dict[str, Output] = {}

    def all(self) -> None:
        interrupted = self.store.abandon_interrupted()
        if interrupted:
            print(f"Metadata: execution(s) {', '.join(map(str, interrupted))} of an earlier run "
                  f"that was interrupted are now marked FAILED")
        for step in steps():
            if step.when(self):
                print(step.say(self, self.execute(step)))
                ending = step.then(self)
                if ending:
                    print(ending)
                    break
            if step.name == self.args.stop_after:
                break
        config = (f" --metadata-config {self.args.metadata_config}"
                  if self.args.metadata_config else "")
        print(f"Metadata: {self.store.where} (python -m pipeline.lineage "
              f"--pipeline-root {self.root} --serving-dir {self.args.serving_dir}{config})")

    def folder(self, step: str) -> str:
        return self.outputs[step].folder

    def result(self, step: str):
        return self.outputs[step].result

    def execute(self, step: Step) -> Output:
        """Reuse a finished execution with the same fingerprint whose files are intact, or run
        one into a fresh folder (or, if resumable, the folder of an unfinished one), recorded
        COMPLETE with its output only if it succeeds, and only then marked complete on disk."""
        from pipeline import metadata

        upstream = [self.outputs[name] for name in step.inputs if name in self.outputs]
        inputs = [(o.artifact, o.fingerprint) for o in upstream] + step.recorded(self)
        parameters = step.parameters(self)
        print_ = metadata.fingerprint(step.name, parameters,
                                      [p for _, p in inputs if p is not None], self.code)
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
            folder = artifacts.new_execution_dir(self.root, step.name)
        execution = self.store.start(step.name, print_, parameters, [a for a, _ in inputs],
                                     folder, self.code)
        try:
            result = json.loads(json.dumps(step.body(self, folder), default=str))
        except BaseException as e:
            try:
                self.store.fail(execution, f"{type(e).__name__}: {e}")
                for output in upstream:  # a failure may come from damaged inputs: retire them
                    [artifact] = self.store.store.get_artifacts_by_id([output.artifact])
                    if not self.store.intact(output.folder, artifact):
                        self.store.retire(artifact, "its files changed after it finished")
            except Exception:  # a full disk refuses this record too; the next run marks it FAILED
                pass
            raise
        artifact = self.store.finish(
            execution, step.name, step.effect(result) if step.effect else folder, result,
            content=metadata.tree_fingerprint(folder))
        artifacts.mark_complete(folder)  # last: the folder counts once this is there
        return self._keep(step, Output(folder, result, artifact, print_, False))

    def _keep(self, step: Step, output: Output) -> Output:
        self.outputs[step.name] = output
        return output

    # What the steps share, worked out once when first needed.

    @functools.cached_property
    def data(self) -> str | list[str]:
        args = self.args
        return _newest_spans(args.data, args.spans) if args.data else _default_data(self.root)

    @functools.cached_property
    def data_files(self) -> dict[str, str]:
        from pipeline import metadata

        return metadata.file_fingerprints(self.data)

    @functools.cached_property
    def curated_schema_text(self) -> str | None:
        path = self.settings.schema
        return artifacts.read_text(path) if path else None

    @functools.cached_property
    def previous_statistics(self) -> str | None:
        split = self.settings.validation["drift_split"]
        return self.store.previous_statistics(split, self.result("StatisticsGen")[split])

    @functools.cached_property
    def evaluation_examples(self) -> list[tuple[str, int, str]]:
        """(folder, artifact, fingerprint) of the examples the Evaluator judges on, this run's
        first: a span of a few hundred faces is too few to judge a model on, so the evaluation
        split of earlier validated runs on other data is added, newest first, until the gates'
        min_examples (at most max_earlier_runs of them)."""
        gates, split = self.settings.evaluation, self.settings.evaluation.split
        own = self.outputs["ExampleGen"]
        chosen = [(own.folder, own.artifact, own.fingerprint)]
        count = own.result["written"].get(split, 0)
        used = set(self.store.input_files(self.data_files))
        for folder, result, artifact, print_, files in self.store.validated_examples():
            if count >= gates.min_examples or len(chosen) > gates.max_earlier_runs:
                break
            if artifact == own.artifact or files & used:
                continue
            chosen.append((folder, artifact, print_))
            used |= files
            count += result["written"].get(split, 0)
        return chosen

    @property
    def trainer_config(self):
        """The trainer settings, with the Tuner's best values when it ran."""
        if "Tuner" not in self.outputs:
            return self.settings.trainer
        return self.settings.trainer.tuned(self.result("Tuner")["best_hyperparameters"])

    @functools.cached_property
    def baseline(self) -> str | None:
        from pipeline import serving

        return serving.latest(self.args.serving_dir, self.settings.evaluation.model_name)

    @functools.cached_property
    def baseline_content(self) -> str | None:
        from pipeline import metadata

        return metadata.tree_fingerprint(self.baseline)

    @functools.cached_property
    def base_model(self) -> str | None:
        """The serving model the Trainer starts from, unless --from-scratch or it cannot be
        read (then the Evaluator, comparing with it, says more if it cannot be served either)."""
        from components import trainer

        if self.args.from_scratch or not self.baseline:
            return None
        problem = trainer.base_model_problem(self.baseline, self.settings.ingest)
        if problem:
            print(f"Trainer: cannot start from the serving model {self.baseline} ({problem}); "
                  f"training from scratch")
            return None
        return self.baseline


# The steps' bodies (each calls its component) and what each prints.

def _ingest(run: Run, out: str) -> dict:
    """ExampleGen, checked to have read the input that was fingerprinted: one that changed
    meanwhile is refused, even where the change broke the reading itself."""
    from components import example_gen
    from pipeline import metadata

    try:
        counts = example_gen.run(run.data, out, run.settings.ingest, run.beam_args)
    finally:
        if metadata.file_fingerprints(run.data) != run.data_files:
            raise UserError(
                f"The input {run.data} changed while it was being read (a file was written to, "
                f"replaced, added or removed), so these examples would match no one version of "
                f"it. Let whatever writes the data finish (write to a temporary name, then "
                f"rename it into place) and run again.") from None
    return counts


def _data_files(run: Run) -> list:
    """The input files, by content: ExampleGen's inputs, in its fingerprint."""
    return list(zip(run.store.input_files(run.data_files), run.data_files.values()))


def _statistics(run: Run, out: str) -> dict:
    from components import schema_gen, statistics_gen

    return statistics_gen.run(
        run.folder("ExampleGen"), out, run.settings.ingest.splits,
        run.settings.validation["exposure"],
        schema_gen.load_curated(run.settings.schema) if run.settings.schema else None,
        run.beam_args)


def _say_statistics(run: Run, output: Output) -> str:
    return (f"StatisticsGen: statistics of {', '.join(output.result)} (TFDV's view, which needs "
            f"the web: {artifacts.split_dir(output.folder, 'train')}/statistics.html)")


def _schema(run: Run, out: str):
    from components import schema_gen

    return schema_gen.run(run.result("StatisticsGen")["train"], out, run.settings.schema,
                          run.settings.ingest.classes)


def _say_schema(run: Run, output: Output) -> str:
    schema_path, is_curated = output.result
    source = (f"the curated {run.settings.schema}" if is_curated
              else "the schema TFDV inferred (no curated schema.pbtxt yet)")
    return (f"SchemaGen: validating against {source}; inferred for review: "
            f"{artifacts.join(os.path.dirname(schema_path), 'inferred_schema.pbtxt')}")


def _validate(run: Run, out: str) -> list:
    """ExampleValidator, and the data page beside its findings (also when it stops the run:
    then the page shows why)."""
    from components import example_validator

    try:
        findings = example_validator.run(run.result("StatisticsGen"), run.result("SchemaGen")[0],
                                         out, run.settings.validation, run.previous_statistics)
    except example_validator.DataValidationError as e:
        raise example_validator.DataValidationError(
            f"{e} The data page shows them: {_data_page(run, out)}") from None
    _data_page(run, out)
    return findings


def _data_page(run: Run, out: str) -> str:
    from pipeline import data_page

    report = artifacts.join(out, "anomalies.json")
    findings = json.loads(artifacts.read_text(report))["findings"] if artifacts.exists(
        report) else None
    statistics = run.result("StatisticsGen")
    return data_page.write(
        artifacts.join(out, "data.html"), statistics, run.folder("ExampleGen"),
        run.settings.ingest.classes, run.settings.ingest.image_size, findings,
        {split: artifacts.join(os.path.dirname(path), "statistics.html")
         for split, path in statistics.items()})


def _say_validation(run: Run, output: Output) -> str:
    lines = [f"  {'warning' if f['action'] == 'warn' else 'sampling noise'} [{f['check']}] "
             f"{f['split']}, feature '{f['feature']}': {f['what']}" for f in output.result]
    noise = sum(f["action"] == "noise" for f in output.result)
    return "\n".join([*lines, (
        f"ExampleValidator: data passed ({len(output.result) - noise} warning(s), {noise} "
        f"difference(s) within sampling noise; drift checked against "
        f"{run.previous_statistics or 'nothing: no earlier validated run'})"),
        f"  data page (class counts, image features, sample faces, findings): "
        f"{artifacts.join(output.folder, 'data.html')}"])


def _tune(run: Run, out: str) -> dict:
    from components import tuner

    return tuner.run(run.folder("ExampleGen"), out, run.settings.trainer, run.settings.ingest,
                     run.settings.tuner, run.settings.tune)


def _say_tuner(run: Run, output: Output) -> str:
    search = output.result
    return (f"Tuner: {len(search['trials'])} trial(s); best eval accuracy "
            f"{search['best_value']:.3f} with {search['best_hyperparameters']}")


def _trainer_lineage(run: Run) -> list:
    """What the Trainer depends on beyond its examples, recorded as its inputs for the lineage but
    outside its fingerprint: the validation that let the data through (so the lineage shows
    StatisticsGen, SchemaGen and ExampleValidator too), and the model it starts from. A model
    trained on the same examples with the same settings and code is reused whatever it started
    from, so an identical second run stays "nothing new"."""
    validated = [(run.outputs["ExampleValidator"].artifact, None)]
    model = run.base_model  # the serving model, whose content is hashed once (baseline_content)
    return validated + ([(run.store.model(model, run.baseline_content), None)] if model else [])


def _train(run: Run, out: str) -> dict:
    from components import trainer

    if run.args.distribution == "multi_worker":
        print(f"Trainer: each other worker runs {_worker_command(run)}", flush=True)
    return trainer.run(run.folder("ExampleGen"), out, run.trainer_config, run.settings.ingest,
                       run.args.distribution, base_model=run.base_model)


def _worker_command(run: Run) -> str:
    """The command that makes a machine of the cluster (TF_CONFIG) train beside this chief, with
    exactly its settings: the same configuration flags, base model and tuned values; quoted for
    a shell (a glob given as --data reaches the worker as the chief got it)."""
    import shlex

    args = run.args
    command = ["python", "-m", "components.trainer", "--examples", run.folder("ExampleGen"),
               "--distribution", "multi_worker"]
    if run.base_model:
        command += ["--base-model", run.base_model]
    if "Tuner" in run.outputs:
        command += ["--hyperparameters",
                    artifacts.join(run.folder("Tuner"), "best_hyperparameters.json")]
    for flag in ("data", "ingest_config", "max_bad_rows", "trainer_config", "epochs",
                 "batch_size"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(command)


def _say_trainer(run: Run, output: Output) -> str:
    summary, best = output.result, output.result["best_eval"]
    return (f"Trainer: {summary['epochs_run']} epoch(s); best eval accuracy "
            f"{best['val_accuracy']:.3f} at epoch {summary['best_epoch']}; SavedModel "
            f"{summary['serving_model']}; TensorBoard: tensorboard --logdir {output.folder}/logs")


def _nothing_new(run: Run) -> str | None:
    from pipeline import metadata

    trained = run.outputs["Trainer"]
    if trained.cached and run.baseline and run.store.pushed(str(run.baseline)) and (
            metadata.tree_fingerprint(trained.result["serving_model"])
            == run.baseline_content):
        return (f"Nothing new: the data, parameters and code are those of an earlier run, whose "
                f"model already serves as {run.baseline}.")
    return None


def _evaluate(run: Run, out: str) -> dict:
    from components import evaluator

    return evaluator.run(run.result("Trainer")["serving_model"],
                         [folder for folder, _, _ in run.evaluation_examples], out,
                         run.settings.evaluation, run.settings.ingest.classes,
                         run.baseline, run.beam_args)


def _say_evaluation(run: Run, output: Output) -> str:
    evaluation = output.result
    values = evaluation["metrics"]["candidate"]
    earlier = len(evaluation["examples_from"]) - 1
    macro = values["macro_accuracy"]
    return "\n".join([
        f"Evaluator: {'BLESSED' if evaluation['blessed'] else 'NOT BLESSED'} on "
        f"{evaluation['examples']:,} {run.settings.evaluation.split} examples"
        + (f" (this run's and those of {earlier} earlier validated run(s))" if earlier else "")
        + f": accuracy {values['accuracy']:.3f}, macro "
        f"{'n/a' if macro is None else f'{macro:.3f}'}; compared with "
        f"{run.baseline or 'no serving model'}",
        *(f"  - {reason}" for reason in evaluation["reasons"]),
        *(f"  - class {name} not judged: only {n} {evaluation['split']} example(s) (fewer than "
          f"{evaluation['gates']['min_class_examples']}); it neither blesses nor blocks"
          for name, n in evaluation["not_judged"].items())])


def _nothing_new_after_evaluation(run: Run) -> str | None:
    """A model already judged NOT BLESSED against this same serving model: nothing to push, and
    nothing to rewrite."""
    trained, judged = run.outputs["Trainer"], run.outputs["Evaluator"]
    if trained.cached and judged.cached and not judged.result["blessed"]:
        return (f"Nothing new: the data, parameters and code are those of an earlier run, whose "
                f"model was NOT BLESSED for the reasons above, so nothing was pushed; still "
                f"serving {run.baseline or 'nothing yet'}. Its report: "
                f"{_report_path(run)}")
    return None


def _push(run: Run, out: str) -> dict:
    from components import pusher

    return pusher.run(run.result("Trainer")["serving_model"], run.args.serving_dir,
                      run.settings.evaluation.model_name, run.result("Evaluator"), out)


def _say_push(run: Run, output: Output) -> str:
    """The push, and the run report (written now: it shows the push)."""
    from pipeline import report

    pushed, trained = output.result, run.outputs["Trainer"]
    page = report.write(
        _report_path(run),
        run.result("Evaluator"), artifacts.join(trained.folder, "history.csv"),
        artifacts.join(run.folder("ExampleValidator"), "data.html"), pushed, trained.result,
        examples_dir=run.folder("ExampleGen"))
    if pushed["pushed"]:
        line = f"Pusher: pushed; now serving version {pushed['version']}: {pushed['path']}"
    else:
        line = (f"Pusher: not pushed (not blessed); still serving "
                f"{run.baseline or 'nothing yet'}; the model stays in "
                f"{trained.result['serving_model']} (its lineage: python -m pipeline.lineage "
                f"--pipeline-root {run.root} --execution {trained.folder})")
    return f"{line}\nReport: {page}"


def _report_path(run: Run) -> str:
    return artifacts.join(run.root, "reports", f"{os.path.basename(run.folder('Evaluator'))}.html")


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
    return [artifacts.join(data, name) for name in chosen]


def _default_data(root: str) -> str:
    from pipeline import default_data
    from pipeline.config import load_json

    spec = load_json("default_data.json")
    path = artifacts.join(root, "default_data",
                          f"synthetic_faces_{spec['rows']}_seed{spec['seed']}.csv")
    if not artifacts.exists(path):
        print(f"No --data given: drawing {spec['rows']:,} synthetic faces (seed {spec['seed']}) "
              f"into {path}")
        default_data.write_csv(path, spec["rows"], spec["seed"])
    return path


def _summary(run: Run, output: Output) -> str:
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


COMPONENTS = tuple(step.name for step in steps())

if __name__ == "__main__":
    sys.exit(main())
