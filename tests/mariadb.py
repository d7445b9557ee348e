"""A throw-away MariaDB server for the tests: its own data folder, listening on 127.0.0.1 only,
health-checked, stopped (and its folder removed) at the end, every wait bounded.

Needs Debian's mariadb-server (.ci/run installs it). Outside CI a machine without it skips the
tests that need it; in CI (CI=true) its absence is a failure, so a broken install cannot pass.
"""
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

SERVER, INSTALL, ADMIN = "mariadbd", "mariadb-install-db", "mariadb-admin"


def available() -> bool:
    found = all(shutil.which(tool) or Path("/usr/sbin", tool).exists()
                for tool in (SERVER, INSTALL, ADMIN))
    if not found and os.environ.get("CI") == "true":
        pytest.fail("mariadb-server is not installed; .ci/run installs it (apt-get install "
                    "mariadb-server)")
    return found


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@contextlib.contextmanager
def server(folder: Path, timeout: float = 30):
    """Start a server with its data in `folder`; yield its port. The user "fer" (password
    "fer-test", mysql_native_password as ML Metadata's client needs) owns the database "fer"."""
    data = folder / "data"
    subprocess.run([_tool(INSTALL), "--no-defaults", f"--datadir={data}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    "--skip-name-resolve"], check=True, capture_output=True, timeout=timeout)
    port = free_port()
    process = subprocess.Popen(
        [_tool(SERVER), "--no-defaults", f"--datadir={data}", "--user=root",
         f"--socket={folder / 'sock'}", f"--pid-file={folder / 'pid'}", f"--port={port}",
         "--bind-address=127.0.0.1", "--skip-networking=0", "--skip-name-resolve",
         "--innodb-log-file-size=8M", f"--log-error={folder / 'error.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = [_tool(ADMIN), "--protocol=TCP", "-h127.0.0.1", f"-P{port}", "-uroot",
              "--connect-timeout=2"]
    try:
        deadline = time.monotonic() + timeout
        while subprocess.run([*client, "ping"], capture_output=True, timeout=10).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MariaDB did not start: {(folder / 'error.log').read_text()}")
            time.sleep(0.1)
        sql("CREATE DATABASE fer; CREATE USER 'fer'@'127.0.0.1' IDENTIFIED BY 'fer-test'; "
            "GRANT ALL ON fer.* TO 'fer'@'127.0.0.1';", port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


def sql(statements: str, port: int) -> str:
    client = shutil.which("mariadb") or "mysql"
    return subprocess.run([client, "--protocol=TCP", "-h127.0.0.1", f"-P{port}", "-uroot",
                           "--connect-timeout=5", "-N", "-e", statements], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def connection_file(path: Path, port: int, **extra) -> Path:
    """A --metadata-config file for the server's database."""
    path.write_text(json.dumps({"mysql": {"host": "127.0.0.1", "port": port, "database": "fer",
                                          "user": "fer", "password": "fer-test"}, **extra}))
    return path
