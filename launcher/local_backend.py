"""The local backend: a job's bootstrap as detached processes on this machine.

`submit --backend local` (and `--backend auto` with no cluster configured) writes the
job's state directory and starts a *supervisor* in a session of its own, so the job
survives the CLI (and its terminal) exiting. The supervisor plays the Job controller: it
runs `python -m launcher.bootstrap` (the pods' entrypoint, the very same code path) with
the directory as its config dir, and when the bootstrap fails with a retriable exit code
it starts it again, at most `--max-restarts` times; the bootstrap resumes from the latest
checkpoint. Cards are CPU worker processes under msrun on 127.0.0.1.

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

Every process of a job carries `LEO_LOCAL_JOB=<name>:<token>` in its environment. msrun
starts each worker in a session of its own, so `cancel` finds the processes by that mark
(not by name, not only by process group), stops them (SIGTERM, then SIGKILL after a
grace period), checks that none is left and removes the state directory. Outputs stay
under the job's train_url (default `$XDG_STATE_HOME/leo-launch/outputs/<name>`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from launcher import jobspec as js
from launcher.errors import LaunchError, UsageError
from launcher.jobs import (
    FINAL_PHASES,
    JobExistsError,
    JobNotFoundError,
    age,
    check_name,
    job_url_of,
    last_lines,
    rank_filter,
    read_progress,
)

ENV_LOCAL_JOB = "LEO_LOCAL_JOB"
STATE_FILE = "state.json"
PID_FILE = "pid"
STAGE_FILE = "stage.json"
OUTPUT_LOG = "output.log"
SUPERVISOR_LOG = "supervisor.log"
WORK_DIR = "work"
CANCEL_GRACE = 15.0  # seconds for the bootstrap to publish before SIGKILL
POLL = 0.5


def jobs_root(environ: Mapping[str, str] | None = None) -> Path:
    from launcher.publish import state_dir

    return state_dir(dict(environ) if environ is not None else None) / "jobs"


def job_dir(name: str, environ: Mapping[str, str] | None = None) -> Path:
    return jobs_root(environ) / check_name(name)


def default_train_url(environ: Mapping[str, str] | None = None) -> str:
    from launcher.publish import state_dir

    return str(state_dir(dict(environ) if environ is not None else None) / "outputs")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
            raise JobNotFoundError(f"no local job {name!r} (under {path.parent}); "
                                   "see leo-launch list")
        return cls(name, path)

    @property
    def work(self) -> Path:
        return self.path / WORK_DIR

    def state(self) -> dict[str, Any]:
        return _read_json(self.path / STATE_FILE)

    def stage(self) -> dict[str, Any]:
        return _read_json(self.path / STAGE_FILE)

    def spec(self) -> js.JobSpec:
        try:
            return js.JobSpec.from_yaml((self.path / js.JOB_FILE).read_text())
        except OSError as err:
            raise LaunchError(f"cannot read {self.path / js.JOB_FILE}: {err.strerror or err}") from None

    def mark(self, state: Mapping[str, Any] | None = None) -> str:
        state = self.state() if state is None else state
        return f"{self.name}:{state.get('token', '?')}"

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.path / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None


# ------------------------------------------------------------------ submit


def submit(spec: js.JobSpec, *, wait: bool = False, follow: bool = False,
           environ: Mapping[str, str] | None = None, out: TextIO | None = None,
           err: TextIO | None = None) -> int:
    """Start `spec` on this machine, detached; with `follow` stream its logs until it ends
    (exit code 0 when it succeeded, else 1), with `wait` return once it trains."""
    env = dict(os.environ if environ is None else environ)
    out, err = out or sys.stdout, err or sys.stderr
    if spec.accelerator != "cpu":
        raise UsageError(f"the local backend runs CPU worker processes: use --accel cpu "
                         f"(--accel {spec.accelerator} jobs go to Kubernetes with --backend k8s)")
    if spec.nodes != 1:
        raise UsageError(f"the local backend runs one node, not {spec.nodes}: use --nodes 1")
    if spec.data_url is None:
        raise UsageError("submit needs --data-url: the embeddings (s3://, obs://, file:// or a path)")
    if spec.train_url is None:
        spec = dataclasses.replace(spec, train_url=default_train_url(env))
        err.write(f"leo-launch: outputs go to {spec.train_url}/{spec.name} (no --train-url)\n")
    final, token = create_job_dir(spec, env)
    child_env = dict(env)
    child_env[ENV_LOCAL_JOB] = f"{spec.name}:{token}"
    child_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(final / SUPERVISOR_LOG, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "launcher.local_backend", str(final)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env, cwd=final, start_new_session=True, close_fds=True)
    (final / PID_FILE).write_text(f"{proc.pid}\n")
    out.write(f"job {spec.name} started on this machine ({spec.cards} CPU worker process(es), "
              f"supervisor pid {proc.pid}); follow it with: leo-launch logs {spec.name} -f\n")
    out.flush()
    if follow:
        logs(spec.name, follow=True, all_ranks=True, environ=env, out=out)
        return 0 if wait_for(spec.name, FINAL_PHASES, environ=env)["phase"] == "Succeeded" else 1
    if wait:
        status = wait_for(spec.name, FINAL_PHASES, environ=env, all_running=True)
        out.write(f"job {spec.name}: {status['phase']}"
                  + (f" ({status['reason']})" if status.get("reason") else "") + "\n")
        return 1 if status["phase"] == "Failed" else 0
    return 0


def create_job_dir(spec: js.JobSpec, environ: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """Write the job's state directory (atomically: a duplicate name is refused) and
    return it with the job's process-mark token."""
    env = dict(os.environ if environ is None else environ)
    root = jobs_root(env)
    final = root / spec.name
    if final.exists():
        raise JobExistsError(_exists_message(LocalJob(spec.name, final), env))
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:16]
    tmp = root / f".{spec.name}.{token}"
    tmp.mkdir()
    try:
        import yaml

        (tmp / js.JOB_FILE).write_text(spec.to_yaml())
        (tmp / js.EXPERIMENT_FILE).write_text(yaml.safe_dump(spec.experiment_config().to_dict(),
                                                             sort_keys=False))
        (tmp / WORK_DIR).mkdir()
        _write_json(tmp / STATE_FILE, {"name": spec.name, "token": token, "phase": "Pending",
                                       "reason": "starting", "restarts": 0, "attempt": 0,
                                       "max_restarts": spec.max_restarts, "created": time.time()})
        try:
            os.rename(tmp, final)
        except OSError:
            raise JobExistsError(_exists_message(LocalJob(spec.name, final), env)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, token


def _exists_message(job: LocalJob, environ: Mapping[str, str] | None = None) -> str:
    try:
        phase = status(job.name, environ=environ, progress=False)["phase"] if job.path.is_dir() else "unknown"
    except (LaunchError, UsageError):
        phase = "unreadable"
    return (f"a local job named {job.name!r} exists already ({phase}); choose another --name, "
            f"or remove it with: leo-launch cancel {job.name}")


def wait_for(name: str, phases: tuple[str, ...], *, environ: Mapping[str, str] | None = None,
             timeout: float | None = None, all_running: bool = False) -> dict[str, Any]:
    """Poll until the phase is one of `phases` (or, with `all_running`, every rank's
    process runs)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = status(name, environ=environ, progress=False)
        if current["phase"] in phases:
            return current
        if all_running and current["phase"] == "Running" and all(
                r.get("phase") == "Running" for r in current["ranks"]):
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"job {name} is still {current['phase']} after {timeout:.0f} s")
        time.sleep(POLL)


# ------------------------------------------------------------------ the supervisor


class Supervisor:
    """Runs the bootstrap until it succeeds, fails for good or is cancelled."""

    BOOTSTRAP = ("-m", "launcher.bootstrap")

    def __init__(self, path: Path, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, *self.BOOTSTRAP]
        self.job = LocalJob(path.name, path)
        self.state = self.job.state()
        self.cancelled = False
        self.current: subprocess.Popen | None = None

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["updated"] = time.time()
        _write_json(self.job.path / STATE_FILE, self.state)

    def log(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    def on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.cancelled = True
        proc = self.current
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the bootstrap leads its own session
            except OSError:
                pass

    def run(self) -> int:
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.on_signal) for sig in signals}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        from launcher.bootstrap import ENV_STATUS_FILE, ENV_WORK_DIR, kill_marked

        spec = self.job.spec()
        mark = self.job.mark(self.state)
        work = self.job.work
        attempts = spec.max_restarts + 1
        self.save(supervisor_pid=os.getpid(), started=time.time())
        code = 1
        for attempt in range(attempts):
            if self.cancelled:
                break
            (self.job.path / STAGE_FILE).unlink(missing_ok=True)
            if attempt:
                self.save(phase="Restarting", attempt=attempt)
            else:
                self.save(phase="Pending", reason="starting the bootstrap", attempt=attempt)
            env = dict(os.environ)
            env.update({js.ENV_CONFIG_DIR: str(self.job.path), js.ENV_NODE_RANK: "0",
                        js.ENV_MASTER_ADDR: "127.0.0.1", js.ENV_MASTER_PORT: str(free_port()),
                        js.ENV_CACHE_DIR: str(work / "cache"), ENV_WORK_DIR: str(work),
                        ENV_STATUS_FILE: str(self.job.path / STAGE_FILE),
                        "LEO_ATTEMPT": str(attempt)})
            self.log(f"attempt {attempt + 1} of {attempts}: starting the bootstrap")
            with open(self.job.path / OUTPUT_LOG, "ab") as output:
                output.write(f"[node 0] attempt {attempt + 1} of {attempts} "
                             f"({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
                output.flush()
                self.current = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL,
                    stdout=output, stderr=subprocess.STDOUT, env=env, cwd=work,
                    start_new_session=True)
            self.save(bootstrap_pid=self.current.pid)
            if self.cancelled:  # a signal between the check and the start
                self.on_signal(signal.SIGTERM, None)
            code = self.current.wait()
            self.log(f"attempt {attempt + 1}: the bootstrap exited with {code}")
            kill_marked(ENV_LOCAL_JOB, mark, exclude={os.getpid()})  # nothing of it may linger
            if self.cancelled:
                break
            if code == 0:
                self.save(phase="Succeeded", reason=None, exit_code=0, finished=time.time())
                return 0
            if code == js.EXIT_BAD_CONFIG:
                self.save(phase="Failed", exit_code=code, finished=time.time(),
                          reason="bad configuration (exit code 2, not retried): see leo-launch logs")
                return code
            if attempt + 1 == attempts:
                self.save(phase="Failed", exit_code=code, finished=time.time(),
                          reason=f"failed {attempts} time(s) (--max-restarts {spec.max_restarts}); "
                                 f"last exit code {code}")
                return code
            self.save(restarts=self.state.get("restarts", 0) + 1, last_exit_code=code,
                      reason=f"attempt {attempt + 1} failed with exit code {code}; resuming from "
                             "the latest checkpoint")
        self.save(phase="Failed", reason="cancelled", exit_code=code, finished=time.time())
        return code


def supervise(path: str | Path) -> int:
    return Supervisor(Path(path)).run()


# ------------------------------------------------------------------ status, list, logs, cancel


def status(name: str, *, environ: Mapping[str, str] | None = None, progress: bool = True,
           procs: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    job = LocalJob.find(name, environ)
    spec = job.spec()
    state = job.state()
    mark = job.mark(state)
    mine = (job_processes() if procs is None else procs).get(mark, [])
    pid = job.supervisor_pid()
    supervisor_alive = any(p.pid == pid for p in mine)
    phase = state.get("phase", "Pending")
    reason = state.get("reason")
    stage = job.stage()
    workers = workers_by_rank(mine)
    if phase not in FINAL_PHASES:
        doing = stage.get("stage")
        if not supervisor_alive:
            phase, reason = "Failed", "the job's supervisor process is gone (killed, or the machine restarted)"
        elif (doing == "training" and workers) or doing in ("evaluating", "done"):
            phase = "Running"
            reason = "evaluating the best checkpoint on meta-test" if doing == "evaluating" else None
        elif doing:
            what = "starting the training processes" if doing == "training" else doing
            reason = (f"{state['reason']}; now {what}" if phase == "Restarting" and state.get("reason")
                      else what)
    now = time.time()
    host = socket.gethostname()
    ranks = []
    for rank in range(spec.world_size):
        proc = workers.get(rank)
        entry: dict[str, Any] = {"rank": rank, "node_rank": 0, "pid": None, "node": host,
                                 "restarts": state.get("restarts", 0)}
        if proc is not None:
            try:
                started = proc.create_time()
            except Exception:  # noqa: BLE001 - just exited
                started = None
            entry.update(pid=proc.pid, phase="Running",
                         age_seconds=None if started is None else round(now - started, 1),
                         age=age(None if started is None else now - started))
        elif phase in FINAL_PHASES:
            entry["phase"] = phase
        elif phase == "Running":
            entry["phase"] = "Succeeded" if stage.get("stage") in ("evaluating", "done") else "Pending"
        else:
            entry["phase"] = "Pending"
        ranks.append(entry)
    created = state.get("created")
    result: dict[str, Any] = {
        "name": spec.name, "backend": "local", "phase": phase,
        "experiment": spec.experiment, "accelerator": spec.accelerator, "cards": spec.cards,
        "nodes": spec.nodes, "restarts": state.get("restarts", 0), "max_restarts": spec.max_restarts,
        "age_seconds": None if created is None else round(now - created, 1),
        "age": age(None if created is None else now - created),
        "outputs_url": job_url_of(spec.train_url, spec.name), "state_dir": str(job.path),
        "ranks": ranks,
    }
    if reason:
        result["reason"] = reason
    if state.get("exit_code") is not None:
        result["exit_code"] = state["exit_code"]
    if progress:
        result.update(read_progress(result["outputs_url"], endpoint=spec.storage_endpoint,
                                    local_out=job.work / "out"))
    return result


def list_jobs(environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    root = jobs_root(environ)
    if not root.is_dir():
        return []
    procs = job_processes()
    items = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not (path / js.JOB_FILE).is_file():
            continue
        try:
            items.append(status(path.name, environ=environ, procs=procs))
        except (LaunchError, UsageError) as err:
            items.append({"name": path.name, "backend": "local", "phase": "Failed",
                          "reason": f"unreadable state: {err}", "ranks": []})
    return items


def logs(name: str, *, follow: bool = False, rank: int | None = None, all_ranks: bool = False,
         tail: int | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None) -> int:
    """Print the job's output (rank `rank`'s lines and node 0's, or all with `all_ranks`);
    with `follow` keep printing until the job has ended."""
    out = out or sys.stdout
    job = LocalJob.find(name, environ)
    spec = job.spec()
    if rank is not None and rank >= spec.world_size:
        raise UsageError(f"--rank {rank}: job {name} has ranks 0..{spec.world_size - 1}")
    keep = rank_filter(None if all_ranks else (rank or 0), 0)
    path = job.path / OUTPUT_LOG
    offset, partial = 0, b""

    def read() -> list[str]:
        nonlocal offset, partial
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        offset += len(data)
        pieces = (partial + data).split(b"\n")
        partial = pieces.pop()
        return [p.decode("utf-8", errors="replace") for p in pieces]

    for line in last_lines((line for line in read() if keep(line)), tail):
        out.write(line + "\n")
    out.flush()
    if not follow:
        return 0
    while True:
        ended = status(name, environ=environ, progress=False)["phase"] in FINAL_PHASES
        lines = [line for line in read() if keep(line)]
        for line in lines:
            out.write(line + "\n")
        out.flush()
        if ended and not lines:
            if partial and keep(partial.decode("utf-8", errors="replace")):
                out.write(partial.decode("utf-8", errors="replace") + "\n")
            return 0
        time.sleep(POLL)


def cancel(name: str, *, environ: Mapping[str, str] | None = None,
           grace: float = CANCEL_GRACE) -> str:
    """Stop every process of the job (SIGTERM, SIGKILL after `grace` s), check that none
    is left, remove its state directory. Idempotent."""
    from launcher.bootstrap import kill_marked, kill_processes

    path = job_dir(name, environ)
    if not path.is_dir():
        return f"no local job {name!r}: nothing to cancel"
    job = LocalJob(name, path)
    mark = job.mark()
    try:
        phase = status(name, environ=environ, progress=False)["phase"]
    except (LaunchError, UsageError):
        phase = "unreadable"
    procs = job_processes().get(mark, [])
    count = len(procs)
    if procs:
        kill_processes(procs, grace=grace)
    count += kill_marked(ENV_LOCAL_JOB, mark)
    left = job_processes().get(mark, [])
    if left:
        raise LaunchError(f"could not stop {len(left)} process(es) of job {name}: "
                          f"{', '.join(str(p.pid) for p in left)}")
    outputs = job_url_of(_train_url(job), name)
    shutil.rmtree(path, ignore_errors=True)
    if phase in FINAL_PHASES and not count:
        text = f"job {name} had ended ({phase}): removed {path}"
    else:
        text = f"job {name} cancelled: stopped {count} process(es), removed {path}"
    if outputs:
        text += f"; its outputs stay in {outputs}"
    return text


def _train_url(job: LocalJob) -> str | None:
    try:
        return job.spec().train_url
    except (LaunchError, UsageError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m launcher.local_backend JOB_DIR (started by leo-launch submit)",
              file=sys.stderr)
        return 2
    return supervise(args[0])


if __name__ == "__main__":
    sys.exit(main())
