"""A local job's state directory and its processes (shared by the local backend and
its supervisor).

State, under `$XDG_STATE_HOME/leo-launch/jobs/<name>/` (default ~/.local/state/...)::

    job.yaml, experiment.yaml    the resolved job (what a pod's ConfigMap holds)
    state.json                   phase, reason, restarts, attempt, exit code, times (the
                                 supervisor writes it atomically)
    pid                          the supervisor's process id
    stage.json                   what the running bootstrap does (staging, training, ...)
    output.log                   the bootstrap's stdout: `[rank R]` / `[node 0]` lines of
                                 every attempt (what `leo-launch logs` shows)
    supervisor.log               the supervisor's own messages
    work/                        cache (staged data), out (checkpoints), logs, msrun logs

Every process of a job carries `LEO_LOCAL_JOB=<name>:<token>` in its environment.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.backends.base import JobNotFoundError
from launcher.errors import LaunchError
from launcher.k8s.config import kube_configured
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec.contract import ENV_LOCAL_JOB
from launcher.spec.names import check_job_name
from launcher.util.files import read_json_object

STATE_FILE = "state.json"
PID_FILE = "pid"
STAGE_FILE = "stage.json"
OUTPUT_LOG = "output.log"
SUPERVISOR_LOG = "supervisor.log"
WORK_DIR = "work"
CANCEL_GRACE = 15.0  # seconds for the bootstrap to publish before SIGKILL
POLL = 0.5


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_STATE_HOME/leo-launch` (default ~/.local/state/leo-launch)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "leo-launch"


def jobs_root(environ: Mapping[str, str] | None = None) -> Path:
    return state_dir(dict(environ) if environ is not None else None) / "jobs"


def job_dir(name: str, environ: Mapping[str, str] | None = None) -> Path:
    return jobs_root(environ) / check_job_name(name)


def default_train_url(environ: Mapping[str, str] | None = None) -> str:
    return str(state_dir(dict(environ) if environ is not None else None) / "outputs")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ processes of a job


def job_processes() -> dict[str, list[Any]]:
    """Live processes of all local jobs, by their mark (one scan of the process table)."""
    import psutil

    found: dict[str, list[Any]] = {}
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            mark = proc.environ().get(ENV_LOCAL_JOB)
            if mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(mark, []).append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def workers_by_rank(procs: list[Any]) -> dict[int, Any]:
    """msrun's worker processes by rank: each leads its own process group and has
    MS_ROLE=MS_WORKER and RANK_ID (the scheduler and helpers do not)."""
    import psutil

    found = {}
    for proc in procs:
        try:
            env = proc.environ()
            leader = os.getpgid(proc.pid) == proc.pid
        except (psutil.Error, OSError):
            continue
        if leader and env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID", "").isdigit():
            found[int(env["RANK_ID"])] = proc
    return found


# ------------------------------------------------------------------ a job's directory


@dataclasses.dataclass
class LocalJob:
    name: str
    path: Path

    @classmethod
    def find(cls, name: str, environ: Mapping[str, str] | None = None) -> LocalJob:
        path = job_dir(name, environ)
        if not path.is_dir():
            where = "" if kube_configured(environ) else (
                " and no Kubernetes cluster is configured (KUBECONFIG, ~/.kube/config)")
            raise JobNotFoundError(f"unknown job {name!r}: it is not under {path.parent}{where}; "
                                   "see leo-launch list")
        return cls(name, path)

    @property
    def work(self) -> Path:
        return self.path / WORK_DIR

    def state(self) -> dict[str, Any]:
        return read_json_object(self.path / STATE_FILE)

    def stage(self) -> dict[str, Any]:
        return read_json_object(self.path / STAGE_FILE)

    def spec(self) -> js.JobSpec:
        try:
            return js.JobSpec.from_yaml((self.path / contract.JOB_FILE).read_text())
        except OSError as err:
            raise LaunchError(f"cannot read {self.path / contract.JOB_FILE}: {err.strerror or err}") from err

    def mark(self, state: Mapping[str, Any] | None = None) -> str:
        state = self.state() if state is None else state
        return f"{self.name}:{state.get('token', '?')}"

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.path / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
