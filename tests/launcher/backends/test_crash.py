"""Crash consistency of the local backend (issue 12): kill the CLI, the supervisor or the
bootstrap at each step of submit, damage each state file; afterwards `status` tells the
truth, `cancel` leaves no process carrying the job's mark and the outputs are untouched.

Cheap stand-ins: the real supervisor (`Supervisor` with a custom command, in a process of
its own carrying the job's mark as submit gives it) runs a stand-in bootstrap that reports
"training" and starts a worker in a session of its own, as msrun does. The CLI is killed
for real in `test_the_cli_killed_at_any_moment_of_submit` (the real bootstrap fails fast
on an empty data folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.backends import local as lb
from launcher.backends import localjob
from launcher.backends.base import JobNotFoundError
from launcher.errors import LaunchError
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from tests import netguard

pytestmark = pytest.mark.integration

# The stand-in bootstrap: says "training", starts a worker in its own session (as msrun
# does, with msrun's MS_ROLE and RANK_ID), waits; exits 1 (retriable) if its worker dies.
BOOTSTRAP = """
import json, os, subprocess, sys, time
json.dump({"stage": "training"}, open(os.environ["LEO_STATUS_FILE"], "w"))
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                          start_new_session=True, env=dict(os.environ, MS_ROLE="MS_WORKER", RANK_ID="0"))
print("[node 0] training", flush=True)
sys.exit(0 if worker.wait() == 0 else 1)
"""
SUPERVISE = ("import sys; from pathlib import Path; "
             "from launcher.backends.supervisor import Supervisor; "
             "sys.exit(Supervisor(Path(sys.argv[1]), command=[sys.executable, '-c', sys.argv[2]]).run())")


def marked(name: str, state: Path) -> list:
    """Live processes carrying job `name`'s mark under the state folder `state` (found
    here with psutil, independently of the code under test)."""
    root = str(localjob.jobs_root({"XDG_STATE_HOME": str(state)}))
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if (env.get("LEO_LOCAL_JOB", "").startswith(f"{name}:")
                    and root in (env.get("LEO_LOCAL_ROOT"), str(Path(env.get("XDG_STATE_HOME", "/")) /
                                                                "leo-launch" / "jobs"))
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


class Job:
    """One stand-in local job under `tmp_path`, with outputs that must survive it."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.state = tmp_path / "state"
        self.env = {"XDG_STATE_HOME": str(self.state), "HOME": str(tmp_path)}
        self.out = tmp_path / "out"
        spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1, name=name,
                              data_url=str(tmp_path / "data"), train_url=str(self.out))
        self.path, self.token = lb.create_job_dir(spec, self.env)
        self.outputs = self.out / name / "checkpoints" / "keep.ckpt"
        self.outputs.parent.mkdir(parents=True)
        self.outputs.write_bytes(b"weights")
        self.root = localjob.jobs_root(self.env)

    def start(self, pid_file: bool = True) -> subprocess.Popen:
        """The supervisor as submit starts it (with the job's mark); `pid_file=False`: as
        if the CLI was killed before writing the pid file."""
        env = dict(os.environ, LEO_LOCAL_JOB=f"{self.name}:{self.token}",
                   LEO_LOCAL_ROOT=str(self.root), PYTHONPATH=netguard.pythonpath(os.getcwd()))
        self.supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(self.path), BOOTSTRAP],
                                           env=env, cwd=self.path, start_new_session=True,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if pid_file:
            (self.path / localjob.PID_FILE).write_text(f"{self.supervisor.pid}\n")
        self.wait(lambda: len(self.procs()) >= 3, "supervisor, bootstrap and worker")
        return self.supervisor

    def procs(self) -> list:
        return marked(self.name, self.state)

    def status(self) -> dict:
        return lb.status(self.name, environ=self.env, progress=False)

    def cancel(self) -> str:
        return lb.cancel(self.name, environ=self.env, grace=2)

    def wait(self, condition, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def assert_clean_after_cancel(self) -> str:
        said = self.cancel()
        assert self.procs() == [], said
        assert not self.path.exists()
        assert self.outputs.read_bytes() == b"weights"
        return said


@pytest.fixture
def job(tmp_path):
    made = Job(tmp_path, "leo-crash")
    yield made
    for proc in made.procs():  # never leave a process behind, whatever the test did
        try:
            proc.kill()
        except psutil.Error:
            pass
    if getattr(made, "supervisor", None) is not None:
        made.supervisor.wait(timeout=10)


def worker_of(job: Job):
    return next(p for p in job.procs() if p.environ().get("MS_ROLE") == "MS_WORKER")


def test_a_healthy_job_is_running_and_cancel_stops_everything(job):
    job.start()
    assert job.status()["phase"] == "Running"
    assert "stopped 3 process(es)" in job.assert_clean_after_cancel()


def test_supervisor_killed(job):
    sup = job.start()
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait(timeout=10)
    status = job.status()
    assert status["phase"] == "Running" and "supervisor is gone" in status["reason"]
    job.assert_clean_after_cancel()


def test_bootstrap_killed_is_restarted(job):
    job.start()
    state = json.loads((job.path / localjob.STATE_FILE).read_text())
    os.kill(state["bootstrap_pid"], signal.SIGKILL)
    job.wait(lambda: job.status()["restarts"] == 1 and len(job.procs()) >= 3, "the restart")
    assert job.status()["phase"] in ("Running", "Restarting")
    job.assert_clean_after_cancel()


def test_worker_killed_is_a_retriable_failure(job):
    job.start()
    worker_of(job).kill()
    job.wait(lambda: job.status()["restarts"] == 1, "the restart")
    job.assert_clean_after_cancel()


def test_the_cli_killed_before_writing_the_pid_file(job):
    """Case 11: the job runs, so status must not say the supervisor is gone."""
    job.start(pid_file=False)
    assert job.status()["phase"] == "Running"
    job.assert_clean_after_cancel()


def test_the_cli_killed_before_starting_the_supervisor(job):
    status = job.status()
    assert status["phase"] == "Failed" and "never started" in status["reason"]
    assert "had ended (Failed)" in job.assert_clean_after_cancel()


@pytest.mark.parametrize("damage", [
    "garbage", "missing", "wrong-types", "not-an-object", "no-token"])
def test_a_damaged_state_file_while_running(job, damage):
    """Cases 2 and 5: status says what runs, list shows it, cancel stops every process."""
    job.start()
    state_file = job.path / localjob.STATE_FILE
    if damage == "garbage":
        state_file.write_bytes(b"\x00\xff{not json")
    elif damage == "missing":
        state_file.unlink()
    elif damage == "wrong-types":
        state_file.write_text(json.dumps({"token": 5, "phase": ["x"], "restarts": "x",
                                          "created": "yesterday", "exit_code": {}}))
    elif damage == "not-an-object":
        state_file.write_text("[1, 2]")
    else:
        data = json.loads(state_file.read_text())
        del data["token"]
        state_file.write_text(json.dumps(data))
    status = job.status()
    assert status["phase"] == "Running" and "damaged" in status["reason"]
    listed = lb.list_jobs(job.env)
    assert [item["name"] for item in listed] == [job.name]
    job.supervisor.send_signal(signal.SIGSTOP)  # it must not repair the file meanwhile
    try:
        said = job.assert_clean_after_cancel()
    finally:
        job.supervisor.send_signal(signal.SIGCONT)
    assert "stopped 3 process(es)" in said


@pytest.mark.parametrize("damage", ["not-utf8", "garbage-yaml", "wrong-types", "missing"])
def test_a_damaged_job_yaml(job, damage):
    """Case 5: a damaged job shows as such in list (other jobs still list) and cancel works."""
    job.start()
    job_yaml = job.path / contract.JOB_FILE
    if damage == "not-utf8":
        job_yaml.write_bytes(b"name: \xff\xfe\n")
    elif damage == "garbage-yaml":
        job_yaml.write_text("{{{: [")
    elif damage == "wrong-types":
        job_yaml.write_text("name: 5\ncards: [1]\nexperiment: {}\n")
    else:
        job_yaml.unlink()
    with pytest.raises(LaunchError) as info:
        job.status()
    assert len(str(info.value).splitlines()) == 1
    (listed,) = lb.list_jobs(job.env)
    assert listed["name"] == job.name and listed["phase"] == "Failed"
    assert "damaged job" in listed["reason"]
    job.assert_clean_after_cancel()


@pytest.mark.parametrize("damage", ["pid-garbage", "pid-missing", "stage-garbage"])
def test_damaged_pid_and_stage_files(job, damage):
    job.start()
    if damage == "pid-garbage":
        (job.path / localjob.PID_FILE).write_text("not a pid")
    elif damage == "pid-missing":
        (job.path / localjob.PID_FILE).unlink()
    else:
        (job.path / localjob.STAGE_FILE).write_bytes(b"\xff")
    assert job.status()["phase"] in ("Running", "Pending")
    assert "gone" not in job.status().get("reason", "")
    job.assert_clean_after_cancel()


def test_state_folder_removed_while_running(job):
    """Case 2: processes with no state folder are listed and cancel stops them."""
    job.start()
    import shutil

    shutil.rmtree(job.path)
    with pytest.raises(JobNotFoundError):
        job.status()
    (listed,) = lb.list_jobs(job.env)
    assert listed["name"] == job.name and "orphaned" in listed["reason"]
    said = job.cancel()
    assert "orphaned" in said and job.procs() == []
    assert job.outputs.read_bytes() == b"weights"


def test_same_name_under_another_state_folder_is_another_job(job, tmp_path):
    job.start()
    other = {"XDG_STATE_HOME": str(tmp_path / "elsewhere")}
    assert "nothing to cancel" in lb.cancel(job.name, environ=other)
    assert lb.list_jobs(other) == []
    assert len(job.procs()) >= 3
    job.assert_clean_after_cancel()


def test_a_job_folder_that_is_a_symlink(tmp_path):
    """Case 11: cancel removes the link (never what it points to) and says so."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1, name="leo-link",
                          data_url="/data", train_url=str(tmp_path / "out"))
    real, _ = lb.create_job_dir(spec, env)
    moved = real.rename(tmp_path / "elsewhere")
    real.symlink_to(moved)
    said = lb.cancel("leo-link", environ=env)
    assert not real.is_symlink() and not real.exists(), said
    assert "the link" in said and moved.is_dir()


def test_hidden_folders_of_a_killed_submit_are_removed(tmp_path):
    """Case 11: a CLI killed while writing the state folder leaves `.NAME.TOKEN.PID`; the
    next submit or list removes it once that process is gone."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    root = localjob.jobs_root(env)
    root.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = root / f".leo-x.{'a' * 16}.{gone.pid}"
    alive = root / f".leo-y.{'b' * 16}.{os.getpid()}"
    old = root / f".leo-z.{'c' * 16}"
    for path in (dead, alive, old):
        path.mkdir()
        (path / "job.yaml").write_text("half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert lb.list_jobs(env) == []
    assert not dead.exists() and not old.exists() and alive.exists()


def test_a_relative_train_url_means_the_shell_s_folder(tmp_path, monkeypatch):
    """Case 1: relative --train-url/--data-url resolve where submit was typed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path),
           "PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd()),
           "AWS_EC2_METADATA_DISABLED": "true"}
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1, name="leo-rel",
                          data_url="data", train_url="runs")
    try:
        lb.submit(spec, environ=env, out=open(os.devnull, "w"), err=open(os.devnull, "w"))
        saved = (localjob.job_dir("leo-rel", env) / contract.JOB_FILE).read_text()
        assert f"train_url: {tmp_path / 'runs'}" in saved
        assert f"data_url: {tmp_path / 'data'}" in saved
    finally:
        said = lb.cancel("leo-rel", environ=env, grace=2)
    assert f"outputs stay in file://{tmp_path / 'runs' / 'leo-rel'}" in said


def test_cancel_keeps_outputs_inside_the_state_folder(tmp_path):
    """Case 1: a job of an older version whose relative train_url resolved inside its work
    folder: cancel stops it but never deletes those outputs."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1, name="leo-old",
                          data_url="/data", train_url="runs")
    path, _ = lb.create_job_dir(spec, env)
    ckpt = path / localjob.WORK_DIR / "runs" / "leo-old" / "result.json"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("{}")
    said = lb.cancel("leo-old", environ=env)
    assert ckpt.read_text() == "{}" and "kept" in said


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_the_cli_killed_at_any_moment_of_submit(tmp_path, delay):
    """The real CLI and bootstrap (which fails fast: empty data folder), SIGKILLed after
    `delay` s: afterwards status is an answer, cancel leaves no process, no hidden folder
    stays, the outputs are untouched."""
    (tmp_path / "data").mkdir()
    keep = tmp_path / "out" / "leo-kill" / "keep"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEO_", "KUBE"))}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), KUBECONFIG=str(tmp_path / "none"),
               PYTHONPATH=netguard.pythonpath(os.getcwd()), AWS_EC2_METADATA_DISABLED="true")
    cli = subprocess.Popen([sys.executable, "-m", "launcher", "submit", "--backend", "local",
                            "--exp", "mini_5shot", "--accel", "cpu", "--cards", "1",
                            "--name", "leo-kill", "--data-url", str(tmp_path / "data"),
                            "--train-url", str(tmp_path / "out")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    cli.kill()
    cli.wait()
    root = localjob.jobs_root(env)
    try:
        lb.status("leo-kill", environ=env, progress=False)  # an answer, not a traceback
    except JobNotFoundError:
        pass
    lb.list_jobs(env)
    lb.cancel("leo-kill", environ=env, grace=2)
    assert marked("leo-kill", tmp_path / "state") == []
    assert not root.exists() or [p.name for p in root.iterdir()] == []
    assert keep.read_text() == "mine"
