"""`leo-launch logs` on a terminal (issue 12, case 13): a log's control bytes (escape
sequences, carriage returns, bells) are printed escaped; a pipe or file gets them raw."""

from __future__ import annotations

import io

import pytest

from launcher.backends import local as lb
from launcher.backends import localjob
from launcher.cli import main as cli
from launcher.cli.terminal import escape_controls
from launcher.spec.jobspec import build_job_spec

HOSTILE = "[node 0] \x1b]0;pwned\x07title \x1b[2J\rclear\x9b31m tab\tok é\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def job_with_hostile_log(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1, name="leo-logs",
                          data_url="/data", train_url=str(tmp_path / "out"))
    path, _ = lb.create_job_dir(spec)
    (path / localjob.OUTPUT_LOG).write_text(HOSTILE)
    return path


@pytest.mark.parametrize("tty", [True, False])
def test_logs_escape_control_bytes_on_a_terminal_only(job_with_hostile_log, monkeypatch, tty):
    stdout = Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stdout", stdout)
    assert cli.main(["logs", "leo-logs", "--backend", "local", "--all"]) == 0
    text = stdout.getvalue()
    if tty:
        assert not any(ch in text for ch in "\x1b\x07\r\x9b")
        assert "\\x1b]0;pwned\\x07title" in text
        assert "tab\tok é\n" in text  # tabs, newlines and text stay as they are
    else:
        assert text == HOSTILE


def test_escape_controls():
    assert escape_controls("a\x00b\x7f\n\t") == "a\\x00b\\x7f\n\t"
