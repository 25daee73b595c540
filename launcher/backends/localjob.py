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

Every process of a job carries `LEO_LOCAL_JOB=<name>:<token>` in its environment, and
`LEO_LOCAL_ROOT=<jobs folder>`: jobs of the same name under another XDG_STATE_HOME are
other jobs.
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
ENV_LOCAL_ROOT = "LEO_LOCAL_ROOT"
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


def job_processes(root: Path | None = None) -> dict[str, list[Any]]:
    """Live processes of all local jobs, by their mark (one scan of the process table);
    with `root`, only those of jobs under that jobs folder."""
    import psutil

    found: dict[str, list[Any]] = {}
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
            mark = env.get(ENV_LOCAL_JOB)
            theirs = env.get(ENV_LOCAL_ROOT)
            if root is not None and theirs and theirs != str(root):
                continue
            if mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(mark, []).append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def processes_named(name: str, procs: dict[str, list[Any]] | None = None,
                    root: Path | None = None) -> list[Any]:
    """Live processes carrying the mark of any job named `name` (`<name>:<token>`) under
    `root`, whatever its state files say: a lost or garbled state.json must not hide them."""
    procs = job_processes(root) if procs is None else procs
    return [proc for mark, found in procs.items() if mark.partition(":")[0] == name
            for proc in found]


def is_supervisor(proc: Any) -> bool:
    """Whether `proc` is a job's supervisor (found before it has written its pid)."""
    import psutil

    try:
        return "launcher.backends.supervisor" in proc.cmdline()
    except (psutil.Error, OSError):
        return False


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
        """state.json with every value of the wrong type dropped ({} when it is missing or
        garbage): a damaged file must not break status, list or cancel."""
        return {key: value for key, value in read_json_object(self.path / STATE_FILE).items()
                if key not in _STATE_TYPES or _has_type(value, _STATE_TYPES[key])}

    def state_damaged(self) -> bool:
        raw = read_json_object(self.path / STATE_FILE)
        return not isinstance(raw.get("token"), str) or raw != self.state()

    def stage(self) -> dict[str, Any]:
        return read_json_object(self.path / STAGE_FILE)

    def spec(self) -> js.JobSpec:
        path = self.path / contract.JOB_FILE
        try:
            return js.JobSpec.from_yaml(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise LaunchError(f"cannot read {path}: {err.strerror or err}") from err
        except UnicodeDecodeError as err:
            raise LaunchError(f"cannot read {path}: it is not UTF-8 text (damaged)") from err
        except LaunchError as err:
            raise LaunchError(f"{path} is damaged: {err}") from err
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            raise LaunchError(f"{path} is damaged: {type(err).__name__}: {err}") from err

    def mark(self, state: Mapping[str, Any] | None = None) -> str:
        state = self.state() if state is None else state
        return f"{self.name}:{state.get('token', '?')}"

    def supervisor_pid(self) -> int | None:
        """From the pid file (the CLI and the supervisor both write it), else state.json."""
        try:
            return int((self.path / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return self.state().get("supervisor_pid")


# state.json's keys and their types (the supervisor writes it; anything else is damage)
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "token": (str,), "phase": (str,), "reason": (str, type(None)),
    "restarts": (int,), "attempt": (int,), "max_restarts": (int,),
    "created": (int, float), "started": (int, float), "updated": (int, float),
    "finished": (int, float), "exit_code": (int, type(None)), "last_exit_code": (int,),
    "supervisor_pid": (int,), "bootstrap_pid": (int,),
}


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)
