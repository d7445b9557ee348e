"""Which data and code produced a serving version: its lineage from ML Metadata.

    python -m pipeline.lineage [--pipeline-root DIR] [--serving-dir DIR] [--model-name fer]
                               [--version N] [--metadata-config FILE]

Walks back from the pushed model (default: the newest version) through every execution that led
to it, printing each one's component, folder, code version and parameters, down to the input
files with their sha256.
"""
import argparse
import json
import os
import sys

from pipeline.errors import IntegrityError, UserError, report_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.lineage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default="pipeline_root", metavar="DIR")
    parser.add_argument("--serving-dir", default="serving", metavar="DIR")
    parser.add_argument("--model-name", default="fer")
    parser.add_argument("--version", type=int, help="default: the newest version")
    parser.add_argument("--metadata-config", metavar="FILE",
                        help="the shared metadata database the runs used (as for pipeline.run)")
    args = parser.parse_args(argv)
    try:
        print("\n".join(lineage(args.pipeline_root, args.serving_dir,
                                args.model_name, args.version, args.metadata_config)))
    except (UserError, IntegrityError) as e:
        return report_error(e)
    return 0


def lineage(root: str, serving_dir: str, model_name: str, version: int | None,
            metadata_config: str | None = None) -> list[str]:
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    from pipeline import artifacts, metadata, serving

    root = artifacts.absolute(root)
    connection = metadata.store_connection(root, metadata_config)
    if not connection.shared and not os.path.exists(connection.where):
        raise UserError(f"{root} has no metadata.sqlite: it is not a pipeline root that ran "
                        f"(or its runs kept their metadata in a database: pass "
                        f"--metadata-config).")
    target = artifacts.join(serving_dir, model_name, version) if version else serving.latest(
        serving_dir, model_name)
    if target is None or not artifacts.exists(target):
        raise UserError(f"No version {version or ''} of model {model_name!r} in {serving_dir}.")
    store = metadata.Store.read_only(root, connection)
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if artifacts.absolute(a.uri) == artifacts.absolute(target)]
    if not pushed:
        raise UserError(f"{target} was not pushed by a run with pipeline root {root}; pass the "
                        f"root of the run that pushed it.")
    lines = [f"{target} came from:"]
    seen = set()

    def walk(artifact_id: int, depth: int) -> None:
        events = store.get_events_by_artifact_ids([artifact_id])
        for producer in [e.execution_id for e in events if e.type == mlmd.Event.OUTPUT]:
            if producer in seen:
                lines.append("  " * depth + f"(execution {producer}, shown above)")
                continue
            seen.add(producer)
            [execution] = store.get_executions_by_id([producer])
            [kind] = store.get_execution_types_by_id([execution.type_id])
            props = execution.custom_properties
            state = mlmd.Execution.State.Name(execution.last_known_state)
            lines.append("  " * depth + f"{kind.name} (execution {execution.id}, {state}, commit "
                         f"{props['commit'].string_value}, code {props['code'].string_value}): "
                         f"{props['folder'].string_value}")
            parameters = json.loads(props["parameters"].string_value)
            for key, value in _flat(parameters):
                text = json.dumps(value, sort_keys=True)
                lines.append("  " * depth + f"  {key} = "
                             f"{text if len(text) < 120 else text[:117] + '...'}")
            inputs = [e.artifact_id for e in store.get_events_by_execution_ids([producer])
                      if e.type == mlmd.Event.INPUT]
            for artifact in store.get_artifacts_by_id(inputs):
                sha = artifact.custom_properties.get("sha256")
                [kind] = store.get_artifact_types_by_id([artifact.type_id])
                if sha is not None:
                    lines.append("  " * depth + f"  input file {artifact.uri} "
                                 f"sha256 {sha.string_value}")
                    continue
                if kind.name in ("PushedModel", "ServingModel"):  # a Trainer's warm start
                    lines.append("  " * depth + f"  base model {artifact.uri}")
                walk(artifact.id, depth + 1)

    walk(pushed[-1].id, 1)
    return lines


def _flat(parameters: dict, prefix: str = ""):
    """config.epochs = 1 rather than one long line per component."""
    for key, value in sorted(parameters.items()):
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


if __name__ == "__main__":
    sys.exit(main())
