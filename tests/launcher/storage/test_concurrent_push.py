"""Two `push --delete` of different trees to one prefix at once never both exit 0 leaving
a mix (issue 22 item 13): each announces itself with a marker object, checked when it
starts and again with a fresh listing before it deletes. The race is made deterministic by
LEO_TEST_PUSH_PAUSE (the first push waits after its uploads until the test resumes it)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.storage import StorageOptions, open_store

PAUSE_VARIABLE = "LEO_TEST_PUSH_PAUSE"  # launcher.storage.sync's test hook


def _tree(root: Path, files: dict[str, str]) -> Path:
    for key, text in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(text)
    return root


def _push(source: Path, url: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher", "push", str(source), url, "--delete"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _wait_paused(pause: Path, proc: subprocess.Popen) -> None:
    """Until the first push waits at its pause point (or, on code without one, has ended)."""
    deadline = time.monotonic() + 120
    while not (pause / "paused").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _race(tmp_path: Path, url: str, env: dict[str, str], *, intruder=None) -> tuple:
    a = _tree(tmp_path / "a", {"common.txt": "A", "only-a/x.bin": "A" * 100})
    b = _tree(tmp_path / "b", {"common.txt": "B", "only-b.txt": "B"})
    pause = tmp_path / "pause"
    pause.mkdir()
    first = _push(a, url, {**env, PAUSE_VARIABLE: str(pause)})
    try:
        _wait_paused(pause, first)
        if intruder is None:
            second = _push(b, url, env)
            out2, err2 = second.communicate(timeout=120)
            result2 = (second.returncode, out2, err2)
        else:
            intruder()
            result2 = None
        (pause / "resume").touch()
        out1, err1 = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    return (first.returncode, out1, err1), result2


def _listing(url: str, options: StorageOptions) -> dict[str, bytes]:
    with open_store(url, options) as store:
        return {key: store.get_bytes(key) for key in store.list()}


@pytest.mark.integration
def test_two_s3_pushes_with_delete_at_once_one_fails(s3_env, tmp_path):
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    url = f"s3://{bucket}/shared"
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env.endpoint, "LEO_STORAGE_PATH_STYLE": "1"}
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, progress=False)
    (code1, _, err1), (code2, out2, err2) = _race(tmp_path, url, env)
    assert code1 == 0, err1
    assert code2 == 1 and out2 == "" and len(err2.splitlines()) == 1, err2
    assert "another push --delete to" in err2 and ".leo-push-" in err2
    # the first push's tree, exactly: nothing of the second, no marker left
    assert _listing(url, options) == {"common.txt": b"A", "only-a/x.bin": b"A" * 100}


def test_two_local_pushes_with_delete_at_once_one_fails(tmp_path):
    url = str(tmp_path / "dest")
    (code1, _, err1), (code2, _, err2) = _race(tmp_path, url, dict(os.environ))
    assert code1 == 0, err1
    assert code2 == 1 and len(err2.splitlines()) == 1 and "another push --delete" in err2, err2
    assert _listing(url, StorageOptions(progress=False)) == {
        "common.txt": b"A", "only-a/x.bin": b"A" * 100}


def test_a_writer_that_appears_before_the_delete_stops_it(tmp_path):
    """The re-check before deleting: a marker that appears while the first push uploads
    fails it with nothing deleted."""
    dest = _tree(tmp_path / "dest", {"stale.txt": "old"})

    def intruder() -> None:
        (dest / ".leo-push-intruder").write_text("{}")

    (code1, _, err1), _ = _race(tmp_path, str(dest), dict(os.environ), intruder=intruder)
    assert code1 == 1 and len(lines := err1.splitlines()) == 1, err1
    assert ".leo-push-intruder" in lines[0] and "nothing was deleted" in lines[0]
    assert (dest / "stale.txt").read_text() == "old"
    assert sorted(p.name for p in dest.iterdir() if p.name.startswith(".leo-push-")) == [
        ".leo-push-intruder"]  # its own marker removed, the other's left alone
