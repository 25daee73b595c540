"""`leo-launch submit --backend local` on the command line: what it prints. The supervisor's
start is stubbed, so no process starts and nothing trains."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from launcher.backends import local as lb
from tests.launcher.render_helpers import run_cli

NO_PID = 4194305  # above Linux's largest pid_max: never a process


@pytest.fixture
def started(tmp_path, monkeypatch):
    """The commands local submit would start; its job folder under tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    commands = []
    monkeypatch.setattr(lb.subprocess, "Popen", lambda cmd, **_: commands.append(cmd) or SimpleNamespace(pid=NO_PID))
    return commands


def test_local_submit_prints_the_jobs_warnings_but_not_the_pods(started, capsys, tmp_path):
    code, out, err = run_cli(capsys, ["submit", "--backend", "local", "--exp", "mini_5shot", "--accel", "cpu",
                                      "--cards", "1", "--name", "leo-w", "--data-url", "s3://leo-data/mini",
                                      "--train-url", str(tmp_path / "runs"), "--profile", "--steps", "4"])
    assert code == 0, err
    assert [cmd[1:3] for cmd in started] == [["-m", "launcher.backends.supervisor"]]
    assert out.startswith("job leo-w started on this machine")
    # the same line as render and the Kubernetes path; no --storage-secret is no matter here
    assert err == ("leo-launch: warning: --profile-steps 5: the job trains 4 step(s), so at most 2 are "
                   "profiled (the first 2 compile)\n")


def test_dry_run_prints_the_local_plan_and_starts_nothing(started, capsys, tmp_path):
    code, out, err = run_cli(capsys, ["submit", "--dry-run", "--backend", "local", "--exp", "mini_5shot",
                                      "--accel", "cpu", "--cards", "2", "--name", "leo-p", "--data-url", "data"])
    assert code == 0, err
    assert started == [] and not (tmp_path / "state").exists()
    plan = yaml.safe_load(out)
    state = tmp_path / "state" / "leo-launch" / "jobs" / "leo-p"
    assert (plan["backend"], plan["job"], plan["state_dir"], plan["cwd"]) == ("local", "leo-p", str(state), str(state))
    assert plan["command"][1:] == ["-m", "launcher.backends.supervisor", str(state)]
    assert set(plan["environment"]) >= {"LEO_LOCAL_JOB", "PATH"}
    assert plan["paths"]["data_url"] == str(Path.cwd() / "data")  # resolved where submit was typed
    assert plan["paths"]["outputs"] == f"file://{tmp_path}/state/leo-launch/outputs/leo-p"
    assert plan["processes"].startswith("2 CPU worker process(es)")
    code, out, err = run_cli(capsys, ["submit", "--dry-run", "--backend", "local", "--exp", "mini_5shot",
                                      "--accel", "ascend", "--cards", "8", "--data-url", "data"])
    assert (code, out) == (2, "") and "the local backend runs CPU worker processes" in err
