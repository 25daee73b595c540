"""obs:// at OBS's real host names: only `--storage-region` given, nothing else (issue 21).

A SeaweedFS server runs in network namespace 0 with HTTPS on port 443 (a certificate for
`obs.cn-north-4.myhuaweicloud.com` and `*.obs.cn-north-4.myhuaweicloud.com` from a test
CA made here with openssl) and `-s3.domainName` set to the OBS host, so
`<bucket>.obs.cn-north-4.myhuaweicloud.com` reaches the bucket (virtual-hosted). The
leo-launch CLI runs in namespace 1, whose hosts file maps both names to namespace 0's
test address; its environment holds the server's keys and `AWS_CA_BUNDLE`, and no
endpoint or region. Traffic goes only over the namespaces' test addresses (and the bridge,
from this process, to create the bucket). Needs root and `ip netns` (tests/netns.py).
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.util.s3server import start_s3_server
from tests import netns
from tests.launcher.outputs.test_report import job_yaml, write_job

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
REGION = "cn-north-4"
OBS_HOST = f"obs.{REGION}.myhuaweicloud.com"
BUCKET = "bkt"
UNLISTED = "nohost"  # a bucket whose virtual host name is not in the client's hosts file
SERVER, CLIENT = 0, 1
EPHEMERAL = "net.ipv4.ip_local_port_range=12000 17999"  # per namespace; see `server`


@pytest.fixture(scope="module")
def net():
    why = netns.unavailable()
    if why:
        pytest.skip(f"the OBS host-name test needs Linux network namespaces: {why}")
    hosts = {OBS_HOST: SERVER, f"{BUCKET}.{OBS_HOST}": SERVER}
    with netns.Network(2, hosts) as network:
        yield network


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> dict[str, Path]:
    """A test CA and the server's certificate for the OBS names, signed by it."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=leo-launch test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={OBS_HOST}")
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{OBS_HOST},DNS:*.{OBS_HOST}\n"
                               "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.fixture(scope="module")
def server(net, ca, tmp_path_factory):
    """SeaweedFS in the server namespace: HTTPS on 443, buckets virtual-hosted under OBS_HOST."""
    # weed's own connections between its services take ephemeral ports of the namespace's
    # address; keep them apart from the listening ports free_ports() picks (>= 20000), or a
    # service may find its port taken ("bind: address already in use", seen once)
    sysctl = subprocess.run(net.command(SERVER, ["sysctl", "-qw", EPHEMERAL]),
                            capture_output=True, text=True)
    assert sysctl.returncode == 0, sysctl.stderr
    s3 = start_s3_server(tmp_path_factory.mktemp("s3"), host=net.address(SERVER), domain=OBS_HOST,
                         tls=(ca["cert"], ca["key"]), https_port=443,
                         prefix=["ip", "netns", "exec", net.namespaces[SERVER]])
    try:
        s3.create_bucket(BUCKET)
        s3.create_bucket(UNLISTED)
        yield s3
    finally:
        s3.stop()


@pytest.fixture
def env(server, ca) -> dict[str, str]:
    """The server's keys and the test CA; no endpoint, no region, no profiles."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "OBS_", "LEO_STORAGE_"))}
    return {**keep, "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_CA_BUNDLE": str(ca["ca"]),
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_MAX_ATTEMPTS": "2"}


def leo(net, env, *args: str) -> subprocess.CompletedProcess:
    """`python -m launcher ARGS` in the client namespace."""
    return subprocess.run(net.command(CLIENT, [sys.executable, "-m", "launcher", *args]),
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def keys(server, bucket: str, prefix: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def sample_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello OBS\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    return root


def test_push_pull_report_with_only_the_region(net, server, env, tmp_path):
    region = ["--storage-region", REGION]
    src = sample_tree(tmp_path / "src")
    push = leo(net, env, "push", str(src), f"obs://{BUCKET}/data/set", *region)
    assert push.returncode == 0, push.stderr
    assert keys(server, BUCKET, "data/set/") == ["data/set/a.txt", "data/set/sub/b.bin"]

    out = tmp_path / "back"
    pull = leo(net, env, "pull", f"obs://{BUCKET}/data/set", "--tree", "--to", str(out), *region)
    assert pull.returncode == 0, pull.stderr
    comparison = filecmp.dircmp(src, out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["a.txt", "sub/b.bin"]
    assert not comparison.diff_files and not comparison.subdirs["sub"].diff_files
    assert (out / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()

    # a small published job folder, reported by its URL
    job = write_job(tmp_path / "leo-obs", job=job_yaml("leo-obs", f"obs://{BUCKET}/train"))
    assert leo(net, env, "push", str(job), f"obs://{BUCKET}/train/leo-obs", *region).returncode == 0
    report = leo(net, env, "report", f"obs://{BUCKET}/train/leo-obs", *region)
    assert report.returncode == 0, report.stderr
    row = report.stdout.splitlines()[1].split()
    assert row[:4] == ["leo-obs", "mini_5shot", "2", "2000/2000"]
    assert "76.31%" in row


def test_addressing_is_virtual_hosted_over_verified_tls(net, server, env, tmp_path):
    src = sample_tree(tmp_path / "src")
    region = ["--storage-region", REGION]
    # the bucket's own host name is not in the hosts file: virtual-hosted requests cannot
    # resolve it; path-style ones go to obs.<region>... and work
    unlisted = leo(net, env, "push", str(src), f"obs://{UNLISTED}/x", *region)
    assert unlisted.returncode == 1 and "cannot reach the storage endpoint" in unlisted.stderr, \
        unlisted.stderr
    assert keys(server, UNLISTED, "x/") == []
    path_style = leo(net, env, "push", str(src), f"obs://{UNLISTED}/x", *region, "--path-style")
    assert path_style.returncode == 0, path_style.stderr
    assert keys(server, UNLISTED, "x/") == ["x/a.txt", "x/sub/b.bin"]
    # without the test CA the server's certificate is not trusted
    untrusted = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
    refused = leo(net, untrusted, "push", str(src), f"obs://{BUCKET}/untrusted", *region)
    assert refused.returncode == 1 and "SSLError" in refused.stderr, refused.stderr
    assert keys(server, BUCKET, "untrusted/") == []


@pytest.mark.parametrize("command", ["push", "pull"])
def test_obs_without_region_or_endpoint_refuses(net, server, env, tmp_path, command):
    src = sample_tree(tmp_path / "src")
    out = tmp_path / "out"
    argv = (["push", str(src), f"obs://{BUCKET}/noregion"] if command == "push"
            else ["pull", f"obs://{BUCKET}/data/set", "--tree", "--to", str(out)])
    proc = leo(net, env, *argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "region" in lines[0], proc.stderr
    assert keys(server, BUCKET, "noregion/") == []
    assert not out.exists()
