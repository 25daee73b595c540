"""Run `msrun` (and plain single-process runs) from tests and benchmarks, and clean up.

Every job gets a fresh loopback port, a log directory the caller owns (e.g. under
`tmp_path`), a short `--cluster_time_out`, a wall-clock limit, and a unique marker in its
environment (`LEO_TEST_JOB=<token>`). msrun starts its scheduler in its own process group
but each worker with `setsid` (a group of its own), so killing msrun's group is not
enough: `Job.kill()` finds every process carrying the job's marker (workers orphaned by a
dead msrun included), kills each one's process group with `os.killpg` and then the
stragglers by pid. Nothing is killed by name.

    job = start_msrun(["leo_core/train.py", ...], log_dir=tmp_path / "logs")
    try:
        result = job.wait(timeout=240)          # kills everything and raises on timeout
    finally:
        job.kill()                              # no-op when all have exited
    assert result.returncode == 0, result.describe()
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from launcher.backends.localjob import workers_by_rank
from launcher.util.procs import kill_processes

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MARKER = "LEO_TEST_JOB"
# Cluster formation in tests: 2 workers on one machine register within seconds; a
# cluster that cannot form (a port clash, a worker that died during start-up) then
# fails after this many seconds instead of msrun's default 600.
CLUSTER_TIME_OUT = 60


class JobTimeout(AssertionError):
    """A job outlived its wall-clock limit (it has been killed; the message holds its logs)."""


def free_port() -> int:
    """A loopback TCP port that is free now (the OS picks it; never hard-coded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a job: this interpreter's bin first on PATH (msrun starts
    workers with the first `python` on PATH), unbuffered output, quiet C++ logs, and no
    distributed variables inherited from the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MS_", "RANK_", "DEVICE_ID", MARKER))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GLOG_v", "2")
    env.update(extra or {})
    return env


@dataclass
class Result:
    returncode: int
    seconds: float
    output: str
    logs: dict[str, str] = field(default_factory=dict)

    def describe(self, tail: int = 40) -> str:
        """The exit code, the launcher's output and the end of every log (for assertion messages)."""
        parts = [f"exit code {self.returncode} after {self.seconds:.1f} s", _tail("output", self.output, tail)]
        parts += [_tail(name, text, tail) for name, text in sorted(self.logs.items())]
        return "\n".join(parts)


def _tail(name: str, text: str, lines: int) -> str:
    body = "\n".join(text.splitlines()[-lines:])
    return f"----- {name} (last {lines} lines) -----\n{body}"


class Job:
    """A started process tree (msrun and its scheduler and workers, or one python)."""

    def __init__(self, cmd: Sequence[str], log_dir: Path, env: Mapping[str, str], cwd: Path = ROOT):
        self.cmd = list(cmd)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.output_path = self.log_dir / "launcher.out"
        self._output = open(self.output_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env={**env, MARKER: self.token},
                                     stdout=self._output, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    # -- inspection
    def processes(self) -> list[psutil.Process]:
        """Every live process of this job: the launcher, its descendants, and anything
        else carrying the job's marker (workers whose msrun already died)."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            pass
        for proc in psutil.process_iter():
            if proc.pid in found or proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(MARKER) == self.token:
                    found[proc.pid] = proc
            except (psutil.Error, OSError):
                continue
        alive = []
        for proc in found.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                continue
        return alive

    def workers(self) -> dict[int, psutil.Process]:
        """Live msrun workers by rank (the launcher's own rule, see workers_by_rank)."""
        return workers_by_rank(self.processes())

    def output(self) -> str:
        if not self._output.closed:
            self._output.flush()
        return self.output_path.read_text(errors="replace")

    def logs(self) -> dict[str, str]:
        """`scheduler.log`, `worker_<r>.log` (msrun's) and the launcher's output."""
        return {path.name: path.read_text(errors="replace")
                for path in sorted(self.log_dir.glob("*.log"))}

    def result(self) -> Result:
        return Result(self.proc.returncode if self.proc.returncode is not None else -999,
                      time.monotonic() - self.started, self.output(), self.logs())

    # -- control
    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> Result:
        """Wait for the launcher to exit; on timeout kill the whole job and raise JobTimeout."""
        try:
            self.proc.wait(timeout=max(timeout - (time.monotonic() - self.started), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise JobTimeout(f"{' '.join(self.cmd[:3])} ... did not finish within {timeout:.0f} s; killed\n"
                             + self.result().describe()) from None
        return self.result()

    def wait_for_log(self, name: str, text: str, timeout: float) -> None:
        """Wait until log file `name` contains `text` (raises if the job ends first)."""
        deadline = time.monotonic() + timeout
        path = self.output_path if name == "launcher.out" else self.log_dir / name
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            if self.poll() is not None:
                raise AssertionError(f"job ended before {name} said {text!r}\n" + self.result().describe())
            time.sleep(0.5)
        raise JobTimeout(f"{name} did not say {text!r} within {timeout:.0f} s\n" + self.result().describe())

    def kill(self) -> None:
        """SIGKILL every process group of the job, then any straggler by pid; reap msrun."""
        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            kill_processes(procs)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._output.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def msrun_command(script_args: Sequence[str], *, workers: int = 2, local_workers: int | None = None,
                  port: int, log_dir: Path, cluster_time_out: int = CLUSTER_TIME_OUT,
                  node_rank: int | None = None, master_addr: str = "127.0.0.1") -> list[str]:
    cmd = [str(VENV_BIN / "msrun"), "--worker_num", str(workers),
           "--local_worker_num", str(workers if local_workers is None else local_workers),
           "--master_addr", master_addr, "--master_port", str(port), "--log_dir", str(log_dir),
           "--join", "True", "--cluster_time_out", str(cluster_time_out)]
    if node_rank is not None:
        cmd += ["--node_rank", str(node_rank)]
    return cmd + list(script_args)


def start_msrun(script_args: Sequence[str], *, log_dir: Path, workers: int = 2,
                local_workers: int | None = None, env: Mapping[str, str] | None = None,
                port: int | None = None, cluster_time_out: int = CLUSTER_TIME_OUT,
                node_rank: int | None = None) -> Job:
    """Start `msrun ... --join True <script_args>` in a new session (returns at once)."""
    cmd = msrun_command(script_args, workers=workers, local_workers=local_workers,
                        port=port or free_port(), log_dir=Path(log_dir),
                        cluster_time_out=cluster_time_out, node_rank=node_rank)
    return Job(cmd, log_dir, job_env(env))


def run_msrun(script_args: Sequence[str], *, log_dir: Path, timeout: float, **kwargs) -> Result:
    """Run msrun to the end (bounded by `timeout`), always leaving no process behind."""
    job = start_msrun(script_args, log_dir=log_dir, **kwargs)
    try:
        return job.wait(timeout)
    finally:
        job.kill()


def start_python(args: Sequence[str], *, log_dir: Path, env: Mapping[str, str] | None = None) -> Job:
    """Start `python <args>` (this interpreter) in a new session."""
    return Job([sys.executable, *args], log_dir, job_env(env))


def run_python(args: Sequence[str], *, log_dir: Path, timeout: float,
               env: Mapping[str, str] | None = None) -> Result:
    job = start_python(args, log_dir=log_dir, env=env)
    try:
        return job.wait(timeout)
    finally:
        job.kill()
