"""ML Metadata for the pipeline root: lineage, and the cache of executions.

Every execution is recorded with its component, parameters, code version, state (RUNNING, then
COMPLETE or FAILED), its input artifacts and its output artifact, its pipeline root and the run
that asked for it (two contexts). So one can ask which data and code produced a model. The store
is <root>/metadata.sqlite, or a MySQL/MariaDB database that every machine reaches and several
roots may share (--metadata-config); one run at a time holds a root (`exclusive`).

An execution's fingerprint is a hash of its component, parameters, code and input fingerprints
(input files by content). A COMPLETE execution with the same fingerprint whose folder is marked
complete (pipeline.artifacts) and still holds the bytes it held when it finished is reused instead
of run again; an unfinished one can be continued (the Trainer's). A damaged output is retired,
never reused. An execution's start and its completion are each one transaction.
"""
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import typing
from pathlib import Path

from ml_metadata import errors, metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline import artifacts
from pipeline.artifact_types import (DATA_FILE, EXAMPLES, PUSHED_MODEL, SERVING_MODEL,
                                     STATISTICS, ArtifactType)
from pipeline.errors import IntegrityError, UserError, disk_error

_CODE_DIRS = ("components", "pipeline")


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
    """sha256 of the raw bytes of every file the input names (files, folders or globs). An
    entry that is not a regular file is refused (UserError) before anything opens it."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline import fer_csv

    try:
        paths = fer_csv.input_files(data)
    except fer_csv.NoInput:  # nothing matched: ExampleGen says so, in its own words
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


def tree_fingerprint(folder: str | Path | None, leave_out=()) -> str | None:
    """Content hash of a folder (a SavedModel, an execution's output, its completion marker
    aside): the same model under another path is the same. leave_out: names of files or folders
    at its top that do not count."""
    if not folder or not artifacts.is_dir(folder):
        return None
    digest = hashlib.sha256()
    for name in artifacts.files_under(folder):
        if name == artifacts.MARKER or name.split("/")[0] in leave_out:
            continue
        digest.update(name.encode())
        with artifacts.open_bytes(artifacts.join(folder, name)) as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


class Connection(typing.NamedTuple):
    config: mlmd.ConnectionConfig
    where: str             # for people: the SQLite file, or mysql://user@host:port/database
    lease_seconds: float   # how long a shared store's hold on a root lasts unrenewed

    @property
    def shared(self) -> bool:
        return self.config.HasField("mysql")


def store_connection(root: str | Path, config_file: str | None = None) -> Connection:
    """<root>/metadata.sqlite for a local root, or the store a --metadata-config file names: ML
    Metadata's ConnectionConfig as JSON, {"mysql": {"host", "port", "database", "user",
    "password"}} (the password there or in $FER_METADATA_PASSWORD) or {"sqlite": {"filename_uri":
    a local file}}, and optionally "lease_seconds" (default 60)."""
    if not config_file:
        if artifacts.remote(root):
            raise UserError(
                f"The pipeline root {root} is on object storage, where ML Metadata's SQLite file "
                f"cannot live. Pass --metadata-config with a file naming a MySQL database "
                f"({{\"mysql\": {{\"host\": ..., \"port\": 3306, \"database\": ..., "
                f"\"user\": ..., \"password\": ...}}}}) or a local SQLite file ({{\"sqlite\": "
                f"{{\"filename_uri\": \"/var/lib/fer/metadata.sqlite\"}}}}).")
        config = mlmd.ConnectionConfig()
        config.sqlite.filename_uri = artifacts.join(root, "metadata.sqlite")
        return Connection(config, config.sqlite.filename_uri, 0)
    from google.protobuf import json_format

    from pipeline.config import load_json

    spec = load_json("metadata.json", config_file)
    lease = spec.pop("lease_seconds", 60) if isinstance(spec, dict) else None
    try:
        config = json_format.ParseDict(spec, mlmd.ConnectionConfig())
        if not (config.HasField("mysql") or config.sqlite.filename_uri) or not isinstance(
                lease, (int, float)) or lease <= 0:
            raise json_format.ParseError("it needs a \"mysql\" or a \"sqlite\" entry, and "
                                         "\"lease_seconds\" is a number of seconds above 0")
    except json_format.ParseError as e:
        raise UserError(
            f"Metadata config {config_file} is not an ML Metadata connection ({e}). Write "
            f"{{\"mysql\": {{\"host\": \"db.example\", \"port\": 3306, \"database\": "
            f"\"fer\", \"user\": \"fer\", \"password\": \"...\"}}}}, or leave the flag out "
            f"for the SQLite store in the pipeline root.") from None
    if not config.HasField("mysql"):
        path = str(Path(config.sqlite.filename_uri).resolve())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        config.sqlite.filename_uri = path
        return Connection(config, path, 0)
    mysql = config.mysql
    if not mysql.password and os.environ.get("FER_METADATA_PASSWORD"):
        mysql.password = os.environ["FER_METADATA_PASSWORD"]
    where = f"mysql://{mysql.user}@{mysql.host}:{mysql.port or 3306}/{mysql.database}"
    return Connection(config, where, float(lease))


_SQLITE_HEADER = b"SQLite format 3\0"  # the first 16 bytes of every SQLite database file


def _connect(connection: Connection, read_only: bool = False) -> metadata_store.MetadataStore:
    config = mlmd.ConnectionConfig()
    config.CopyFrom(connection.config)
    if not connection.shared:
        _check_sqlite(connection)
        if not read_only and not os.path.exists(connection.where):
            _create_sqlite(connection)
        config.sqlite.connection_mode = (mlmd.SqliteMetadataSourceConfig.READONLY if read_only
                                         else mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    attempts = 6
    for attempt in range(attempts):
        try:
            return metadata_store.MetadataStore(config)
        except RuntimeError as e:
            # Processes that meet an empty database all create its tables; those that lose find
            # them made when they try again (on a busy machine the winner may take seconds).
            if connection.shared and attempt < attempts - 1 and "real_connect" not in str(e):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise _connect_error(connection, e) from None


def _check_sqlite(connection: Connection) -> None:
    """A SQLite store that is there must be one: SQLite takes an empty file for a new database,
    so a store emptied or cut to nothing (a failed copy, a full disk, a restore gone wrong)
    would silently start over, every step running again and pushing a duplicate version.
    Nothing of this pipeline leaves an empty store (_create_sqlite). Damage further in is
    SQLite's to find (a file shorter than its header says is "malformed")."""
    try:
        with open(connection.where, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise UserError(f"The metadata store {connection.where} is a folder, not a SQLite file; "
                        f"move it out of the way.") from None
    except OSError as e:  # unreadable: a permission or disk problem, not damage
        raise disk_error(e, os.path.dirname(connection.where)) or e
    if head != _SQLITE_HEADER:
        raise _damaged(connection.where, "it is empty" if not head else
                       "it does not start with SQLite's header: not a SQLite database")


def _create_sqlite(connection: Connection) -> None:
    """Make a new store whole under a hidden name, then rename it into place: a run killed, or
    a disk that fills, while its tables are being made leaves no empty or half-made store."""
    path = connection.where
    staged = artifacts.staging_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for leftover in (staged, staged + "-journal"):
        if os.path.exists(leftover):
            os.remove(leftover)
    config = mlmd.ConnectionConfig()
    config.CopyFrom(connection.config)
    config.sqlite.filename_uri = staged
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    try:
        store = metadata_store.MetadataStore(config)
    except RuntimeError as e:
        raise _connect_error(connection, e) from None
    del store  # closes the database
    artifacts.flush(Path(staged))
    os.replace(staged, path)
    artifacts.flush(Path(path).parent, recursive=False)


def _damaged(path: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"The metadata store {path} is damaged ({why}). Restore it from a backup if there is "
        f"one; otherwise move it aside (mv {path} {path}.damaged) and run again: a new store is "
        f"started without the old lineage, so every step runs once more; the outputs on disk "
        f"and the serving directory are kept.")


def _connect_error(connection: Connection, e: RuntimeError) -> Exception:
    if connection.shared:
        return UserError(
            f"Cannot open the metadata database {connection.where} ({str(e)[:200]}). Check that "
            f"the server is up and reachable and that the --metadata-config file names its host, "
            f"port, database, user and password (ML Metadata needs a mysql_native_password user; "
            f"write the host as 127.0.0.1, not localhost, for a server on this machine).")
    full_or_forbidden = disk_error(e, os.path.dirname(connection.where))
    if full_or_forbidden:  # not damage: moving the store aside would lose its lineage
        return full_or_forbidden
    parts = str(e).split(" query:")  # MLMD's word for a damaged SQLite file:
    why = parts[1].strip() if len(parts) > 2 else str(e)[:200]  # "...query: <why> query: <sql>"
    return _damaged(connection.where, why)


@contextlib.contextmanager
def exclusive(root: str, connection: Connection):
    """Hold the root for one run, or raise artifacts.Busy: a lock file beside a SQLite store;
    a lease in a shared store's database (machines share no lock file). Yields the lease
    (None for the lock file)."""
    if not connection.shared:  # beside the SQLite file: <root>/.run.lock by default
        with artifacts.lock(Path(connection.where).parent / artifacts.RUN_LOCK, wait=False):
            yield None
        return
    lease = Lease(connection, str(root))
    try:
        yield lease
    finally:
        lease.give_back()


class Lease:
    """A run's hold on a root in a shared store. ML Metadata cannot delete, so each hold is a new
    context "<root>#<n>": of processes racing to create the same n, exactly one succeeds. The
    holder renews it every lease_seconds/3; it is free once given back, expired, or held by a
    process of this machine that is gone (kill -9 frees it at once). A holder that could not
    renew in time has lost it (`lost`), and stops before its next step."""

    def __init__(self, connection: Connection, root: str):
        self.connection, self.root, self.lost = connection, root, False
        self.store = _connect(connection)
        self.type_id = _put_type(self.store, "context", "RootLease")
        self.context = self._take()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="lease")
        self._renewer.start()

    def _newest(self, store) -> mlmd.Context | None:
        prefix = self.root + "#"
        held = [c for c in store.get_contexts_by_type("RootLease") if c.name.startswith(prefix)
                and c.name[len(prefix):].isdigit()]
        return max(held, key=lambda c: int(c.name[len(prefix):]), default=None)

    def _take(self) -> mlmd.Context:
        for _ in range(3):
            newest = self._newest(self.store)
            if newest and not _free(newest):
                raise artifacts.Busy(_holder(newest))
            n = int(newest.name.rpartition("#")[2]) + 1 if newest else 1
            context = mlmd.Context(type_id=self.type_id, name=f"{self.root}#{n}")
            for key, value in {"holder": f"{socket.gethostname()}:{os.getpid()}",
                               "since": str(time.time()), "state": "held",
                               "expires": str(time.time() + self.connection.lease_seconds)
                               }.items():
                context.custom_properties[key].string_value = value
            try:
                [context.id] = self.store.put_contexts([context])
                return context
            except errors.AlreadyExistsError:  # another process took generation n first
                continue
        raise artifacts.Busy("another process")

    def _renew(self) -> None:
        store = _connect(self.connection)  # a connection of this thread's own
        while not self._stop.wait(self.connection.lease_seconds / 3):
            try:
                newest = self._newest(store)
                if newest is None or newest.name != self.context.name:
                    self.lost = True
                    return
                newest.custom_properties["expires"].string_value = str(
                    time.time() + self.connection.lease_seconds)
                store.put_contexts([newest])
            except (RuntimeError, errors.StatusError):  # the database is away: try again
                if time.time() > float(self.context.custom_properties["expires"].string_value):
                    self.lost = True
                    return

    def give_back(self) -> None:
        self._stop.set()
        self._renewer.join(timeout=30)
        newest = self._newest(self.store)
        if newest is not None and newest.name == self.context.name:
            newest.custom_properties["state"].string_value = "released"
            self.store.put_contexts([newest])


def _free(lease: mlmd.Context) -> bool:
    props = {k: v.string_value for k, v in lease.custom_properties.items()}
    host, _, pid = props.get("holder", "").rpartition(":")
    gone = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
    return props.get("state") == "released" or float(props.get("expires", 0)) < time.time() or gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lease: mlmd.Context) -> str:
    props = {k: v.string_value for k, v in lease.custom_properties.items()}
    host, _, pid = props["holder"].rpartition(":")
    clock = lambda key: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(props[key])))
    return f"pid {pid} on {host}, started {clock('since')}, lease until {clock('expires')}"


def _put_type(store, kind: str, name: str) -> int:
    proto = {"artifact": mlmd.ArtifactType, "execution": mlmd.ExecutionType,
             "context": mlmd.ContextType}[kind](name=name)
    put = {"artifact": store.put_artifact_type, "execution": store.put_execution_type,
           "context": store.put_context_type}[kind]
    try:
        return put(proto)
    except errors.AlreadyExistsError:  # another process of a shared store made it just now
        return put(proto)


class Store:
    """The pipeline root's ML Metadata store, and the run (context) now using it."""

    def __init__(self, root: str | Path, connection: Connection | None = None,
                 lease: Lease | None = None):
        connection = connection or store_connection(root)
        self.store, self.lease, self._types = _connect(connection), lease, {}
        self.where = connection.where
        self.run = self._context("PipelineRun", f"run-{time.strftime('%Y%m%d-%H%M%S')}-"
                                                f"{socket.gethostname()}-{os.getpid()}")
        self.pipeline = self._context("Pipeline", str(root), adopt=not connection.shared)

    @staticmethod
    def read_only(root: str | Path, connection: Connection | None = None
                  ) -> metadata_store.MetadataStore:
        """The bare store, for questions (pipeline.lineage); no run is recorded."""
        return _connect(connection or store_connection(root), read_only=True)

    def _type(self, kind: str, name: str) -> int:
        if (kind, name) not in self._types:
            self._types[(kind, name)] = _put_type(self.store, kind, name)
        return self._types[(kind, name)]

    def _context(self, kind: str, name: str, adopt: bool = False) -> mlmd.Context:
        context = mlmd.Context(type_id=self._type("context", kind), name=name)
        try:
            [context.id] = self.store.put_contexts([context])
        except errors.AlreadyExistsError:
            return self.store.get_context_by_type_and_name(kind, name)
        if adopt and self.store.get_executions():
            # A root's own store from before roots were contexts: all of it is this root's.
            self.store.put_attributions_and_associations([], [
                mlmd.Association(context_id=context.id, execution_id=e.id)
                for e in self.store.get_executions()])
        return context

    def _executions(self, component: str, print_: str):
        type_id = self._type("execution", component)
        found = [e for e in self.store.get_executions_by_context(self.pipeline.id)
                 if e.type_id == type_id
                 and e.custom_properties["fingerprint"].string_value == print_]
        return sorted(found, key=lambda e: e.id, reverse=True)

    def finished(self, component: str, print_: str):
        """(execution, folder, result, artifact) of each finished execution with this fingerprint
        whose output is still live, newest first."""
        for e in self._executions(component, print_):
            folder = e.custom_properties["folder"].string_value
            if e.last_known_state == mlmd.Execution.COMPLETE and artifacts.is_complete(folder):
                [artifact] = self.store.get_artifacts_by_id([self.output_of(e)])
                if artifact.state == mlmd.Artifact.LIVE:
                    yield (e, folder, json.loads(e.custom_properties["result"].string_value),
                           artifact)

    @staticmethod
    def intact(folder: str, artifact: mlmd.Artifact) -> bool:
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
        if its files are intact. Called holding the root, so none can still be running."""
        executions = self.store.get_executions_by_context(self.pipeline.id)
        for e in executions:
            folder = e.custom_properties["folder"].string_value
            if e.last_known_state == mlmd.Execution.COMPLETE and not artifacts.is_complete(folder):
                [artifact] = self.store.get_artifacts_by_id([self.output_of(e)])
                if artifacts.is_dir(folder) and self.intact(folder, artifact):
                    artifacts.mark_complete(folder)
        stale = [e for e in executions if e.last_known_state == mlmd.Execution.RUNNING]
        for e in stale:
            e.last_known_state = mlmd.Execution.FAILED
            e.custom_properties["failure"].string_value = "interrupted: its run ended before it"
        if stale:
            self.store.put_executions(stale)
        return [e.id for e in stale]

    def unfinished(self, component: str, print_: str) -> str | None:
        """The folder of an execution with this fingerprint that never finished (killed)."""
        for e in self._executions(component, print_):
            folder = e.custom_properties["folder"].string_value
            if e.last_known_state != mlmd.Execution.COMPLETE and artifacts.is_dir(folder) and not (
                    artifacts.is_complete(folder)):
                return folder
        return None

    def start(self, component: str, print_: str, parameters: dict,
              inputs: list[tuple[int, str]], folder: str, code: str) -> mlmd.Execution:
        """Record the execution RUNNING with its inputs, (artifact id, the input's name) each:
        the name is the event's path, as TFX keys its input events."""
        if self.lease and self.lease.lost:
            raise IntegrityError(
                f"This run lost its hold on the pipeline root: its lease in the metadata "
                f"database was not renewed in time (the database was out of reach, or the "
                f"process stalled), so another run may now hold the root. It stopped before "
                f"{component}; run again once the other run has finished.")
        e = mlmd.Execution(type_id=self._type("execution", component),
                           last_known_state=mlmd.Execution.RUNNING)
        for key, value in {"fingerprint": print_, "folder": str(folder), "code": code,
                           "commit": source_commit(),
                           "parameters": json.dumps(parameters, sort_keys=True, default=str),
                           "pid": str(os.getpid()), "host": socket.gethostname()}.items():
            e.custom_properties[key].string_value = value
        found = {a.id: a for a in self.store.get_artifacts_by_id([i for i, _ in inputs])} if (
            inputs) else {}
        e.id, _, _ = self._put(e, [(found[i], mlmd.Event.INPUT, key) for i, key in inputs])
        return e

    def associate(self, e: mlmd.Execution) -> None:
        self.store.put_attributions_and_associations(
            [], [mlmd.Association(context_id=self.run.id, execution_id=e.id)])

    def finish(self, e: mlmd.Execution, kind: ArtifactType, uri: str, result,
               **properties) -> int:
        """Mark the execution COMPLETE with its output artifact, atomically; returns the
        artifact id."""
        artifact = mlmd.Artifact(type_id=self._type("artifact", kind.name),
                                 uri=uri, state=mlmd.Artifact.LIVE)
        for key, value in {"fingerprint": e.custom_properties["fingerprint"].string_value,
                           **properties}.items():
            artifact.custom_properties[key].string_value = str(value)
        e.last_known_state = mlmd.Execution.COMPLETE
        e.custom_properties["result"].string_value = json.dumps(result, default=str)
        _, [artifact_id], _ = self._put(e, [(artifact, mlmd.Event.OUTPUT, "output")])
        return artifact_id

    def _put(self, e: mlmd.Execution, artifacts: list) -> tuple:
        """One transaction: the execution, its (artifact, event type, name) triples and this
        run's context. A kill leaves all of it recorded or none (never a COMPLETE execution
        without its output)."""
        return self.store.put_execution(
            e, [(a, mlmd.Event(type=kind, path=mlmd.Event.Path(
                steps=[mlmd.Event.Path.Step(key=key)]))) for a, kind, key in artifacts],
            [self.run, self.pipeline], force_reuse_context=True)

    def fail(self, e: mlmd.Execution, why: str) -> None:
        e.last_known_state = mlmd.Execution.FAILED
        e.custom_properties["failure"].string_value = why[:1000]
        self.store.put_executions([e])

    def pushed(self, path: str) -> int | None:
        """The PushedModel artifact of this root's push to `path`, if it made that push."""
        for artifact in pushes(self.store, self.pipeline.id):
            if artifacts.absolute(artifact.uri) == artifacts.absolute(path):
                return artifact.id
        return None

    def model(self, path: str, content: str) -> int:
        """The artifact of a serving model: this root's PushedModel that put it there, or else a
        record of the model found there (pushed by another root, or by hand)."""
        pushed = self.pushed(path)
        if pushed is not None:
            return pushed
        type_id = self._type("artifact", SERVING_MODEL.name)
        for a in self.store.get_artifacts_by_type(SERVING_MODEL.name):
            if a.uri == str(path) and a.custom_properties["content"].string_value == str(content):
                return a.id
        artifact = mlmd.Artifact(type_id=type_id, uri=str(path), state=mlmd.Artifact.LIVE)
        artifact.custom_properties["content"].string_value = str(content)
        [artifact_id] = self.store.put_artifacts([artifact])
        return artifact_id

    def _validated_statistics(self):
        """(StatisticsGen artifact, its execution) that a finished ExampleValidator of this root
        let through, newest validation first."""
        validator = self._type("execution", "ExampleValidator")
        passed = sorted((e for e in self.store.get_executions_by_context(self.pipeline.id)
                         if e.type_id == validator
                         and e.last_known_state == mlmd.Execution.COMPLETE
                         and not any(f["action"] == "stop" for f in json.loads(
                             e.custom_properties["result"].string_value))),
                        key=lambda e: e.id, reverse=True)
        for e in passed:
            for statistics in self._inputs(e, STATISTICS):
                for producer in self._producers(statistics.id):
                    yield statistics, producer

    def previous_statistics(self, split: str, other_than: int) -> tuple[str, mlmd.Artifact] | None:
        """(the file of `split`, the StatisticsGen artifact) that the newest validation of this
        root passed, other than the artifact `other_than` (this run's own, when reused)."""
        for statistics, producer in self._validated_statistics():
            path = json.loads(producer.custom_properties["result"].string_value).get(split)
            if statistics.state == mlmd.Artifact.LIVE and path and statistics.id != other_than \
                    and artifacts.exists(path):
                return path, statistics
        return None

    def validated_examples(self) -> list[tuple[str, dict, int, str, set[int]]]:
        """ExampleGen outputs of this root that a finished ExampleValidator let through, newest
        first: (folder, ExampleGen's result, artifact id, fingerprint, ids of its input files)."""
        found, seen = [], set()
        for _, producer in self._validated_statistics():
            for examples in self._inputs(producer, EXAMPLES):
                folder = examples.uri
                if examples.id in seen or examples.state != mlmd.Artifact.LIVE or not (
                        artifacts.is_complete(folder)):
                    continue
                seen.add(examples.id)
                [made_by] = self._producers(examples.id)
                files = {a.id for a in self._inputs(made_by, DATA_FILE)}
                found.append((folder, json.loads(
                    made_by.custom_properties["result"].string_value), examples.id,
                    examples.custom_properties["fingerprint"].string_value, files))
        return found

    def _inputs(self, e: mlmd.Execution, kind: ArtifactType) -> list[mlmd.Artifact]:
        ids = [v.artifact_id for v in self.store.get_events_by_execution_ids([e.id])
               if v.type == mlmd.Event.INPUT]
        type_id = self._type("artifact", kind.name)
        return [a for a in self.store.get_artifacts_by_id(ids) if a.type_id == type_id]

    def _producers(self, artifact_id: int) -> list[mlmd.Execution]:
        ids = [v.execution_id for v in self.store.get_events_by_artifact_ids([artifact_id])
               if v.type == mlmd.Event.OUTPUT]
        return self.store.get_executions_by_id(ids)

    def output_of(self, e: mlmd.Execution) -> int:
        [event] = [v for v in self.store.get_events_by_execution_ids([e.id])
                   if v.type == mlmd.Event.OUTPUT]
        return event.artifact_id

    def input_files(self, prints: dict[str, str]) -> list[int]:
        """Artifacts for the input files (one per path and content), reused when known."""
        type_id = self._type("artifact", DATA_FILE.name)
        known = {(a.uri, a.custom_properties["sha256"].string_value): a.id
                 for a in self.store.get_artifacts_by_type(DATA_FILE.name)}
        ids = []
        for path, sha in prints.items():
            if (path, sha) not in known:
                artifact = mlmd.Artifact(type_id=type_id, uri=path, state=mlmd.Artifact.LIVE)
                artifact.custom_properties["sha256"].string_value = sha
                [known[(path, sha)]] = self.store.put_artifacts([artifact])
            ids.append(known[(path, sha)])
        return ids


def pushes(store: metadata_store.MetadataStore, root_context: int) -> list[mlmd.Artifact]:
    """The models a root pushed (PushedModel artifacts of its finished Pushers), oldest first;
    other roots sharing the database are not asked."""
    try:
        kind = store.get_artifact_type(PUSHED_MODEL.name)
    except errors.NotFoundError:  # nothing was ever pushed with this database
        return []
    finished = [e.id for e in store.get_executions_by_context(root_context)
                if e.last_known_state == mlmd.Execution.COMPLETE]
    outputs = [v.artifact_id for v in store.get_events_by_execution_ids(finished)
               if v.type == mlmd.Event.OUTPUT] if finished else []
    return sorted((a for a in store.get_artifacts_by_id(outputs) if a.type_id == kind.id
                   and a.uri), key=lambda a: a.id)
