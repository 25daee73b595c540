"""An endpoint whose TLS certificate this machine does not trust: the command ends at once
with one line saying so and naming AWS_CA_BUNDLE, instead of botocore retrying the
handshake as if it were a dropped connection (every retry fails the same way)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest


@pytest.fixture
def untrusted_server(tmp_path):
    """A TLS listener on 127.0.0.1 with a self-signed certificate; counts handshakes tried."""
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
                           "-out", "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    attempts, stop = [], threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            attempts.append(1)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass  # the client refuses the certificate during the handshake
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", attempts
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("command", ["push", "pull"])
def test_an_untrusted_certificate_is_one_line_without_retries(untrusted_server, tmp_path, command):
    endpoint, attempts = untrusted_server
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OBS_", "LEO_STORAGE_"))}
    env.update({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_MAX_ATTEMPTS": "5"})
    argv = ([str(tmp_path / "data"), "s3://bkt/x"] if command == "push"
            else ["s3://bkt/x", "--tree", "--to", str(tmp_path / "out")])
    proc = subprocess.run([sys.executable, "-m", "launcher", command, *argv, "--storage-endpoint", endpoint,
                           "--path-style"], env=env, cwd=Path(__file__).resolve().parents[3],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TLS certificate that is not trusted here" in lines[0], proc.stderr
    assert "AWS_CA_BUNDLE" in lines[0] and "certificate verify failed" in lines[0]
    assert len(attempts) == 1, f"{len(attempts)} handshakes: the request was retried"
