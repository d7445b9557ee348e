"""Which data and code produced a serving version: its lineage from ML Metadata.

    python -m pipeline.lineage [--pipeline-root DIR] [--serving-dir DIR] [--model-name fer]
                               [--version N | --execution N] [--metadata-config FILE]

Walks back from the pushed model (default: the newest version), or from any execution (a Trainer
whose model was not blessed, say; each run prints its steps' folders, <root>/<Step>/<n>, and
--execution takes that folder, or the execution's id as the lineage prints it), through
every execution that led to it, printing each one's component, folder, code version and
parameters, down to the input files with their sha256.
"""
import argparse
import json
import os
import sys

import pipeline
from pipeline.errors import IntegrityError, UserError, report_error


def main(argv=None) -> int:
    pipeline.quiet()
    parser = argparse.ArgumentParser(prog="python -m pipeline.lineage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default="pipeline_root", metavar="DIR")
    parser.add_argument("--serving-dir", default="serving", metavar="DIR")
    parser.add_argument("--model-name",
                        help="default: model_name of the gating config (schemas/evaluation.json)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="default: the newest version")
    which.add_argument("--execution", metavar="FOLDER_OR_ID",
                       help="trace this execution instead of a version: any step's output folder "
                            "(<root>/Trainer/3, a model that was not blessed) or its ML Metadata "
                            "id")
    parser.add_argument("--metadata-config", metavar="FILE",
                        help="the shared metadata database the runs used (as for pipeline.run)")
    args = parser.parse_args(argv)
    try:
        from pipeline.config import load_json

        model_name = args.model_name or load_json("evaluation.json")["model_name"]
        print("\n".join(lineage(args.pipeline_root, args.serving_dir, model_name,
                                args.version, args.metadata_config, args.execution)))
    except (UserError, IntegrityError) as e:
        return report_error(e)
    return 0


def lineage(root: str, serving_dir: str, model_name: str, version: int | None,
            metadata_config: str | None = None, execution: str | None = None) -> list[str]:
    from ml_metadata.proto import metadata_store_pb2 as mlmd

    from pipeline import artifacts, metadata, serving
    from pipeline.artifact_types import PUSHED_MODEL, SERVING_MODEL

    root = artifacts.absolute(root)
    connection = metadata.store_connection(root, metadata_config)
    if not connection.shared and not os.path.exists(connection.where):
        raise UserError(f"{root} has no metadata.sqlite: it is not a pipeline root that ran "
                        f"(or its runs kept their metadata in a database: pass "
                        f"--metadata-config).")
    store = metadata.Store.read_only(root, connection)
    lines, seen = [], set()

    def walk(artifact_id: int, depth: int) -> None:
        events = store.get_events_by_artifact_ids([artifact_id])
        for producer in [e.execution_id for e in events if e.type == mlmd.Event.OUTPUT]:
            walk_execution(producer, depth)

    def walk_execution(producer: int, depth: int) -> None:
        if producer in seen:
            lines.append("  " * depth + f"(execution {producer}, shown above)")
            return
        seen.add(producer)
        [execution] = store.get_executions_by_id([producer])
        [step] = store.get_execution_types_by_id([execution.type_id])
        props = execution.custom_properties
        state = mlmd.Execution.State.Name(execution.last_known_state)
        lines.append("  " * depth + f"{step.name} (execution {execution.id}, {state}, commit "
                     f"{props['commit'].string_value}, code {props['code'].string_value}): "
                     f"{props['folder'].string_value}")
        parameters = json.loads(props["parameters"].string_value)
        for key, value in _flat(parameters):
            text = json.dumps(value, sort_keys=True)
            lines.append("  " * depth + f"  {key} = "
                         f"{text if len(text) < 120 else text[:117] + '...'}")
        events = [e for e in store.get_events_by_execution_ids([producer])
                  if e.type == mlmd.Event.INPUT]
        names = {e.artifact_id: e.path.steps[0].key if e.path.steps else "" for e in events}
        for artifact in store.get_artifacts_by_id([e.artifact_id for e in events]):
            sha = artifact.custom_properties.get("sha256")
            [kind] = store.get_artifact_types_by_id([artifact.type_id])
            if sha is not None:
                lines.append("  " * depth + f"  input file {artifact.uri} "
                             f"sha256 {sha.string_value}")
                continue
            if kind.name in (PUSHED_MODEL.name, SERVING_MODEL.name):  # the model serving then
                if step.name != "Trainer" or not parameters.get("warm_start", True):
                    lines.append("  " * depth + f"  serving model then {artifact.uri}")
                    continue
                lines.append("  " * depth + f"  base model {artifact.uri}")
            elif names[artifact.id] == "previous":
                lines.append("  " * depth + f"  drift checked against {artifact.uri}")
                continue
            walk(artifact.id, depth + 1)

    if execution is not None:
        found = [e.id for e in store.get_executions()
                 if str(e.id) == execution or e.custom_properties["folder"].string_value
                 == artifacts.absolute(execution)]
        if not found:
            raise UserError(f"No execution {execution} in the metadata of {root}: pass a step's "
                            f"folder as the run printed it (e.g. {root}/Trainer/1) or an "
                            f"execution id as this command prints them.")
        lines.append(f"{execution} came from:")
        walk_execution(found[-1], 1)
        return lines
    target = artifacts.join(serving_dir, model_name, version) if version is not None else (
        serving.latest(serving_dir, model_name))
    if target is None or not artifacts.exists(target) or (
            version is not None and version not in serving.versions(
                artifacts.join(serving_dir, model_name))):
        raise UserError(f"No version {'' if version is None else version} of model "
                        f"{model_name!r} in {serving_dir}.")
    try:
        context = store.get_context_by_type_and_name("Pipeline", root)
    except Exception:  # no such type yet: nothing ran here
        context = None
    pushed = [a for a in (metadata.pushes(store, context.id) if context else [])
              if artifacts.absolute(a.uri) == artifacts.absolute(target)]
    if not pushed:
        raise UserError(f"{target} was not pushed by a run with pipeline root {root}; pass the "
                        f"root of the run that pushed it.")
    lines.append(f"{target} came from:")
    walk(pushed[-1].id, 1)
    readers = [v.execution_id for v in store.get_events_by_artifact_ids([pushed[-1].id])
               if v.type == mlmd.Event.INPUT]
    for e in store.get_executions_by_id(readers):
        if e.last_known_state == mlmd.Execution.COMPLETE:
            [kind] = store.get_execution_types_by_id([e.type_id])
            lines.append(f"and went into: {kind.name} (execution {e.id}): "
                         f"{e.custom_properties['folder'].string_value}")
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
