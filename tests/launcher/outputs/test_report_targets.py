"""`report --png` never replaces what is not a regular file (issue 22 item 14): a FIFO,
a symlink (or, as root, a device such as /dev/full) is refused with one line, left as it was."""

from __future__ import annotations

import os
import stat

import pytest

from launcher.util.files import atomic_write
from tests.launcher.outputs.test_report import write_job
from tests.launcher.render_helpers import run_cli


def make_fifo(path):
    os.mkfifo(path)


def make_symlink(path):
    target = path.parent / "precious.txt"
    target.write_text("keep me")
    path.symlink_to(target)


@pytest.mark.parametrize("make", [make_fifo, make_symlink], ids=["fifo", "symlink"])
def test_png_onto_a_non_regular_file_is_refused(tmp_path, capsys, make):
    base = write_job(tmp_path / "runs" / "leo-mini")
    target = tmp_path / "curves.png"
    make(target)
    before = os.lstat(target)
    code, out, err = run_cli(capsys, ["report", str(base), "--png", str(target)])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--png" in err and "not replaced" in err
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
    if target.is_symlink():
        assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_atomic_write_refuses_a_symlink_and_writes_regular_files(tmp_path):
    make_symlink(tmp_path / "link")
    with pytest.raises(OSError, match="symbolic link"):
        atomic_write(tmp_path / "link", b"x")
    atomic_write(tmp_path / "new", b"1")
    atomic_write(tmp_path / "new", b"2")
    assert (tmp_path / "new").read_bytes() == b"2"
