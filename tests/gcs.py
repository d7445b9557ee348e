"""A Google Cloud Storage emulator on 127.0.0.1 that Beam, TensorFlow, TFDV and TFMA all reach, so
that gs:// paths are tested without a network.

    python -m tests.gcs FOLDER      serve; writes FOLDER/ready (JSON: ports and the environment)

Two doors onto one store (gcp-storage-emulator, pure Python):
- plain HTTP on one port, for google-cloud-storage (Beam's GcsIO), via STORAGE_EMULATOR_HOST;
- TensorFlow's own GCS filesystem has its endpoints fixed to https://*.googleapis.com but honours
  HTTPS_PROXY: a second port answers CONNECT for those hosts itself (it never forwards anything
  anywhere), speaks TLS with a certificate made here and trusted through CURL_CA_BUNDLE, and
  serves the same store.
The emulator needs a few mends to serve these clients, made below: zero-byte uploads, bodies sent
chunked with a Content-Length too, Expect: 100-continue, Nagle's delay, and links that must point
at the plain door.
"""
import datetime
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from functools import partial
from http import server as http_server
from pathlib import Path

GOOGLE_HOSTS = ("storage.googleapis.com", "www.googleapis.com")


def environment(folder: Path, plain: int, tls: int) -> dict:
    """What a process needs to use the emulator as gs://: Beam, google-auth and TensorFlow."""
    token = folder / "credentials.json"  # a cached token, so no process asks Google for one
    token.write_text(json.dumps({
        "type": "authorized_user", "client_id": "test", "client_secret": "test",
        "refresh_token": "test", "token": "test-token", "expiry": "2099-01-01T00:00:00Z"}))
    return {
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{plain}",
        "GOOGLE_APPLICATION_CREDENTIALS": str(token), "GOOGLE_CLOUD_PROJECT": "test",
        "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:1",
        "GCE_METADATA_IP": "127.0.0.1:1",
        "HTTPS_PROXY": f"http://127.0.0.1:{tls}", "https_proxy": f"http://127.0.0.1:{tls}",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": str(folder / "cert.pem"), "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        "GCS_STAT_CACHE_MAX_AGE": "0", "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
        "GCS_RETRY_CONFIG_MAX_RETRIES": "2", "GCS_REQUEST_CONNECTION_TIMEOUT_SECS": "10",
    }


def _certificate(folder: Path) -> None:
    """A self-signed certificate for Google's storage hosts, valid only where trusted by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _mend(plain_url: str):
    """The emulator's request handler, mended for TensorFlow's and google-cloud-storage's ways."""
    from gcp_storage_emulator import server

    read_raw, read = server._read_raw_data, server._read_data

    def read_raw_data(handler):  # chunked framing wins over a Content-Length sent beside it
        if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            del handler.headers["Content-Length"]
        return read_raw(handler)

    def read_data(handler, query):  # a zero-byte upload is b"", not a missing body
        data = read(handler, query)
        return b"" if data is None and handler.command in ("POST", "PUT") and (
            handler.headers.get("Content-Length") == "0") else data

    server._read_raw_data, server._read_data = read_raw_data, read_data

    request_init = server.Request.__init__

    def request(self, handler, method):
        request_init(self, handler, method)
        # Links handed out must lead to the plain door, whichever door was asked.
        self._base_url = plain_url
        self._full_url = plain_url + self._path

    server.Request.__init__ = request

    class Handler(server.RequestHandler):
        disable_nagle_algorithm = True

        def parse_request(self):
            if not super().parse_request():
                return False
            if (self.headers.get("Expect") or "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.wfile.flush()
            return True

    return Handler


class _Threaded(socketserver.ThreadingMixIn, http_server.HTTPServer):
    daemon_threads = True


def serve(folder: Path) -> None:
    from gcp_storage_emulator.storage import Storage

    _certificate(folder)
    plain_socket = socket.create_server(("127.0.0.1", 0))
    plain = plain_socket.getsockname()[1]
    plain_socket.close()
    handler = _mend(f"http://127.0.0.1:{plain}")
    storage = Storage(use_memory_fs=True)  # on disk, "dir/" objects collide with dir/ files
    lock = threading.Lock()  # the store is not made for concurrent requests: one at a time

    class Serialised(handler):
        def handle_one_request(self):
            with lock:
                super().handle_one_request()

    front = _Threaded(("127.0.0.1", plain), partial(Serialised, storage))
    tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_context.load_cert_chain(folder / "cert.pem", folder / "key.pem")

    class Tunnel(socketserver.StreamRequestHandler):
        """Answers CONNECT to Google's storage hosts itself, then serves the store over TLS."""

        def handle(self):
            line = self.rfile.readline(65537).decode("latin-1").split()
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            if len(line) < 2 or line[0] != "CONNECT" or line[1].rpartition(":")[0] not in (
                    GOOGLE_HOSTS):
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            tls = tls_context.wrap_socket(self.connection, server_side=True)
            Serialised(storage, tls, self.client_address, front)

    tunnel = _Threaded(("127.0.0.1", 0), Tunnel)
    tls_port = tunnel.server_address[1]
    for target in (front.serve_forever, tunnel.serve_forever):
        threading.Thread(target=target, daemon=True).start()
    (folder / "ready").write_text(json.dumps({"plain": plain, "tls": tls_port,
                                              "environment": environment(folder, plain, tls_port)}))
    threading.Event().wait()


class Emulator:
    """The emulator in a process of its own: started, health-checked, stopped, all bounded."""

    def __init__(self, folder: Path, timeout: float = 30):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-m", "tests.gcs", str(folder)],
                                        stdout=subprocess.DEVNULL, stderr=open(folder / "log", "w"))
        deadline = time.monotonic() + timeout
        while not (folder / "ready").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the GCS emulator did not start: {(folder / 'log').read_text()}")
            time.sleep(0.05)
        ready = json.loads((folder / "ready").read_text())
        self.plain, self.environment = ready["plain"], ready["environment"]
        self.check()

    def check(self) -> None:
        """Raise unless the emulator answers on its plain door within 5 s."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.plain}/storage/v1/b", timeout=5) as answer:
            assert answer.status == 200

    def bucket(self, name: str) -> str:
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.plain}/storage/v1/b?project=test", method="POST",
            data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5)
        return f"gs://{name}"

    def upload(self, local: Path, uri: str) -> None:
        """Put a local file at gs://bucket/name, through the emulator's JSON API."""
        import urllib.parse
        import urllib.request

        bucket, _, name = uri.removeprefix("gs://").partition("/")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.plain}/upload/storage/v1/b/{bucket}/o?uploadType=media&"
            f"name={urllib.parse.quote(name, safe='')}", data=local.read_bytes(), method="POST",
            headers={"Content-Type": "application/octet-stream"})
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
