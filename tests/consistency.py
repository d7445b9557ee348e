"""What must hold after any fault: the serving directory and the metadata store agree with disk.

    python -m tests.consistency PIPELINE_ROOT SERVING_DIR   (prints the findings as JSON)

Serving: every version is a complete SavedModel, byte-identical to a model some Trainer made.
Metadata: every COMPLETE execution has exactly one output, and its folder holds what it held when
it finished; every input of an execution is a data file or the output of a COMPLETE execution;
every recorded push is on disk; no folder is marked _COMPLETE without a COMPLETE execution behind
it. A COMPLETE execution whose folder is not yet marked (killed in between) is listed as
"unmarked": it is not used until the next run checks its files and marks it.
"""
import json
import sys
from pathlib import Path

from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline import metadata, serving


def check(root: Path, serving_dir: Path, model_name: str = "fer") -> dict:
    problems, running, unmarked, trained = [], [], [], set()
    store = metadata.Store.read_only(root) if (root / "metadata.sqlite").exists() else None
    executions = store.get_executions() if store else []
    types = {t.id: t.name for t in store.get_execution_types()} if store else {}
    complete = {e.id for e in executions if e.last_known_state == mlmd.Execution.COMPLETE}
    outputs = {}
    for event in store.get_events_by_execution_ids([e.id for e in executions]) if store else []:
        if event.type == mlmd.Event.OUTPUT:
            outputs.setdefault(event.execution_id, []).append(event.artifact_id)
    producer = {a: e for e, ids in outputs.items() for a in ids}
    for e in executions:
        kind, folder = types[e.type_id], Path(e.custom_properties["folder"].string_value)
        if e.last_known_state == mlmd.Execution.RUNNING:
            running.append(kind)
        if e.id not in complete:
            continue
        if not (folder / "_COMPLETE").exists():
            unmarked.append(str(folder))
        if len(outputs.get(e.id, [])) != 1:
            problems.append(f"{kind} {e.id} is COMPLETE with {len(outputs.get(e.id, []))} outputs")
            continue
        [artifact] = store.get_artifacts_by_id(outputs[e.id])
        if artifact.state == mlmd.Artifact.LIVE and not metadata.Store.intact(folder, artifact):
            problems.append(f"{kind} {e.id}: {folder} changed after it finished but is still LIVE")
        result = json.loads(e.custom_properties["result"].string_value)
        if kind == "Trainer":
            trained.add(metadata.tree_fingerprint(Path(result["serving_model"])))
        if kind == "Pusher" and result["pushed"] and not (
                Path(result["path"]) / "saved_model.pb").is_file():
            problems.append(f"Pusher {e.id} recorded {result['path']}, which is not on disk")
    for event in store.get_events_by_execution_ids(list(complete)) if store else []:
        if event.type == mlmd.Event.INPUT and event.artifact_id in producer and \
                producer[event.artifact_id] not in complete:
            problems.append(f"execution {event.execution_id} used the output of unfinished "
                            f"execution {producer[event.artifact_id]}")
    recorded = {e.custom_properties["folder"].string_value for e in executions
                if e.id in complete}
    for marker in root.glob("*/*/_COMPLETE"):
        if str(marker.parent.resolve()) not in recorded:
            problems.append(f"{marker.parent} is marked _COMPLETE without a COMPLETE execution")

    model_root = serving_dir / model_name
    versions = serving.versions(model_root)
    entries = sorted(p.name for p in model_root.iterdir()) if model_root.is_dir() else []
    partials = [n for n in entries if n.startswith(".partial-")]
    for name in entries:
        path = model_root / name
        if name == ".push.lock" or name in partials:
            continue
        if not (name.isdigit() and int(name) in versions):
            problems.append(f"{path} is in the serving directory but is not a complete version")
        elif not (path / "variables" / "variables.index").is_file():
            problems.append(f"{path} has no variables: an incomplete SavedModel")
        elif serving.model_content(path) not in trained:  # its SavedModel, not the extras
            problems.append(f"{path} is not byte-identical to any model a Trainer made")
    return {"problems": problems, "running": running, "unmarked": unmarked,
            "partial_pushes": partials, "versions": versions}


if __name__ == "__main__":
    print(json.dumps(check(Path(sys.argv[1]), Path(sys.argv[2]))))
