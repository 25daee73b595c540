"""Storage against a real S3 server (SeaweedFS `weed mini`, authentication on):
path-style and virtual-hosted addressing, s3:// and obs:// URLs, multipart, skipping,
resuming after a kill, and every error case with its one-line message."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.cli import main as cli
from launcher.storage import (
    IntegrityError,
    NotFoundError,
    StorageError,
    StorageOptions,
    list_objects,
    open_store,
    read_json,
    sync_down,
    sync_up,
    write_json,
)
from launcher.util.s3server import start_s3_server
from tests.launcher.storage.test_storage import read_tree, write_tree

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
MB = 1024 * 1024


def new_bucket(server) -> str:
    return server.create_bucket("leo-" + secrets.token_hex(4))


def make_tree(root: Path, small: int = 200, big: int = 21 * MB) -> dict[str, bytes]:
    content = {f"small/{i % 10}/file-{i}.bin": os.urandom(64 + (i * 97) % 4000) for i in range(small)}
    if big:
        content["big/embeddings.pkl"] = os.urandom(big)
    return write_tree(root, content)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    make_tree(root)
    return root


ADDRESSING = [  # (scheme, path_style)
    ("s3", True),
    ("s3", False),
    ("obs", False),
    ("obs", True),
]


def options_for(server, path_style: bool, scheme: str = "s3", **extra) -> StorageOptions:
    endpoint = server.endpoint if path_style else server.vhost_endpoint
    if scheme == "obs" and not path_style:
        return StorageOptions(endpoint=endpoint, **extra)  # virtual-hosted is the OBS default
    return StorageOptions(endpoint=endpoint, path_style=path_style, **extra)


@pytest.mark.parametrize("scheme, path_style", ADDRESSING)
def test_round_trip_multipart_and_many_small_files(s3_env, localhost_subdomains, tree, tmp_path,
                                                   scheme, path_style):
    bucket = new_bucket(s3_env)
    url = f"{scheme}://{bucket}/data/run"
    options = options_for(s3_env, path_style, scheme, part_size=8 * MB)  # 21 MB: 3 parts
    hosts = []
    with open_store(url, options) as store:
        store.client.meta.events.register("before-send.s3", lambda request, **_: hosts.append(request.url))
        up = sync_up_store(tree, store)
    assert up.transferred == 201 and up.skipped == 0 and up.bytes == sum(
        len(v) for v in read_tree(tree).values())
    if path_style:
        assert hosts and all(u.startswith(f"{s3_env.endpoint}/{bucket}") for u in hosts)
    else:
        assert hosts and all(u.startswith(f"http://{bucket}.localhost:{s3_env.port}") for u in hosts)
    # The 21 MB file went up in 8 MB parts (ETag "<md5>-<parts>") with its sha256 in the metadata.
    head = s3_env.client().head_object(Bucket=bucket, Key="data/run/big/embeddings.pkl")
    assert head["ETag"].strip('"').endswith("-3") and len(head["Metadata"]["sha256"]) == 64

    again = sync_up(tree, url, options=options)
    assert again.transferred == 0 and again.skipped == 201

    down = sync_down(url, tmp_path / "down", options=options)
    assert down.transferred == 201 and read_tree(tmp_path / "down") == read_tree(tree)
    assert sync_down(url, tmp_path / "down", options=options).transferred == 0


def sync_up_store(tree, store):
    from launcher.storage.sync import sync_up as sync_up_on

    return sync_up_on(tree, store)


def test_changed_files_are_resent_and_nothing_deleted_unless_asked(s3_env, tmp_path):
    bucket = new_bucket(s3_env)
    url = f"s3://{bucket}/x"
    options = options_for(s3_env, True)
    content = make_tree(tmp_path / "src", small=20, big=0)
    sync_up(tmp_path / "src", url, options=options)
    changed = tmp_path / "src" / "small/3/file-3.bin"
    changed.write_bytes(os.urandom(len(content["small/3/file-3.bin"])))  # same size
    (tmp_path / "src" / "small/4/file-4.bin").unlink()
    report = sync_up(tmp_path / "src", url, options=options)
    assert (report.transferred, report.skipped, report.deleted) == (1, 18, 0)
    assert "small/4/file-4.bin" in list_objects(url, options=options)
    assert sync_up(tmp_path / "src", url, options=options, delete=True).deleted == 1
    assert "small/4/file-4.bin" not in list_objects(url, options=options)
    down = sync_down(url, tmp_path / "down", options=options)
    assert (tmp_path / "down" / "small/3/file-3.bin").read_bytes() == changed.read_bytes()
    changed.write_bytes(b"shorter")
    assert sync_up(tmp_path / "src", url, options=options).transferred == 1
    assert sync_down(url, tmp_path / "down", options=options).transferred == 1
    assert down.files == 19


SYNC_SCRIPT = """
import sys
from launcher.storage import (
    StorageOptions,
    sync_down,
    sync_up,
)
options = StorageOptions(endpoint=sys.argv[4], path_style=True, concurrency=1)
if sys.argv[1] == "up":
    sync_up(sys.argv[2], sys.argv[3], options=options)
else:
    sync_down(sys.argv[3], sys.argv[2], options=options)
"""


def kill_when(process: subprocess.Popen, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the sync finished before it could be interrupted"
        assert time.monotonic() < deadline, "the sync made no progress"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def test_interrupted_sync_resumes(s3_env, tmp_path):
    bucket = new_bucket(s3_env)
    url = f"s3://{bucket}/resume"
    options = options_for(s3_env, True)
    make_tree(tmp_path / "src", small=400, big=0)
    command = [sys.executable, "-c", SYNC_SCRIPT]
    client = s3_env.client()

    def uploaded() -> int:
        return client.list_objects_v2(Bucket=bucket, Prefix="resume/").get("KeyCount", 0)

    up = subprocess.Popen(command + ["up", str(tmp_path / "src"), url, s3_env.endpoint], cwd=ROOT)
    kill_when(up, lambda: uploaded() >= 60)
    done_before = uploaded()
    assert done_before < 400
    report = sync_up(tmp_path / "src", url, options=options)
    assert report.skipped >= done_before and report.transferred == 400 - report.skipped

    dest = tmp_path / "down"
    down = subprocess.Popen(command + ["down", str(dest), url, s3_env.endpoint], cwd=ROOT)
    kill_when(down, lambda: dest.is_dir() and sum(1 for _ in dest.rglob("file-*.bin")) >= 60)
    report = sync_down(url, dest, options=options)
    assert report.skipped >= 60 and report.transferred == 400 - report.skipped
    assert read_tree(dest) == read_tree(tmp_path / "src")
    assert not [p for p in dest.rglob(".leo-tmp-*")]


def test_json_helpers_and_missing_objects(s3_env):
    bucket = new_bucket(s3_env)
    options = options_for(s3_env, True)
    write_json(f"obs://{bucket}/job/checkpoints/latest.json", {"step": 7, "path": "step-7"}, options=options)
    assert read_json(f"obs://{bucket}/job/checkpoints/latest.json", options=options)["step"] == 7
    with pytest.raises(NotFoundError, match="does not exist"):
        read_json(f"obs://{bucket}/job/checkpoints/best.json", options=options)


def test_signed_payloads_on_request(s3_env, tmp_path):
    bucket = new_bucket(s3_env)
    make_tree(tmp_path / "src", small=3, big=0)
    options = options_for(s3_env, True, sign_payload=True)
    assert sync_up(tmp_path / "src", f"s3://{bucket}/signed", options=options).transferred == 3
    assert sync_down(f"s3://{bucket}/signed", tmp_path / "down", options=options).transferred == 3


# ------------------------------------------------------------------ errors


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("leo-launch: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_wrong_secret_unknown_key_missing_bucket(s3_env, capsys, tmp_path, monkeypatch):
    bucket = new_bucket(s3_env)
    make_tree(tmp_path / "src", small=2, big=0)
    endpoint = ["--storage-endpoint", s3_env.endpoint, "--path-style"]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code, _, err = run_cli(capsys, "push", str(tmp_path / "src"), f"s3://{bucket}/x", *endpoint)
    assert code == 1
    assert_one_line(err, "SignatureDoesNotMatch", "wrong secret key")
    assert "not-the-secret" not in err and s3_env.secret_key not in err

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknownkey")
    code, _, err = run_cli(capsys, "pull", f"s3://{bucket}/job", "--to", str(tmp_path / "c"), *endpoint)
    assert code == 1
    assert_one_line(err, "InvalidAccessKeyId")
    assert "unknownkey" not in err

    for key, value in s3_env.env().items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli(capsys, "push", str(tmp_path / "src"), "s3://no-such-bucket-x/x", *endpoint)
    assert code == 1
    assert_one_line(err, "bucket 'no-such-bucket-x' does not exist")
    code, _, err = run_cli(capsys, "pull", "obs://no-such-bucket-x/job", "--to", str(tmp_path / "c"), *endpoint)
    assert code == 1
    assert_one_line(err, "bucket 'no-such-bucket-x' does not exist")


def test_no_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no storage credentials"):
        list_objects("s3://some-bucket/x", options=options_for(s3_env, True))


def test_unreachable_endpoint(s3_env, capsys, tmp_path, monkeypatch):
    from launcher.util.s3server import free_ports

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    port = free_ports(1)[0]  # nothing listens there
    make_tree(tmp_path / "src", small=2, big=0)
    started = time.monotonic()
    code, _, err = run_cli(capsys, "push", str(tmp_path / "src"), "obs://leo-data/x",
                           "--storage-endpoint", f"http://127.0.0.1:{port}", "--path-style")
    assert code == 1 and time.monotonic() - started < 30
    assert_one_line(err, f"cannot reach the storage endpoint http://127.0.0.1:{port}")
    code, _, err = run_cli(capsys, "--debug", "pull", "s3://leo-data/job", "--storage-endpoint",
                           f"http://127.0.0.1:{port}", "--to", str(tmp_path / "c"))
    assert code == 1 and "Traceback" in err  # --debug shows it


def test_downloads_are_verified(s3_env, tmp_path):
    """An object whose bytes do not match its recorded sha256 is refused and nothing is left."""
    bucket = new_bucket(s3_env)
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="d/a.bin", Body=b"tampered", Metadata={"sha256": "0" * 64})
    options = options_for(s3_env, True)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        sync_down(f"s3://{bucket}/d", tmp_path / "down", options=options)
    assert not list((tmp_path / "down").rglob("*")) if (tmp_path / "down").exists() else True


@pytest.fixture
def private_server(tmp_path, s3_env, monkeypatch):
    """A server of this test's own, to be stopped in the middle of a transfer."""
    server = start_s3_server(tmp_path / "private")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()
        assert not server.alive()


@pytest.mark.parametrize("direction, part_size", [
    ("upload", 8 * MB),  # multipart
    ("download", 8 * MB),  # parallel ranged GETs
    ("download", 64 * MB),  # one streamed GET
])
def test_server_stopped_mid_transfer(private_server, tmp_path, direction, part_size):
    server = private_server
    bucket = server.create_bucket("leo-stop")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 * MB))
    options = StorageOptions(endpoint=server.endpoint, path_style=True, max_attempts=2,
                             connect_timeout=2, read_timeout=2, concurrency=2, part_size=part_size)
    if direction == "download":
        sync_up(tmp_path, f"s3://{bucket}/d", options=options)
    started, stopped = threading.Event(), threading.Event()

    def progress(nbytes: int) -> None:
        started.set()
        stopped.wait(30)  # hold the transfer until the server is gone

    failure: list[BaseException] = []
    dest = tmp_path / "out" / "big.bin"

    def transfer() -> None:
        try:
            with open_store(f"s3://{bucket}/d", options) as store:
                if direction == "upload":
                    store.put_file(big, "again.bin", progress)
                else:
                    store.get_file("big.bin", dest, None, progress)
        except BaseException as err:  # noqa: BLE001 - inspected below
            failure.append(err)

    thread = threading.Thread(target=transfer)
    thread.start()
    assert started.wait(60)
    server.stop()
    stopped.set()
    thread.join(120)
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], StorageError), failure
    message = str(failure[0])
    assert "\n" not in message and f"127.0.0.1:{server.port}" in message
    if direction == "download":
        assert not dest.exists()
        assert not list((tmp_path / "out").glob(".leo-tmp-*"))


def test_cli_subprocess_push_pull_quiet_in_a_pipe(s3_env, tmp_path):
    """The installed entry point: no progress bar when stderr is not a terminal."""
    bucket = new_bucket(s3_env)
    make_tree(tmp_path / "src", small=5, big=0)
    env = {**os.environ, **s3_env.env(), "AWS_ENDPOINT_URL": s3_env.endpoint, "LEO_STORAGE_PATH_STYLE": "1"}
    result = subprocess.run([sys.executable, "-m", "launcher", "push", str(tmp_path / "src"),
                             f"s3://{bucket}/p"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "pushed 5 file(s)" in result.stdout
