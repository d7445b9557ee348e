"""ML Metadata in a shared MariaDB database (--metadata-config): whole runs recorded and reused
there, and one run per pipeline root held by a lease in the database, not a local lock file.
A real MariaDB server on 127.0.0.1 (tests.mariadb), started and stopped here."""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline import artifacts, metadata
from pipeline.errors import IntegrityError, UserError
from tests import mariadb
from tests.helpers import run_inputs


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    if not mariadb.available():
        pytest.skip("mariadb-server is not installed (.ci/run installs it)")
    base = tmp_path_factory.mktemp("mariadb")
    with mariadb.server(base) as port:
        yield mariadb.connection_file(base / "metadata.json", port, lease_seconds=30)


def _hold(config_file, root, barrier, results, release):
    """One of several processes racing for the root: say whether it got it; hold it until told."""
    connection = metadata.store_connection(root, config_file)
    barrier.wait(timeout=60)
    try:
        with metadata.exclusive(root, connection):
            results.put(("held", os.getpid()))
            release.wait(timeout=60)
    except artifacts.Busy as holder:
        results.put(("busy", str(holder)))


def test_of_processes_racing_for_a_root_exactly_one_holds_it(database, tmp_path):
    spawn = multiprocessing.get_context("spawn")
    barrier, results, release = spawn.Barrier(4), spawn.Queue(), spawn.Event()
    racers = [spawn.Process(target=_hold, args=(str(database), tmp_path, barrier, results,
                                                release)) for _ in range(4)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=60) for _ in racers]
    release.set()
    for racer in racers:
        racer.join(timeout=60)
    [(_, winner)] = [o for o in outcomes if o[0] == "held"]
    losers = [why for kind, why in outcomes if kind == "busy"]
    assert len(losers) == 3 and all(f"pid {winner} on {socket.gethostname()}" in why
                                    for why in losers)
    # Given back: the next run takes the root at once.
    with metadata.exclusive(tmp_path, metadata.store_connection(tmp_path, str(database))):
        pass


def test_a_holder_killed_on_this_machine_frees_the_root_at_once(database, tmp_path):
    taken = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from pathlib import Path; "
         "from pipeline import metadata; root = Path(sys.argv[2]); "
         "lease = metadata.Lease(metadata.store_connection(root, sys.argv[1]), str(root)); "
         "print(lease.context.name, flush=True); os.kill(os.getpid(), signal.SIGKILL)",
         str(database), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert taken.returncode == -signal.SIGKILL and taken.stdout.strip() == f"{tmp_path}#1"
    with metadata.exclusive(tmp_path, metadata.store_connection(tmp_path, str(database))) as lease:
        assert lease.context.name == f"{tmp_path}#2"


def _foreign_lease(database, root, expires: float) -> None:
    """A lease on `root` held by a process of another machine, as that machine would write it."""
    store = metadata._connect(metadata.store_connection(root, str(database)))
    lease = mlmd.Context(type_id=metadata._put_type(store, "context", "RootLease"),
                         name=f"{root}#1")
    for key, value in {"holder": "worker-7:4242", "since": str(time.time()),
                       "state": "held", "expires": str(expires)}.items():
        lease.custom_properties[key].string_value = value
    store.put_contexts([lease])


def test_another_machines_lease_holds_until_it_expires(database, tmp_path):
    live, expired = tmp_path / "live", tmp_path / "expired"
    _foreign_lease(database, live, time.time() + 600)
    with pytest.raises(artifacts.Busy, match="pid 4242 on worker-7"):
        with metadata.exclusive(live, metadata.store_connection(live, str(database))):
            pass
    _foreign_lease(database, expired, time.time() - 1)
    with metadata.exclusive(expired, metadata.store_connection(expired, str(database))) as lease:
        assert lease.context.name == f"{expired}#2"


def test_a_holder_that_lost_its_lease_stops_before_its_next_step(database, tmp_path):
    brief = mariadb.connection_file(tmp_path / "brief.json",
                                    json.loads(database.read_text())["mysql"]["port"],
                                    lease_seconds=0.3)
    connection = metadata.store_connection(tmp_path, str(brief))
    with metadata.exclusive(tmp_path, connection) as lease:
        store = metadata.Store(tmp_path, connection, lease)
        taken = mlmd.Context(type_id=lease.type_id, name=f"{tmp_path}#2")  # another took it over
        lease.store.put_contexts([taken])
        lease._renewer.join(timeout=30)  # the renewal notices, and ends
        assert lease.lost
        with pytest.raises(IntegrityError, match="lost its hold on the pipeline root"):
            store.start("ExampleGen", "f", {}, [], tmp_path / "ExampleGen" / "1", "code")


def test_an_unreachable_database_or_a_bad_file_is_one_clear_error(tmp_path):
    config = tmp_path / "m.json"
    config.write_text(json.dumps({"mysql": {"host": "127.0.0.1", "port": 1, "database": "x",
                                            "user": "u", "password": "p"}}))
    with pytest.raises(UserError, match=r"Cannot open the metadata database "
                                        r"mysql://u@127.0.0.1:1/x .*server is up"):
        metadata.Store(tmp_path, metadata.store_connection(tmp_path, str(config)))
    config.write_text(json.dumps({}))
    with pytest.raises(UserError, match="needs a \"mysql\" or a \"sqlite\" entry"):
        metadata.store_connection(tmp_path, str(config))
    with pytest.raises(UserError, match="does not exist. Pass an existing file"):
        metadata.store_connection(tmp_path, str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_whole_runs_racing_on_one_root_with_the_store_in_mariadb(database, tmp_path):
    data, gates = run_inputs(tmp_path)
    command = [sys.executable, "-m", "pipeline.run", "--data", str(data), "--pipeline-root",
               str(tmp_path / "root"), "--serving-dir", str(tmp_path / "serving"),
               "--evaluation-config", str(gates), "--metadata-config", str(database),
               "--epochs", "1", "--batch-size", "32"]
    racers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    outcomes = [racer.communicate(timeout=600) + (racer.returncode,) for racer in racers]
    [(out, _, _)] = [o for o in outcomes if o[2] == 0]
    [(_, err, code)] = [o for o in outcomes if o[2] != 0]
    assert code == 2 and "Traceback" not in err
    assert "Another run is using the pipeline root" in " ".join(err.split())
    assert "now serving version 1" in out
    assert not (tmp_path / "root" / "metadata.sqlite").exists()
    assert f"Metadata: mysql://fer@127.0.0.1:" in out

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing new" in again.stdout and "Trainer: reusing" in again.stdout

    lineage = subprocess.run(
        [sys.executable, "-m", "pipeline.lineage", "--pipeline-root", str(tmp_path / "root"),
         "--serving-dir", str(tmp_path / "serving"), "--metadata-config", str(database)],
        capture_output=True, text=True, timeout=120)
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    for component in ("Pusher", "Evaluator", "Trainer", "ExampleGen"):
        assert f"{component} (execution" in lineage.stdout
    assert f"input file {data} sha256" in lineage.stdout
