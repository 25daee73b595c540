"""Hostile or careless use of push and pull (issue 12): symbolic links, overlapping trees,
missing sources, URLs with nothing under them, a server that accepts and never answers.

The symlink rule: links inside a tree are never followed. `push` skips every link (to a
file or a folder), says so on stderr, and `--delete` keeps the remote objects under a
skipped link's path; `pull` refuses to write through a linked folder inside the
destination and replaces a linked file rather than writing to its target. The source or
destination named on the command line may itself be a link."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from launcher.cli import main as cli
from launcher.errors import UsageError
from launcher.storage import StorageError, StorageOptions, push, sync_down
from launcher.storage.files import walk_files


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for key, data in files.items():
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def keys(root: Path) -> set[str]:
    return set(walk_files(root)) if root.is_dir() else set()


# ------------------------------------------------------------------ symbolic links (case 9)


def test_push_never_follows_a_link_out_of_the_tree(tmp_path, capsys):
    secret = tree(tmp_path / "outside", {"secret.txt": b"not yours"})
    src = tree(tmp_path / "src", {"a.txt": b"a"})
    (src / "leak.txt").symlink_to(secret / "secret.txt")
    (src / "linked").symlink_to(secret, target_is_directory=True)
    code = cli.main(["push", str(src), str(tmp_path / "dst")])
    captured = capsys.readouterr()
    assert code == 0
    assert keys(tmp_path / "dst") == {"a.txt"}
    assert "skipped the symbolic link leak.txt" in captured.err
    assert "skipped the symbolic link linked" in captured.err


def test_push_delete_keeps_what_a_skipped_link_stands_for(tmp_path):
    dst = tree(tmp_path / "dst", {"a.txt": b"a", "data/x.bin": b"x", "gone.txt": b"g"})
    src = tree(tmp_path / "src", {"a.txt": b"a"})
    (src / "data").symlink_to(tree(tmp_path / "real", {"x.bin": b"x"}), target_is_directory=True)
    report = push(src, str(dst), delete=True)
    assert report.links == ["data"] and report.deleted == 1
    assert keys(dst) == {"a.txt", "data/x.bin"}


def test_pull_never_writes_through_a_linked_folder_inside_the_destination(tmp_path):
    src = tree(tmp_path / "src", {"sub/evil.txt": b"evil", "ok.txt": b"ok"})
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError, match="symbolic link inside the destination"):
        sync_down(str(src), dest)
    assert list(outside.iterdir()) == []
    assert not (dest / "ok.txt").exists()  # refused before anything was written


def test_pull_replaces_a_linked_file_instead_of_writing_to_its_target(tmp_path):
    src = tree(tmp_path / "src", {"f.txt": b"new"})
    target = tmp_path / "target.txt"
    target.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f.txt").symlink_to(target)
    sync_down(str(src), dest)
    assert target.read_bytes() == b"precious"
    assert not (dest / "f.txt").is_symlink() and (dest / "f.txt").read_bytes() == b"new"


# ------------------------------------------------------------------ overlapping trees (case 10)


@pytest.mark.parametrize("dest", ["run", ".", "run/sub/deeper", "run/sub"])
def test_push_refuses_overlapping_trees(tmp_path, dest, capsys):
    src = tree(tmp_path / "run" / "sub", {"f.txt": b"data"})
    code = cli.main(["push", str(src), (tmp_path / dest).as_uri(), "--delete"])
    err = capsys.readouterr().err
    assert code == 2 and "overlap" in err and err.count("\n") == 1
    assert (src / "f.txt").read_bytes() == b"data"
    assert keys(tmp_path / "run") == {"sub/f.txt"}


def test_pull_refuses_overlapping_trees(tmp_path):
    src = tree(tmp_path / "run", {"f.txt": b"data"})
    with pytest.raises(UsageError, match="overlap"):
        sync_down(str(src), src / "copy")


# ------------------------------------------------------------------ missing things (case 13)


def test_push_of_a_missing_source_is_bad_input(tmp_path, capsys):
    code = cli.main(["push", str(tmp_path / "nonexistent" / "dir"), "s3://bkt/x"])
    err = capsys.readouterr().err
    assert code == 2 and "no such file or directory" in err and err.count("\n") == 1


def test_pull_tree_of_a_url_with_nothing_under_it_fails(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code = cli.main(["pull", (tmp_path / "runs" / "typo").as_uri(), "--tree",
                     "--to", str(tmp_path / "got")])
    err = capsys.readouterr().err
    assert code == 1 and "nothing exists under" in err and "pulled 0" not in err
    assert not (tmp_path / "got").exists()


# ------------------------------------------------------------------ a silent server (case 12)


@pytest.fixture
def silent_server():
    """A loopback TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def fake_credentials(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("AWS_", "OBS_", "LEO_STORAGE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("command", [
    ["pull", "s3://bkt/job", "--tree"],
    ["pull", "s3://bkt/job"],
    ["report", "s3://bkt/job"],
])
def test_a_server_that_never_answers_fails_within_the_deadline(
        silent_server, fake_credentials, tmp_path, capsys, command):
    started = time.monotonic()
    code = cli.main([*command, "--storage-endpoint", silent_server, "--path-style",
                     "--storage-timeout", "2",
                     *(["--to", str(tmp_path / "to")] if command[0] == "pull" else [])])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "did not answer" in err and "--storage-timeout" in err
    assert elapsed < 15


def test_the_default_deadline_is_about_a_minute_and_help_says_how_to_raise_it(capsys, monkeypatch):
    from launcher.storage.s3 import make_client

    monkeypatch.delenv("LEO_STORAGE_TIMEOUT", raising=False)
    options = StorageOptions(endpoint="http://127.0.0.1:9")
    assert options.resolved_timeout() == 60
    config = make_client("s3", options).meta.config
    assert config.connect_timeout <= 10 and config.read_timeout <= 20
    monkeypatch.setenv("LEO_STORAGE_TIMEOUT", "300")
    assert options.resolved_timeout() == 300
    for command in ("pull", "report", "push"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "--storage-timeout SECONDS" in capsys.readouterr().out


# ------------------------------------------------------------------ issue 22, low list


def test_push_says_it_skipped_a_fifo(tmp_path, capsys):
    src = tree(tmp_path / "src", {"a.txt": b"a"})
    os.mkfifo(src / "pipe")
    code = cli.main(["push", str(src), str(tmp_path / "dst")])
    captured = capsys.readouterr()
    assert code == 0 and keys(tmp_path / "dst") == {"a.txt"}
    assert "skipped pipe: not a regular file" in captured.err


def test_a_local_error_without_a_path_names_something():
    import errno

    from launcher.storage.files import local_error

    message = str(local_error(OSError(errno.ENOSPC, "No space left on device")))
    assert not message.startswith(":") and "No space left on device" in message


def test_terminal_escapes_in_a_key_are_not_printed_raw(tmp_path, capsys):
    evil = "sub\x1b[2J"
    remote = tree(tmp_path / "remote", {f"{evil}/a.txt": b"a"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / evil).symlink_to(tmp_path, target_is_directory=True)  # makes pull name the key
    code = cli.main(["pull", str(remote), "--tree", "--to", str(dest)])
    err = capsys.readouterr().err
    assert code != 0 and "symbolic link" in err, err
    assert "\x1b" not in err and "\\x1b[2J" in err, err
