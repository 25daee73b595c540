"""The local backend: a job's bootstrap as detached processes on this machine.

`submit --backend local` (and `--backend auto` with no cluster configured) writes the
job's state directory (launcher.backends.localjob) and starts a *supervisor*
(launcher.backends.supervisor) in a session of its own, so the job survives the CLI (and
its terminal) exiting; it reruns the bootstrap after a retriable failure, at most
`--max-restarts` times. Cards are CPU worker processes under msrun on 127.0.0.1.

Every process of a job carries `LEO_LOCAL_JOB=<name>:<token>` in its environment. msrun
starts each worker in a session of its own, so `cancel` finds the processes by that mark
(not by name, not only by process group), stops them (SIGTERM, then SIGKILL after a
grace period), checks that none is left and removes the state directory. Outputs stay
under the job's train_url (default `$XDG_STATE_HOME/leo-launch/outputs/<name>`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from launcher.backends.base import (
    FINAL_PHASES,
    PHASES,
    JobExistsError,
    JobNotFoundError,
    JobOutputs,
    JobStatus,
)
from launcher.backends.localjob import (
    CANCEL_GRACE,
    ENV_LOCAL_ROOT,
    OUTPUT_LOG,
    PID_FILE,
    POLL,
    STATE_FILE,
    SUPERVISOR_LOG,
    WORK_DIR,
    LocalJob,
    default_train_url,
    is_supervisor,
    job_dir,
    job_processes,
    jobs_root,
    processes_named,
    workers_by_rank,
)
from launcher.errors import LaunchError, UsageError
from launcher.outputs.layout import job_url_of
from launcher.outputs.logs import last_lines, rank_filter
from launcher.outputs.metrics import read_progress
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec.contract import ENV_LOCAL_JOB
from launcher.storage.base import StorageSettings
from launcher.util.files import atomic_write, write_json
from launcher.util.procs import kill_processes
from launcher.util.times import age
from launcher.util.userfile import load_yaml

# ------------------------------------------------------------------ submit


@dataclasses.dataclass(frozen=True)
class LocalPlan:
    """What `submit --backend local` will do (`Plan`, launcher.backends.base): the state
    folder it creates, the supervisor's command line in that folder, the variables it adds
    to this environment (the rest is inherited, not shown) and the resolved paths."""

    spec: js.JobSpec
    state_dir: Path
    command: list[str]
    environment: dict[str, str]
    token: str
    notes: list[str] = dataclasses.field(default_factory=list)
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "local", "job": self.spec.name, "state_dir": str(self.state_dir),
                "command": list(self.command), "cwd": str(self.state_dir),
                "environment": dict(self.environment),
                "paths": {"data_url": self.spec.data_url, "train_url": self.spec.train_url,
                          "outputs": job_url_of(self.spec.train_url, self.spec.name),
                          "job_file": str(self.state_dir / contract.JOB_FILE),
                          "work_dir": str(self.state_dir / WORK_DIR),
                          "supervisor_log": str(self.state_dir / SUPERVISOR_LOG),
                          "output_log": str(self.state_dir / OUTPUT_LOG)},
                "processes": f"{self.spec.cards} CPU worker process(es) under msrun on 127.0.0.1, "
                             f"restarted at most {self.spec.max_restarts} time(s)"}

    def text(self) -> str:
        import yaml

        return "---\n" + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def write_dir(self, directory: str) -> list[Any]:
        raise UsageError(f"--out-dir {directory}: the local backend's plan is printed, not written "
                         "(--out-dir writes Kubernetes manifests)")

    def documents(self) -> list[dict[str, Any]]:
        return [self.to_dict()]

    def names(self) -> list[str]:
        return [f"job/{self.spec.name}"]


def plan(spec: js.JobSpec, *, environ: Mapping[str, str] | None = None) -> LocalPlan:
    """What starting `spec` on this machine would do; UsageError when it cannot run here."""
    env = dict(os.environ if environ is None else environ)
    if spec.accelerator != "cpu":
        raise UsageError(f"the local backend runs CPU worker processes: use --accel cpu "
                         f"(--accel {spec.accelerator} jobs go to Kubernetes with --backend k8s)")
    if spec.nodes != 1:
        raise UsageError(f"the local backend runs one node, not {spec.nodes}: use --nodes 1")
    if spec.data_url is None:
        raise UsageError("submit needs --data-url: the embeddings (s3://, obs://, file:// or a path)")
    notes = []
    if spec.train_url is None:
        spec = dataclasses.replace(spec, train_url=default_train_url(env))
        notes.append(f"outputs go to {spec.train_url}/{spec.name} (no --train-url)")
    # A relative path means what it means in the shell where submit was typed, not in the
    # job's work folder (where cancel would delete it).
    spec = dataclasses.replace(spec, data_url=absolute_url(spec.data_url),
                               train_url=absolute_url(spec.train_url))
    _refuse_urls_in_state_folder(spec, env)
    spec.check_reachable(env)  # the workers inherit this environment
    token = uuid.uuid4().hex[:16]
    state_dir = jobs_root(env) / spec.name
    added = {ENV_LOCAL_JOB: f"{spec.name}:{token}", ENV_LOCAL_ROOT: str(jobs_root(env)),
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    if "PYTHONUNBUFFERED" not in env:
        added["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "launcher.backends.supervisor", str(state_dir)]
    return LocalPlan(spec, state_dir, command, added, token, notes, env)


def start(planned: LocalPlan, *, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Carry out `planned`: create its state folder, start its supervisor, detached."""
    out, err = out or sys.stdout, err or sys.stderr
    spec = planned.spec
    for note in planned.notes:
        err.write(f"leo-launch: {note}\n")
    final, _ = create_job_dir(spec, planned.environ, token=planned.token)
    child_env = {**planned.environ, **planned.environment}
    with open(final / SUPERVISOR_LOG, "ab") as log:
        proc = subprocess.Popen(planned.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env, cwd=final, start_new_session=True, close_fds=True)
    atomic_write(final / PID_FILE, f"{proc.pid}\n")
    out.write(f"job {spec.name} started on this machine ({spec.cards} CPU worker process(es), "
              f"supervisor pid {proc.pid}); follow it with: leo-launch logs {spec.name} -f\n")
    out.flush()


def submit(spec: js.JobSpec, *, environ: Mapping[str, str] | None = None,
           out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Start `spec` on this machine, detached."""
    start(plan(spec, environ=environ), out=out, err=err)


def absolute_url(url: str | None) -> str | None:
    """A plain relative path made absolute against the current directory; URLs as given."""
    if url is None or "://" in url or os.path.isabs(os.path.expanduser(url)):
        return url
    return os.path.abspath(url)


def _local_dir(url: str | None) -> str | None:
    """The local folder of a plain path or file:// URL, None for remote URLs."""
    if not url or ("://" in url and not url.startswith("file://")):
        return None
    return url[len("file://"):] if url.startswith("file://") else url


def _inside(path: str, folder: str | Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def _refuse_urls_in_state_folder(spec: js.JobSpec, env: Mapping[str, str]) -> None:
    # `cancel` removes a job's state folder: outputs or data inside it would go with it.
    root = jobs_root(env)
    for flag, url in (("--train-url", spec.train_url), ("--data-url", spec.data_url)):
        local = _local_dir(url)
        if local and _inside(local, root):
            raise UsageError(f"{flag} {url} lies inside the launcher's state folder {root} "
                             "(cancel removes job folders there): choose a folder outside it")


def create_job_dir(spec: js.JobSpec, environ: Mapping[str, str] | None = None, *,
                   token: str | None = None) -> tuple[Path, str]:
    """Write the job's state directory (atomically: a duplicate name is refused) and
    return it with the job's process-mark token (a new one unless given)."""
    env = dict(os.environ if environ is None else environ)
    root = jobs_root(env)
    final = root / spec.name
    if final.exists():
        raise JobExistsError(_exists_message(LocalJob(spec.name, final), env))
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    token = token or uuid.uuid4().hex[:16]
    # the creator's pid in the name: a CLI killed mid-way leaves a folder the next one removes
    tmp = root / f".{spec.name}.{token}.{os.getpid()}"
    tmp.mkdir()
    try:
        import yaml

        (tmp / contract.JOB_FILE).write_text(spec.to_yaml())
        (tmp / contract.EXPERIMENT_FILE).write_text(yaml.safe_dump(spec.experiment_config().to_dict(),
                                                             sort_keys=False))
        (tmp / WORK_DIR).mkdir()
        write_json(tmp / STATE_FILE, {"name": spec.name, "token": token, "phase": "Pending",
                                       "reason": "starting", "restarts": 0, "attempt": 0,
                                       "max_restarts": spec.max_restarts, "created": time.time()})
        try:
            os.rename(tmp, final)
        except OSError as err:
            raise JobExistsError(_exists_message(LocalJob(spec.name, final), env)) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, token


_HIDDEN = re.compile(r"\.[a-z0-9-]+\.[0-9a-f]{16}(?:\.([0-9]+))?")


def remove_abandoned(root: Path) -> None:
    """Remove the hidden half-written job folders of submits that were killed (their
    process is gone; folders of the old name form once they are an hour old)."""
    import psutil

    for path in root.glob(".*"):
        found = _HIDDEN.fullmatch(path.name)
        if not found or path.is_symlink() or not path.is_dir():
            continue
        pid = found.group(1)
        try:
            abandoned = (not psutil.pid_exists(int(pid)) if pid
                         else time.time() - path.stat().st_mtime > 3600)
        except OSError:
            continue
        if abandoned:
            shutil.rmtree(path, ignore_errors=True)


def _exists_message(job: LocalJob, environ: Mapping[str, str] | None = None) -> str:
    try:
        phase = status(job.name, environ=environ, progress=False)["phase"] if job.path.is_dir() else "unknown"
    except (LaunchError, UsageError):
        phase = "unreadable"
    return (f"a local job named {job.name!r} exists already ({phase}); choose another --name, "
            f"or remove it with: leo-launch cancel {job.name}")


# ------------------------------------------------------------------ status, list, logs, cancel


def status(name: str, *, environ: Mapping[str, str] | None = None, progress: bool = True,
           procs: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    job = LocalJob.find(name, environ)
    spec = job.spec()
    state = job.state()
    # every process carrying the job's name, whatever state.json says (it may be damaged)
    mine = processes_named(name, procs, jobs_root(environ))
    pid = job.supervisor_pid()
    supervisor_alive = any(p.pid == pid or is_supervisor(p) for p in mine)
    phase = state.get("phase") if state.get("phase") in PHASES else "Pending"
    reason = state.get("reason")
    stage = job.stage()
    workers = workers_by_rank(mine)
    lingering = [p for p in mine if p.pid != pid and not is_supervisor(p)]
    if phase in FINAL_PHASES and lingering:
        phase, reason = "Running", (f"ended ({phase}) but {len(lingering)} of its process(es) "
                                    f"still run; leo-launch cancel {name} stops them")
    elif phase not in FINAL_PHASES:
        doing = stage.get("stage")
        if not supervisor_alive and mine:
            phase, reason = "Running", (f"its supervisor is gone but {len(mine)} of its process(es) "
                                        f"still run (no restarts); leo-launch cancel {name} stops them")
        elif not supervisor_alive:
            phase, reason = "Failed", ("the job's supervisor process is gone or never started "
                                       "(killed, or the machine restarted)")
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
    if job.state_damaged():
        reason = f"{reason}; " if reason else ""
        reason += f"{job.path / STATE_FILE} is damaged (phase read from the processes)"
    if reason:
        result["reason"] = reason
    if state.get("exit_code") is not None:
        result["exit_code"] = state["exit_code"]
    if progress:
        result.update(read_progress(result["outputs_url"], storage=spec.storage,
                                    local_out=job.work / "out"))
    return result


def list_jobs(environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    root = jobs_root(environ)
    if not root.is_dir():
        return []
    remove_abandoned(root)
    procs = job_processes(root)
    items = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            items.append(status(path.name, environ=environ, procs=procs))
        except (LaunchError, UsageError) as err:  # a damaged job shows as such, others still list
            items.append({"name": path.name, "backend": "local", "phase": "Failed",
                          "reason": f"damaged job (leo-launch cancel {path.name} removes it): {err}",
                          "state_dir": str(path), "ranks": []})
    listed = {item["name"] for item in items}
    for mark in sorted(procs):
        name = mark.partition(":")[0]
        if name not in listed:  # processes whose state folder is gone
            listed.add(name)
            items.append({"name": name, "backend": "local", "phase": "Running",
                          "reason": f"orphaned: {len(processes_named(name, procs))} process(es) but no "
                                    f"state folder; leo-launch cancel {name} stops them",
                          "ranks": []})
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
    """Stop every process carrying the job's name in its mark (SIGTERM, SIGKILL after
    `grace` s) whatever its state files say, check that none is left, remove its state
    directory (never its outputs). Idempotent."""
    path = job_dir(name, environ)
    exists = path.is_dir() or path.is_symlink()
    job = LocalJob(name, path)
    phase = "unreadable"
    if path.is_dir():
        try:
            phase = status(name, environ=environ, progress=False)["phase"]
        except (LaunchError, UsageError):
            pass
    count = _stop(name, grace, path.parent)
    if not exists:
        if count:
            return f"job {name} had no state folder: stopped {count} orphaned process(es)"
        return f"no local job {name!r}: nothing to cancel"
    train_url = _train_url(job) if path.is_dir() else None
    outputs = job_url_of(train_url, name)
    inside = _outputs_inside(name, path) if path.is_dir() and not path.is_symlink() else None
    if inside:
        return (f"job {name}: stopped {count} process(es); kept {path}: its outputs are inside "
                f"it ({inside}); copy them out, then remove the folder")
    if path.is_symlink():
        target = os.path.realpath(path)
        path.unlink()
        removed = f"the link {path} (its target {target} is left as it is)"
    else:
        shutil.rmtree(path, ignore_errors=True)
        removed = str(path)
    if path.exists() or path.is_symlink():
        raise LaunchError(f"stopped job {name} but could not remove {path}: remove it by hand")
    if phase in FINAL_PHASES and not count:
        text = f"job {name} had ended ({phase}): removed {removed}"
    else:
        text = f"job {name} cancelled: stopped {count} process(es), removed {removed}"
    if outputs:
        text += f"; its outputs stay in {outputs}"
    return text


def _stop(name: str, grace: float, root: Path) -> int:
    """Stop every process marked with the job's name, repeating until none is left."""
    count = 0
    for _ in range(5):
        procs = processes_named(name, root=root)
        if not procs:
            return count
        count += len(procs)
        kill_processes(procs, grace=grace)
        grace = 0.0
    left = processes_named(name, root=root)
    if left:
        raise LaunchError(f"could not stop {len(left)} process(es) of job {name}: "
                          f"{', '.join(str(p.pid) for p in left)}")
    return count


def _local_path_inside(train_url: str | None, name: str, folder: Path) -> str | None:
    """The job's local outputs folder when it lies inside `folder` (jobs of older versions
    resolved a relative --train-url against their work folder), else None."""
    local = _local_dir(train_url)
    if not local:
        return None
    local = os.path.join(folder / WORK_DIR, local, name)  # as the bootstrap resolved it
    return local if _inside(local, folder) and os.path.exists(local) else None


def _outputs_inside(name: str, folder: Path) -> str | None:
    """A job's published outputs inside `folder`: this job's (see _local_path_inside) or
    another job's whose --train-url points into it (submit refuses that now; older jobs)."""
    inside = _local_path_inside(_train_url(LocalJob(name, folder)), name, folder)
    if inside:
        return inside
    for other in sorted(folder.parent.iterdir()):
        if other.name == name or other.name.startswith(".") or not other.is_dir():
            continue
        local = _local_dir(_train_url(LocalJob(other.name, other)))
        outputs = os.path.join(local, other.name) if local and os.path.isabs(local) else None
        if outputs and os.path.exists(outputs) and _inside(outputs, folder):
            return outputs
    return None


def _train_url(job: LocalJob) -> str | None:
    try:
        return job.spec().train_url
    except (LaunchError, UsageError):
        return None


class LocalBackend:
    """`Backend` on this machine (see launcher.backends.base)."""

    name = "local"
    describe = "local"
    poll = POLL
    runs_pods = False

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    def plan(self, spec: js.JobSpec, *, preflight: bool = True) -> LocalPlan:  # noqa: ARG002 - no cluster
        return plan(spec, environ=self.environ)

    def submit(self, plan: LocalPlan, *, out: TextIO, err: TextIO) -> None:
        start(plan, out=out, err=err)

    def status(self, name: str, *, progress: bool = True) -> JobStatus:
        return JobStatus(**status(name, environ=self.environ, progress=progress))

    def list(self, *, all_namespaces: bool = False) -> list[JobStatus]:  # noqa: ARG002 - one machine
        return [JobStatus(**item) for item in list_jobs(self.environ)]

    def logs(self, name: str, *, rank: int | None = None, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None, out: TextIO, err: TextIO) -> int:  # noqa: ARG002
        return logs(name, follow=follow, rank=rank, all_ranks=all_ranks, tail=tail,
                    environ=self.environ, out=out)

    def cancel(self, name: str) -> str:
        return cancel(name, environ=self.environ)

    def outputs(self, name: str) -> JobOutputs:
        """From the job's job.yaml, read leniently (a job of another version has one too)."""
        job_yaml = job_dir(name, self.environ) / contract.JOB_FILE
        try:
            data = load_yaml(job_yaml.read_text(), str(job_yaml))
        except FileNotFoundError as err:
            raise JobNotFoundError(f"unknown job {name!r}: {job_yaml} does not exist; pass the "
                                   f"job's URL instead (<train_url>/{name})") from err
        except (OSError, ValueError, UsageError) as err:
            raise LaunchError(f"cannot read {job_yaml}: {str(err).splitlines()[0]}") from err
        data = data if isinstance(data, dict) else {}
        if not data.get("train_url") and isinstance(data.get("spec"), dict):
            data = data["spec"]
        train_url = data.get("train_url")
        if not train_url:
            raise LaunchError(f"job {name!r} has no train_url in {job_yaml}")
        storage = StorageSettings(*(data.get(k) for k in ("storage_endpoint", "storage_region",
                                                          "storage_path_style")))
        return JobOutputs(str(job_url_of(str(train_url), name)), storage)
