"""Run the FER pipeline: python -m pipeline.run --runner=DirectRunner [flags].

Flags this program does not know are passed to Apache Beam, e.g.
--direct_num_workers=2 --direct_running_mode=multi_processing, or
--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py
"""
import argparse
import os
import sys
import textwrap
from pathlib import Path

from pipeline.errors import IntegrityError, UserError

COMPONENTS = ("ExampleGen",)


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
        "--pipeline-root", metavar="DIR", default="pipeline_root",
        help="where every component writes its outputs, one folder per execution "
             "(default: ./pipeline_root)")
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
    return parser.parse_known_args(argv)


def main(argv=None) -> int:
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_beam_args(beam_args)
        run(args, beam_args)
    except (UserError, IntegrityError) as e:
        print(textwrap.fill(f"error: {e}", width=100), file=sys.stderr)
        return 2 if isinstance(e, UserError) else 3
    except KeyboardInterrupt:
        print("interrupted: the run stopped; outputs of unfinished steps are incomplete and "
              "will not be used.", file=sys.stderr)
        return 130
    return 0


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
    from components import example_gen
    from pipeline.config import IngestConfig

    config = IngestConfig.load(args.ingest_config, max_bad_row_fraction=args.max_bad_rows)
    root = Path(args.pipeline_root).resolve()
    data = args.data or str(_default_data(root))

    out = _new_execution_dir(root, "ExampleGen")
    print(f"ExampleGen: reading {data} -> {out}")
    counts = example_gen.run(data, str(out), config, beam_args)
    (out / "_COMPLETE").touch()
    print(_summary(counts))


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
