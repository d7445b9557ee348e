"""ML Metadata for the pipeline root: lineage, and the cache of executions.

Every execution is recorded in <root>/metadata.sqlite with its component, parameters, code
version, state (RUNNING, then COMPLETE or FAILED), its input artifacts and its output artifact,
and the run that asked for it (a context). So one can ask which data and code produced a model.

An execution's fingerprint is a hash of its component, parameters, code and input fingerprints
(input files by content). A COMPLETE execution with the same fingerprint whose folder is marked
complete (pipeline.artifacts) and still holds the bytes it held when it finished is reused instead
of run again; an unfinished one can be continued (the Trainer's). A damaged output is retired,
never reused. An execution's start and its completion are each one transaction.
"""
import hashlib
import json
import os
import time
from pathlib import Path

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline import artifacts

_CODE_DIRS = ("components", "pipeline")
OUTPUT_TYPES = {"ExampleGen": "Examples", "StatisticsGen": "ExampleStatistics",
                "SchemaGen": "Schema", "ExampleValidator": "ExampleAnomalies",
                "Tuner": "HyperParameters", "Trainer": "Model", "Evaluator": "ModelEvaluation", "Pusher": "PushedModel"}


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> str:
    """A hash of the pipeline's own source: changed code is never served from the cache."""
    digest = hashlib.sha256()
    base = Path(__file__).resolve().parent.parent
    for folder in _CODE_DIRS:
        for path in sorted((base / folder).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_commit() -> str:
    """The git commit of the checkout, for people reading the lineage ("+changes" if dirty)."""
    import subprocess

    base = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(base), "status", "--porcelain", "--",
                                *_CODE_DIRS], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+changes" if dirty.strip() else "")) if commit else "unknown"


def file_fingerprints(data: str | list[str]) -> dict[str, str]:
    """sha256 of the raw bytes of every file the input names (files, folders or globs)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import fer_csv
    from pipeline.errors import UserError

    try:
        paths = fer_csv.input_files(data)
    except UserError:  # nothing matched: ExampleGen says so, in its own words
        return {}
    prints = {}
    for path in paths:
        digest = hashlib.sha256()
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        except OSError:  # removed since it was listed (BeamIOError too): it is not there
            continue
        prints[path] = digest.hexdigest()
    return prints


def tree_fingerprint(folder: Path) -> str | None:
    """Content hash of a folder (a SavedModel, an execution's output, its completion marker
    aside): the same model under another path is the same."""
    if not folder or not Path(folder).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*")
                       if p.is_file() and p != Path(folder) / artifacts.MARKER):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _connect(root: Path, mode) -> metadata_store.MetadataStore:
    from pipeline.errors import IntegrityError

    path = root / "metadata.sqlite"
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = mode
    try:
        return metadata_store.MetadataStore(config)
    except RuntimeError as e:  # MLMD's word for a damaged SQLite file
        parts = str(e).split(" query:")  # "Error when executing query: <why> query: <sql>"
        why = parts[1].strip() if len(parts) > 2 else str(e)[:200]
        raise IntegrityError(
            f"The metadata store {path} is damaged ({why}). Move it aside (mv {path} "
            f"{path}.damaged) and run again: a new store is started, so every step runs once "
            f"more; the outputs on disk and the serving directory are kept.") from None


class Store:
    """The pipeline root's ML Metadata store, and the run (context) now using it."""

    def __init__(self, root: Path):
        self.store = _connect(root, mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
        self._types = {}
        run_type = self._type("context", "PipelineRun")
        self.run = mlmd.Context(type_id=run_type, name=f"run-{time.strftime('%Y%m%d-%H%M%S')}"
                                                       f"-{os.getpid()}")
        [self.run.id] = self.store.put_contexts([self.run])

    @staticmethod
    def read_only(root: Path) -> metadata_store.MetadataStore:
        """The bare store, for questions (pipeline.lineage); no run is recorded."""
        return _connect(root, mlmd.SqliteMetadataSourceConfig.READONLY)

    def _type(self, kind: str, name: str) -> int:
        if (kind, name) not in self._types:
            proto = {"artifact": mlmd.ArtifactType, "execution": mlmd.ExecutionType,
                     "context": mlmd.ContextType}[kind](name=name)
            put = {"artifact": self.store.put_artifact_type,
                   "execution": self.store.put_execution_type,
                   "context": self.store.put_context_type}[kind]
            self._types[(kind, name)] = put(proto)
        return self._types[(kind, name)]

    def _executions(self, component: str, print_: str):
        self._type("execution", component)
        found = [e for e in self.store.get_executions_by_type(component)
                 if e.custom_properties["fingerprint"].string_value == print_]
        return sorted(found, key=lambda e: e.id, reverse=True)

    def finished(self, component: str, print_: str):
        """(execution, folder, result, artifact) of each finished execution with this fingerprint
        whose output is still live, newest first."""
        for e in self._executions(component, print_):
            folder = Path(e.custom_properties["folder"].string_value)
            if e.last_known_state == mlmd.Execution.COMPLETE and artifacts.is_complete(folder):
                [artifact] = self.store.get_artifacts_by_id([self.output_of(e)])
                if artifact.state == mlmd.Artifact.LIVE:
                    yield (e, folder, json.loads(e.custom_properties["result"].string_value),
                           artifact)

    @staticmethod
    def intact(folder: Path, artifact: mlmd.Artifact) -> bool:
        """Whether the folder holds exactly the bytes it held when its execution finished."""
        recorded = artifact.custom_properties.get("content")
        return recorded is None or recorded.string_value == tree_fingerprint(folder)

    def retire(self, artifact: mlmd.Artifact, why: str) -> None:
        """Take a damaged output out of use for good; the record of it stays."""
        artifact.state = mlmd.Artifact.MARKED_FOR_DELETION
        artifact.custom_properties["retired"].string_value = why
        self.store.put_artifacts([artifact])

    def abandon_interrupted(self) -> list[int]:
        """Executions left RUNNING by a run that died (killed, power cut) become FAILED; one that
        died between recording an execution COMPLETE and marking its folder gets the marker now
        if its files are intact. Called under the root's lock, so none can still be running."""
        executions = self.store.get_executions()
        for e in executions:
            folder = e.custom_properties["folder"].string_value
            if e.last_known_state == mlmd.Execution.COMPLETE and not artifacts.is_complete(folder):
                [artifact] = self.store.get_artifacts_by_id([self.output_of(e)])
                if Path(folder).is_dir() and self.intact(Path(folder), artifact):
                    artifacts.mark_complete(folder)
        stale = [e for e in executions if e.last_known_state == mlmd.Execution.RUNNING]
        for e in stale:
            e.last_known_state = mlmd.Execution.FAILED
            e.custom_properties["failure"].string_value = "interrupted: its run ended before it"
        if stale:
            self.store.put_executions(stale)
        return [e.id for e in stale]

    def unfinished(self, component: str, print_: str) -> Path | None:
        """The folder of an execution with this fingerprint that never finished (killed)."""
        for e in self._executions(component, print_):
            folder = Path(e.custom_properties["folder"].string_value)
            if e.last_known_state != mlmd.Execution.COMPLETE and folder.is_dir() and not (
                    artifacts.is_complete(folder)):
                return folder
        return None

    def start(self, component: str, print_: str, parameters: dict, inputs: list[int],
              folder: Path, code: str) -> mlmd.Execution:
        e = mlmd.Execution(type_id=self._type("execution", component),
                           last_known_state=mlmd.Execution.RUNNING)
        for key, value in {"fingerprint": print_, "folder": str(folder), "code": code,
                           "commit": source_commit(),
                           "parameters": json.dumps(parameters, sort_keys=True, default=str),
                           "pid": str(os.getpid())}.items():
            e.custom_properties[key].string_value = value
        inputs = self.store.get_artifacts_by_id(inputs) if inputs else []
        e.id, _, _ = self._put(e, [(a, mlmd.Event.INPUT) for a in inputs])
        return e

    def associate(self, e: mlmd.Execution) -> None:
        self.store.put_attributions_and_associations(
            [], [mlmd.Association(context_id=self.run.id, execution_id=e.id)])

    def finish(self, e: mlmd.Execution, component: str, uri: str, result, **properties) -> int:
        """Mark the execution COMPLETE with its output artifact, atomically; returns the
        artifact id."""
        artifact = mlmd.Artifact(type_id=self._type("artifact", OUTPUT_TYPES[component]),
                                 uri=uri, state=mlmd.Artifact.LIVE)
        for key, value in {"fingerprint": e.custom_properties["fingerprint"].string_value,
                           **properties}.items():
            artifact.custom_properties[key].string_value = str(value)
        e.last_known_state = mlmd.Execution.COMPLETE
        e.custom_properties["result"].string_value = json.dumps(result, default=str)
        _, [artifact_id], _ = self._put(e, [(artifact, mlmd.Event.OUTPUT)])
        return artifact_id

    def _put(self, e: mlmd.Execution, artifacts: list) -> tuple:
        """One transaction: the execution, its (artifact, event type) pairs and this run's
        context. A kill leaves all of it recorded or none (never a COMPLETE execution without
        its output)."""
        return self.store.put_execution(
            e, [(a, mlmd.Event(type=kind)) for a, kind in artifacts], [self.run],
            force_reuse_context=True)

    def fail(self, e: mlmd.Execution, why: str) -> None:
        e.last_known_state = mlmd.Execution.FAILED
        e.custom_properties["failure"].string_value = why[:1000]
        self.store.put_executions([e])

    def pushed(self, path: str) -> bool:
        """Whether a finished Pusher of this root recorded pushing to `path`."""
        return any(a.uri and Path(a.uri).resolve() == Path(path).resolve()
                   for a in self.store.get_artifacts_by_type("PushedModel"))

    def model(self, path: Path, content: str) -> int:
        """The artifact of a serving model: the PushedModel that put it there, or else a record
        of the model found there (pushed by another root, or by hand)."""
        for a in self.store.get_artifacts_by_type("PushedModel"):
            if a.uri and Path(a.uri).resolve() == Path(path).resolve():
                return a.id
        type_id = self._type("artifact", "ServingModel")
        for a in self.store.get_artifacts_by_type("ServingModel"):
            if a.uri == str(path) and a.custom_properties["content"].string_value == str(content):
                return a.id
        artifact = mlmd.Artifact(type_id=type_id, uri=str(path), state=mlmd.Artifact.LIVE)
        artifact.custom_properties["content"].string_value = str(content)
        [artifact_id] = self.store.put_artifacts([artifact])
        return artifact_id

    def output_of(self, e: mlmd.Execution) -> int:
        [event] = [v for v in self.store.get_events_by_execution_ids([e.id])
                   if v.type == mlmd.Event.OUTPUT]
        return event.artifact_id

    def input_files(self, prints: dict[str, str]) -> list[int]:
        """Artifacts for the input files (one per path and content), reused when known."""
        type_id = self._type("artifact", "DataFile")
        known = {(a.uri, a.custom_properties["sha256"].string_value): a.id
                 for a in self.store.get_artifacts_by_type("DataFile")}
        ids = []
        for path, sha in prints.items():
            if (path, sha) not in known:
                artifact = mlmd.Artifact(type_id=type_id, uri=path, state=mlmd.Artifact.LIVE)
                artifact.custom_properties["sha256"].string_value = sha
                [known[(path, sha)]] = self.store.put_artifacts([artifact])
            ids.append(known[(path, sha)])
        return ids
