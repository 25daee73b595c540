"""Shared pytest configuration. Fixtures that start servers live in their own modules."""

import os
import sys
from pathlib import Path

from tests import netguard

ROOT = Path(__file__).resolve().parent.parent

# msrun and subprocess-based tests start `python` from PATH: make it this interpreter's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# Only loopback and the test namespaces may receive traffic: guard this process and, through
# PYTHONPATH (tests/netguard/sitecustomize.py), every Python process the tests start.
netguard.activate()
# Keep MindSpore's C++ log to warnings and errors.
os.environ.setdefault("GLOG_v", "2")


# --- Object storage: a real S3 server (SeaweedFS `weed mini`), see launcher/util/s3server.py ---
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_instance_metadata(monkeypatch):
    """No test may ask the cloud's instance-metadata address for credentials: boto3's
    default chain would, whenever nothing else is configured (traffic off the loopback)."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One authenticated SeaweedFS S3 server per test session, stopped at the end."""
    from launcher.util.s3server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The server, with AWS variables pointing at it only: no profiles, no instance
    metadata, no endpoint or region from the outer environment."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "OBS_", "LEO_STORAGE_")):
            monkeypatch.delenv(key)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def localhost_subdomains():
    """`<bucket>.localhost` resolves to 127.0.0.1 (virtual-hosted addressing in tests)."""
    from launcher.util.s3server import resolve_localhost_subdomains

    with resolve_localhost_subdomains():
        yield
