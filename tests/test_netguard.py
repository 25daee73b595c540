"""The test network guard (tests/netguard): only loopback, Unix sockets and the test
namespaces' range may receive traffic, in this process and every Python process it starts."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import netguard, netns, podman_images
from tests.netguard import leo_netguard

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "192.0.2.1"  # TEST-NET-1 (RFC 5737): routed nowhere, even if the guard were broken
PUBLIC6 = "2001:db8::1"  # the IPv6 documentation prefix (RFC 3849)
REFUSED = "test network guard: connection to"
UNRESOLVED = "test network guard: name resolution of"


@pytest.fixture
def real_calls(monkeypatch):
    """Every address the guard passed on to the real socket calls."""
    calls = []
    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        real = leo_netguard._real_socket[name]

        def record(sock, *args, _real=real):
            calls.append(args)
            return _real(sock, *args)

        monkeypatch.setitem(leo_netguard._real_socket, name, record)
    return calls


def test_this_process_and_its_children_are_guarded():
    assert leo_netguard.installed()
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(netguard.GUARD_DIR)
    assert netguard.OPT_OUT not in os.environ


def test_a_public_address_is_refused_before_the_socket_is_used(real_calls):
    with socket.socket() as tcp, pytest.raises(PermissionError, match=f"{REFUSED} {PUBLIC}:443"):
        tcp.connect((PUBLIC, 443))
    with socket.socket() as tcp, pytest.raises(PermissionError, match=REFUSED):
        tcp.connect_ex((PUBLIC, 443))
    with socket.socket(socket.AF_INET6) as tcp6, pytest.raises(PermissionError, match=REFUSED):
        tcp6.connect((PUBLIC6, 443, 0, 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(PermissionError, match=f"{REFUSED} {PUBLIC}:53"):
            udp.sendto(b"x", (PUBLIC, 53))
        with pytest.raises(PermissionError, match=REFUSED):
            udp.sendto(b"x", 0, (PUBLIC, 53))
        with pytest.raises(PermissionError, match=REFUSED):
            udp.sendmsg([b"x"], [], 0, (PUBLIC, 53))
    with socket.socket(socket.AF_INET6) as tcp6, pytest.raises(PermissionError, match=REFUSED):
        tcp6.connect((f"::ffff:{PUBLIC}", 443, 0, 0))
    with socket.socket() as tcp, pytest.raises(PermissionError, match=REFUSED):
        tcp.connect(("10.230.0.1", 443))  # next to the test range, not in it
    assert real_calls == []


def test_a_name_only_dns_could_answer_is_not_resolved():
    for resolve in (lambda: socket.getaddrinfo("s3.amazonaws.com", 443),
                    lambda: socket.gethostbyname("example.com"),
                    lambda: socket.gethostbyname_ex("example.com"),
                    lambda: socket.gethostbyaddr("8.8.8.8"),
                    lambda: socket.create_connection(("example.com", 80), timeout=5)):
        with pytest.raises(socket.gaierror, match="test network guard: .* refused"):
            resolve()
    with socket.socket() as tcp, pytest.raises(socket.gaierror, match=UNRESOLVED):
        tcp.connect(("example.com", 80))  # connect would resolve it in C otherwise


def test_loopback_unix_sockets_and_the_test_range_pass(tmp_path, real_calls):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        accepted = threading.Thread(target=lambda: server.accept()[0].sendall(b"hi"))
        accepted.start()
        with socket.create_connection(("localhost", port), timeout=10) as client:
            assert client.recv(2) == b"hi"
        accepted.join(10)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "s"))
    assert [args[0][0] for args in real_calls if isinstance(args[0], tuple)] == ["127.0.0.1"]
    for ip in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "0.0.0.0", "10.231.0.1",
               "10.231.250.254"):
        assert leo_netguard.allowed_ip(ip), ip
    for ip in (PUBLIC, PUBLIC6, "10.230.255.255", "10.232.0.0", "169.254.169.254",
               "::ffff:8.8.8.8", "fe80::1%eth0", "not an address"):
        assert not leo_netguard.allowed_ip(ip), ip


@pytest.mark.skipif(netns.unavailable() is not None, reason="needs `ip`, root")
def test_the_namespaces_take_their_addresses_from_the_guarded_range():
    assert netns._free_subnet().subnet_of(netguard.TEST_NETWORK)


@pytest.mark.parametrize("how", ["python -m launcher", "leo-launch"])
def test_the_cli_cannot_reach_a_public_endpoint(tmp_path, how):
    command = ([sys.executable, "-m", "launcher"] if how != "leo-launch"
               else [str(Path(sys.executable).parent / "leo-launch")])
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": os.devnull}
    started = time.monotonic()
    proc = subprocess.run([*command, "pull", "s3://bkt/x", "--storage-endpoint", f"https://{PUBLIC}",
                           "--to", str(tmp_path / "to")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"{REFUSED} {PUBLIC}:443" in proc.stderr
    assert time.monotonic() - started < 30  # refused at once, not after a connect timeout
    assert not (tmp_path / "to").exists()


def test_boto3_without_an_endpoint_cannot_reach_amazonaws(capfd, monkeypatch):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="s", config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(EndpointConnectionError):
        client.list_objects_v2(Bucket="bkt")
    assert f"{UNRESOLVED} 'bkt.s3.amazonaws.com'" in capfd.readouterr().err
    # and had the name resolved (a resolver in front of the guard answers), the connect is refused
    guarded = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **kw: guarded(
        PUBLIC if str(host).endswith(".amazonaws.com") else host, *a, **kw))
    with pytest.raises(EndpointConnectionError):
        client.list_objects_v2(Bucket="bkt")
    assert f"{REFUSED} {PUBLIC}:443" in capfd.readouterr().err


def test_requests_urllib3_and_the_kubernetes_client_are_refused(capfd):
    import requests
    import urllib3
    from kubernetes import client as kclient

    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{PUBLIC}/", timeout=5)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        urllib3.PoolManager(retries=0).request("GET", f"https://{PUBLIC}/")
    config = kclient.Configuration(host=f"https://{PUBLIC}:6443")
    config.retries = 0
    with kclient.ApiClient(config) as api, pytest.raises(urllib3.exceptions.MaxRetryError):
        kclient.CoreV1Api(api).list_namespace(_request_timeout=5)
    err = capfd.readouterr().err
    assert err.count(f"{REFUSED} {PUBLIC}:80") == 1 and err.count(f"{REFUSED} {PUBLIC}:443") == 1
    assert err.count(f"{REFUSED} {PUBLIC}:6443") == 1


PROBE = f"""
import socket, sys
try:
    socket.create_connection(("{PUBLIC}", 443), timeout=5)
except PermissionError as err:
    sys.exit("refused: " + str(err))
print("reached")
"""


def test_a_subprocess_of_a_subprocess_is_guarded():
    nested = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {PROBE!r}]).returncode)"
    proc = subprocess.run([sys.executable, "-c", nested], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and f"refused: [Errno 13] {REFUSED} {PUBLIC}:443" in proc.stderr


def test_the_opt_out_turns_the_guard_off_and_only_the_wheel_download_uses_it():
    check = "import socket; print(getattr(socket.socket.connect, '__leo_netguard__', False))"
    for value, expected in ((None, "True"), ("off", "False")):
        env = {**os.environ, **({netguard.OPT_OUT: value} if value else {})}
        proc = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        assert proc.stdout.strip() == expected
    users = {path.relative_to(ROOT).as_posix()
             for folder in ("tests", "launcher", "leo_core", "images", "k8s_templates")
             for path in (ROOT / folder).rglob("*") if path.is_file() and path.suffix != ".pyc"
             and any(word in path.read_text(errors="replace")
                     for word in (netguard.OPT_OUT, "OPT_OUT", "netguard=off"))}
    assert users == {"tests/netguard/__init__.py", "tests/netguard/leo_netguard.py",
                     "tests/netguard/sitecustomize.py", "tests/podman_images.py",
                     "tests/test_netguard.py", "tests/README.md"}
    source = Path(podman_images.__file__).read_text()
    assert source.count("OPT_OUT") == 2  # the import, and the wheel download's env
    assert 'OPT_OUT: "off"' in inspect.getsource(podman_images.wheelhouse)


def test_a_sitecustomize_it_shadows_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_RAN'] = '1'\n")
    env = {**os.environ, "PYTHONPATH": netguard.pythonpath(str(tmp_path))}
    code = ("import os, socket; print(os.environ.get('SHADOWED_RAN'), "
            "getattr(socket.socket.connect, '__leo_netguard__', False))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.split() == ["1", "True"]
