"""Storage without a server: URLs, options, local stores, sync on file://, progress,
staging from local data, job-name resolution and the CLI's usage errors."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from launcher.backends import outputs_url
from launcher.cli import main as cli
from launcher.errors import LaunchError, UsageError
from launcher.pod.stage import (
    file_lock,
    stage,
)
from launcher.storage import (
    NotFoundError,
    StorageOptions,
    StorageURL,
    parse_url,
    push,
    read_json,
    sync_down,
    sync_up,
    write_json,
)
from launcher.storage.files import (
    remove_stale_tmp,
    walk_files,
)
from launcher.storage.progress import Progress

ROOT = Path(__file__).resolve().parents[3]


def make_tree(root: Path, small: int = 30) -> dict[str, bytes]:
    content = {}
    for i in range(small):
        content[f"d{i % 4}/sub/f{i}.bin"] = os.urandom(100 + 37 * i)
    content["top.txt"] = b"hello\n"
    return write_tree(root, content)


def write_tree(root: Path, content: dict[str, bytes]) -> dict[str, bytes]:
    """Write `content` (relative path -> bytes) under `root`; returns it."""
    for key, data in content.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return content


def read_tree(root: Path) -> dict[str, bytes]:
    return {key: path.read_bytes() for key, path in walk_files(root).items()}


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize("text, expected", [
    ("s3://bucket", StorageURL("s3", "bucket", "")),
    ("s3://bucket/", StorageURL("s3", "bucket", "")),
    ("s3://my.bucket-1/a/b/", StorageURL("s3", "my.bucket-1", "a/b")),
    ("obs://leo-data/embeddings.zip", StorageURL("obs", "leo-data", "embeddings.zip")),
    ("OBS://leo-data/x", StorageURL("obs", "leo-data", "x")),
    ("file:///tmp/x/y", StorageURL("file", path="/tmp/x/y")),
    ("file://localhost/tmp/x", StorageURL("file", path="/tmp/x")),
    ("/abs/path", StorageURL("file", path="/abs/path")),
])
def test_parse_url(text, expected):
    assert parse_url(text) == expected


def test_parse_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_url("out/run1") == StorageURL("file", path=str(tmp_path / "out" / "run1"))


@pytest.mark.parametrize("text", [
    "", "gs://bucket/x", "http://host/x", "s3://", "s3://ab/x", "s3://Bucket/x",
    "s3://bucket//x", "s3://bucket/a/../b", "s3://-bucket/x", "s3://bucket/x?y", "s3:/bucket/x",
    "file://host/x", "s3://bu..cket/x",
])
def test_malformed_urls_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_url(text)


def test_url_child_parent_and_str():
    url = parse_url("s3://bucket/jobs")
    assert str(url.child("job-1/checkpoints/latest.json")) == "s3://bucket/jobs/job-1/checkpoints/latest.json"
    assert url.child("a").parent() == url
    assert url.child("a/b").name == "b"
    assert str(parse_url("obs://bucket")) == "obs://bucket"
    assert str(parse_url("/x/y")) == "file:///x/y"
    with pytest.raises(UsageError):
        url.child("../escape")


# --------------------------------------------------------------- options


def test_obs_endpoint_from_region_and_overrides():
    env = {"OBS_REGION": "cn-north-4"}
    options = StorageOptions()
    assert options.resolved_endpoint("obs", env) == "https://obs.cn-north-4.myhuaweicloud.com"
    assert options.resolved_endpoint("obs", {"AWS_REGION": "ap-southeast-1"}) == \
        "https://obs.ap-southeast-1.myhuaweicloud.com"
    assert StorageOptions(region="cn-east-3").resolved_endpoint("obs", env) == \
        "https://obs.cn-east-3.myhuaweicloud.com"
    assert options.resolved_endpoint("s3", env) is None  # AWS default
    with_env = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000/"}
    assert options.resolved_endpoint("obs", with_env) == "http://127.0.0.1:9000"
    assert options.resolved_endpoint("s3", with_env) == "http://127.0.0.1:9000"
    flag = StorageOptions(endpoint="http://127.0.0.1:8000")
    assert flag.resolved_endpoint("s3", with_env) == "http://127.0.0.1:8000"
    with pytest.raises(UsageError, match="OBS_REGION"):
        options.resolved_endpoint("obs", {})


def test_obs_client_configuration():
    from launcher.storage.s3 import make_client

    client = make_client("obs", StorageOptions(region="cn-north-4"))
    config = client.meta.config
    assert client.meta.endpoint_url == "https://obs.cn-north-4.myhuaweicloud.com"
    assert client.meta.region_name == "cn-north-4"
    assert config.signature_version == "s3v4"
    assert config.s3["addressing_style"] == "virtual"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.s3["payload_signing_enabled"] is False
    path_style = make_client("obs", StorageOptions(region="cn-north-4", path_style=True, sign_payload=True))
    assert path_style.meta.config.s3["addressing_style"] == "path"
    assert path_style.meta.config.s3["payload_signing_enabled"] is True


def test_addressing_style():
    assert StorageOptions().resolved_addressing("s3", {"LEO_STORAGE_PATH_STYLE": "1"}) == "path"
    assert StorageOptions().resolved_addressing("obs", {"LEO_STORAGE_PATH_STYLE": "0"}) == "virtual"
    assert StorageOptions().resolved_addressing("obs", {}) == "virtual"
    assert StorageOptions().resolved_addressing("s3", {}) == "auto"
    assert StorageOptions(path_style=False).resolved_addressing("s3", {}) == "virtual"
    assert StorageOptions(path_style=True).resolved_addressing("obs", {}) == "path"
    assert StorageOptions().resolved_max_attempts({"AWS_MAX_ATTEMPTS": "2"}) == 2


@pytest.mark.parametrize("kwargs", [
    {"endpoint": "127.0.0.1:9000"}, {"endpoint": "ftp://x"}, {"region": "Bad Region"},
    {"concurrency": 0}, {"part_size": 1024},
])
def test_bad_options_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        StorageOptions(**kwargs)


def test_endpoint_credentials_are_not_echoed():
    with pytest.raises(UsageError) as info:
        StorageOptions(endpoint="http://user:secret@host:1/x?y")
    assert "secret" not in str(info.value)


# ------------------------------------------------------- file:// and paths


def test_local_sync_round_trip_skips_unchanged_and_resends_changed(tmp_path):
    src, remote, back = tmp_path / "src", tmp_path / "remote", tmp_path / "back"
    content = make_tree(src)
    first = sync_up(src, f"file://{remote}")
    assert first.transferred == len(content) and first.skipped == 0
    second = sync_up(src, str(remote))
    assert second.transferred == 0 and second.skipped == len(content)
    (src / "top.txt").write_bytes(b"HELLO\n")  # same size, new content
    third = sync_up(src, str(remote))
    assert third.transferred == 1 and third.bytes == 6
    down = sync_down(str(remote), back)
    assert down.transferred == len(content)
    assert read_tree(back) == read_tree(src)
    assert sync_down(str(remote), back).transferred == 0


def test_sync_deletes_only_when_asked(tmp_path):
    src, remote = tmp_path / "src", tmp_path / "remote"
    make_tree(src, small=3)
    sync_up(src, remote)
    (src / "top.txt").unlink()
    assert sync_up(src, remote).deleted == 0
    assert (remote / "top.txt").exists()
    assert sync_up(src, remote, delete=True).deleted == 1
    assert not (remote / "top.txt").exists()


def test_push_single_file_into_directory_and_json(tmp_path):
    (tmp_path / "dest").mkdir()
    file = tmp_path / "weights.npz"
    file.write_bytes(b"x" * 1000)
    report = push(file, str(tmp_path / "dest"))
    assert report.transferred == 1 and (tmp_path / "dest" / "weights.npz").read_bytes() == b"x" * 1000
    assert push(file, str(tmp_path / "dest")).skipped == 1
    write_json(tmp_path / "j" / "a.json", {"step": 3})
    assert read_json(tmp_path / "j" / "a.json") == {"step": 3}
    with pytest.raises(NotFoundError):
        read_json(tmp_path / "j" / "missing.json")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".leo-tmp-{dead}-abcd-file.bin"
    mine = tmp_path / f".leo-tmp-{os.getpid()}-abcd-file.bin"
    stale.write_bytes(b"partial")
    mine.write_bytes(b"in progress")
    assert walk_files(tmp_path) == {}
    assert remove_stale_tmp(tmp_path) == 1
    assert not stale.exists() and mine.exists()


# ---------------------------------------------------------------- progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    tty, pipe = FakeTTY(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress("push", stream=stream)
        bar.set_total(2048, 2)
        bar.add(1024)
        bar.file_done()
        bar.add(1024)
        bar.file_done()
        bar.close()
    assert "100%" in tty.getvalue() and "2/2 files" in tty.getvalue()
    assert pipe.getvalue() == ""


# ------------------------------------------------------------------ staging


def make_embeddings(root: Path) -> None:
    for split in ("train", "val", "test"):
        path = root / "miniImageNet" / "center" / f"{split}_embeddings.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(2000))


def make_zip(path: Path, source: Path, top: str) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for key, file in walk_files(source).items():
            zf.write(file, f"{top}{key}")


def test_stage_local_directory_is_used_in_place(tmp_path):
    make_embeddings(tmp_path / "data" / "embeddings")
    root = stage(str(tmp_path / "data"), tmp_path / "cache")
    assert root == tmp_path / "data" / "embeddings"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("top", ["embeddings/", ""])
def test_stage_zip_with_and_without_top_folder(tmp_path, top):
    make_embeddings(tmp_path / "src")
    make_zip(tmp_path / "embeddings.zip", tmp_path / "src", top)
    root = stage(f"file://{tmp_path}/embeddings.zip", tmp_path / "cache")
    assert (root / "miniImageNet" / "center" / "train_embeddings.pkl").read_bytes() == \
        (tmp_path / "src" / "miniImageNet" / "center" / "train_embeddings.pkl").read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".leo-tmp")] == []
    again = stage(f"file://{tmp_path}/embeddings.zip", tmp_path / "cache")
    assert again == root


def test_stage_refuses_zip_slip_and_wrong_layout(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(LaunchError, match="unsafe path"):
        stage(f"file://{tmp_path}/evil.zip", tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists()
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("something/else.txt", "x")
    with pytest.raises(LaunchError, match="neither miniImageNet"):
        stage(f"file://{tmp_path}/other.zip", tmp_path / "cache2")


def _hold_lock(path: str, ready, release) -> None:
    with file_lock(Path(path)):
        ready.set()
        release.wait(30)


def test_file_lock_waits_for_the_holder_and_times_out(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "lock"), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LaunchError, match="staging lock"):
            with file_lock(tmp_path / "lock", timeout=0.3):
                pass
        release.set()
        with file_lock(tmp_path / "lock", timeout=30):
            pass
    finally:
        release.set()
        holder.join(30)


# -------------------------------------------------------------- job names


def resolve_job_url(name_or_url, env):
    return outputs_url(name_or_url, requested="local", environ=env)


def test_resolve_job_url(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path)}
    job = tmp_path / "leo-launch" / "jobs" / "mini-5shot-1"
    job.mkdir(parents=True)
    (job / "job.yaml").write_text("name: mini-5shot-1\ntrain_url: obs://leo-out/train/\n")
    assert resolve_job_url("mini-5shot-1", env) == "obs://leo-out/train/mini-5shot-1"
    assert resolve_job_url("s3://b-1/x/job", env) == "s3://b-1/x/job"
    with pytest.raises(LaunchError, match="unknown job 'other'") as info:
        resolve_job_url("other", env)
    assert not isinstance(info.value, UsageError)
    with pytest.raises(UsageError):
        resolve_job_url("Not_A_Name", env)


# ----------------------------------------------------------------------- CLI


def test_cli_malformed_url_exits_2_with_one_line(capsys, tmp_path):
    assert cli.main(["push", str(tmp_path), "gs://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unsupported storage URL scheme" in err and "Traceback" not in err
    assert cli.main(["pull", "s3://x/job"]) == 2
    assert "malformed storage URL" in capsys.readouterr().err


def test_cli_unknown_job_name_exits_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert cli.main(["pull", "nojob", "--to", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "unknown job 'nojob'" in err and err.count("\n") == 1


def test_cli_push_and_pull_on_local_paths(capsys, tmp_path):
    make_tree(tmp_path / "src", small=5)
    assert cli.main(["push", str(tmp_path / "src"), str(tmp_path / "remote")]) == 0
    assert "pushed 6 file(s)" in capsys.readouterr().out
    assert cli.main(["pull", str(tmp_path / "remote"), "--to", str(tmp_path / "ckpt")]) == 1
    err = capsys.readouterr().err
    assert "no best checkpoint" in err and "try --checkpoint latest" in err


def test_help_imports_no_boto3():
    code = ("import sys; from launcher.cli.main import build_parser; build_parser(); "
            "print('boto3' in sys.modules or 'botocore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_manifest_json_has_no_secrets(tmp_path, monkeypatch):
    from launcher.outputs.checkpoints import build_manifest

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    (tmp_path / "step-5").mkdir()
    (tmp_path / "step-5" / "weights.npz").write_bytes(b"w")
    manifest = build_manifest(tmp_path / "step-5")
    assert manifest["step"] == 5 and manifest["files"][0]["name"] == "weights.npz"
    assert "super-secret-value" not in json.dumps(manifest)
