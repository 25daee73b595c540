"""What every backend offers: the `Backend` protocol, the typed `JobStatus`, the errors of
a job that is missing or exists already, and the one wait loop and one follow loop that
every backend shares.

A job's status is the same for Kubernetes and local jobs; `JobStatus.to_dict()` is the
JSON of `status -o json` (`list -o json` prints a list of them)::

    {"name", "backend": "k8s"|"local", "phase": Pending|Running|Restarting|Succeeded|Failed,
     "reason" (why pending or failed, when known), "experiment", "accelerator", "cards",
     "nodes", "restarts", "max_restarts", "age", "age_seconds", "outputs_url" (<train_url>/<name>),
     "step", "best_accuracy", "best_step", "startup_seconds", "result" (when known),
     "ranks": [{"rank", "node_rank", "phase", "node", "restarts", "age", "age_seconds",
                "pod" (k8s) | "pid" (local), "reason"}, ...]}
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TextIO

from launcher.errors import LaunchError
from launcher.storage.base import StorageSettings

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed")
FINAL_PHASES = ("Succeeded", "Failed")


class JobOutputs(NamedTuple):
    """Where a job publishes (`<train_url>/<name>`) and how to reach it (the job's own
    endpoint, region and addressing: `storage.options(args)` lets flags override them)."""

    url: str
    storage: StorageSettings = StorageSettings()


class JobNotFoundError(LaunchError):
    """No job of that name (exit code 1)."""


class JobExistsError(LaunchError):
    """A job of that name exists already; nothing was created (exit code 1)."""


# Keys that are always in the JSON, in this order; the optional ones follow when known.
_ALWAYS = ("name", "backend", "phase", "experiment", "accelerator", "cards", "nodes",
           "restarts", "max_restarts", "age_seconds", "age", "outputs_url", "ranks")


@dataclasses.dataclass
class JobStatus:
    """One job's state, from either backend (see the module docstring for the fields).
    Backends build it as `JobStatus(**entry)`: a key without a field is a TypeError."""

    name: str
    backend: str
    phase: str
    experiment: str | None = None
    accelerator: str | None = None
    cards: int | None = None
    nodes: int | None = None
    restarts: int = 0
    max_restarts: int | None = None
    age_seconds: float | None = None
    age: str = "-"
    outputs_url: str | None = None
    ranks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reason: str | None = None
    namespace: str | None = None  # k8s
    scheduler: str | None = None  # k8s
    state_dir: str | None = None  # local
    exit_code: int | None = None  # local, once ended
    step: int | None = None
    best_accuracy: float | None = None
    best_step: int | None = None
    startup_seconds: float | None = None  # the latest start to its first training step
    result: Any = None
    storage_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in _ALWAYS}
        for field in dataclasses.fields(self):
            if field.name not in out and getattr(self, field.name) is not None:
                out[field.name] = getattr(self, field.name)
        return out

    @property
    def ended(self) -> bool:
        return self.phase in FINAL_PHASES

    @property
    def all_running(self) -> bool:
        """Every rank's pod or process runs (or has finished)."""
        return self.phase == "Running" and all(
            r.get("phase") in ("Running", "Succeeded") for r in self.ranks)

    def line(self) -> str:
        """`job NAME: Phase (reason)`, the last line of submit --wait/--follow."""
        return f"job {self.name}: {self.phase}" + (f" ({self.reason})" if self.reason else "")


class Plan(Protocol):
    """What a backend will do to start a job, decided before anything is created:
    `submit --dry-run` prints it, `Backend.submit(plan)` does exactly that."""

    spec: Any  # the JobSpec as the backend runs it (e.g. with the context's namespace)

    def text(self) -> str:
        """The plan as `submit --dry-run` prints it (YAML)."""

    def write_dir(self, directory: str) -> list[Any]:
        """Write the plan into files in `directory` (UsageError: nothing written)."""

    def documents(self) -> list[dict[str, Any]]:
        """The plan as data (`-o json` prints this list)."""

    def names(self) -> list[str]:
        """What the plan creates, one `kind/name` each (`-o name`)."""


class Backend(Protocol):
    """Where jobs run: `k8s` (a Kubernetes cluster) or `local` (this machine)."""

    name: str
    describe: str  # in messages, e.g. "Kubernetes" (jobs not listed)
    poll: float  # seconds between status reads while waiting for a job
    runs_pods: bool  # its jobs run in pods (credentials and outputs leave with them)

    def plan(self, spec: Any, *, preflight: bool = True) -> Plan:
        """What submitting `spec` would do; UsageError when this backend cannot run it.
        `preflight` False: submit skips the cluster's pre-flight checks (--skip-preflight)."""

    def submit(self, plan: Any, *, out: TextIO, err: TextIO) -> None:
        """Carry out `plan` (JobExistsError when the name is taken; nothing half-created)."""

    def status(self, name: str, *, progress: bool = True) -> JobStatus:
        """The job's state (JobNotFoundError when there is none); with `progress`, its
        step, best accuracy and result read from its outputs."""

    def list(self, *, all_namespaces: bool = False) -> list[JobStatus]:
        """The backend's jobs, sorted by name (`all_namespaces`: where a backend has several)."""

    def logs(self, name: str, *, rank: int | None = None, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None, out: TextIO,
             err: TextIO) -> int:
        """Print one rank's lines (default 0) or every rank's; with `follow`, until the
        job ends. Returns the exit code."""

    def cancel(self, name: str) -> str:
        """Stop the job and delete what it is made of; idempotent. A sentence saying what
        happened."""

    def outputs(self, name: str) -> JobOutputs:
        """`<train_url>/<name>` of an existing job and its storage settings: JobNotFoundError
        when there is no such job, LaunchError when it publishes nothing (no train_url)."""


def wait_for(backend: Backend, name: str, until: Callable[[JobStatus], bool], *,
             err: TextIO | None = None, timeout: float | None = None,
             poll: float = 2.0) -> JobStatus:
    """Poll the job's status until `until(status)`; report each change of phase or
    reason on `err`."""
    err = err or sys.stderr
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        current = backend.status(name, progress=False)
        shown = (current.phase, current.reason)
        if shown != last:
            err.write(f"leo-launch: {name}: {current.phase}"
                      + (f": {current.reason}" if current.reason else "") + "\n")
            err.flush()
            last = shown
        if until(current):
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"job {name} is still {current.phase} after {timeout:.0f} s")
        time.sleep(poll)


def running_or_ended(status: JobStatus) -> bool:
    return status.ended or status.all_running


def wait_and_report(backend: Backend, name: str, *, out: TextIO, err: TextIO,
                    poll: float = 2.0) -> int:
    """`submit --wait`: until every rank runs (0) or the job has ended (1 if it failed)."""
    final = wait_for(backend, name, running_or_ended, err=err, poll=poll)
    out.write(final.line() + "\n")
    out.flush()
    return 1 if final.phase == "Failed" else 0


def follow_to_end(backend: Backend, name: str, *, out: TextIO, err: TextIO,
                  poll: float = 2.0) -> int:
    """`submit --follow`: every rank's logs until the job ends, then its final phase;
    0 when it succeeded, else 1."""
    backend.logs(name, all_ranks=True, follow=True, out=out, err=err)
    final = wait_for(backend, name, lambda s: s.ended, err=err, poll=poll)
    out.write(final.line() + "\n")
    out.flush()
    return 0 if final.phase == "Succeeded" else 1
