"""A sweep's record and the loop that keeps `--parallel N` of its trials running.

Design (launcher/README.md, Sweeps): no controller. The sweep's definition and trial
list (each trial's JobSpec) are written before any trial is submitted, to this
machine's state folder (`$XDG_STATE_HOME/leo-launch/sweeps/<name>.json`) and, when the
trials publish, to `<train_url>/<name>/sweep.json`. `drive` submits trials through the
backend (`Backend.plan` + `Backend.submit`, as `submit` does) while fewer than
`parallel` run, and records each one submitted. When the CLI exits or is killed,
`leo-launch sweep resume NAME` runs the same loop: a trial is submitted when the
backend has no job of its name and the record does not say it was submitted, so no
trial is lost and none runs twice (a job submitted just before a kill exists already).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from launcher.backends.base import FINAL_PHASES, Backend, JobExistsError, JobNotFoundError
from launcher.backends.localjob import state_dir
from launcher.errors import LaunchError, UsageError
from launcher.outputs.layout import job_url_of
from launcher.spec import jobspec as js
from launcher.spec.names import check_job_name
from launcher.spec.sweep import Trial
from launcher.storage import NotFoundError, StorageOptions, open_store, parse_url
from launcher.util.files import write_json

SWEEP_FILE = "sweep.json"
SWEEP_VERSION = 1
GONE = "Gone"  # submitted, but the backend no longer has the job (outputs may remain)


@dataclasses.dataclass
class Sweep:
    name: str
    backend: str  # k8s | local
    parallel: int
    trials: list[Trial]
    specs: dict[str, dict[str, Any]]  # trial name -> JobSpec.to_dict() as planned
    train_url: str | None = None
    namespace: str | None = None
    context: str | None = None
    submitted: list[str] = dataclasses.field(default_factory=list)
    cancelled: bool = False
    created: float = dataclasses.field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"version": SWEEP_VERSION, "name": self.name, "backend": self.backend,
                "parallel": self.parallel, "train_url": self.train_url, "namespace": self.namespace,
                "context": self.context, "created": self.created, "cancelled": self.cancelled,
                "submitted": list(self.submitted),
                "trials": [{**t.to_dict(), "spec": self.specs.get(t.name)} for t in self.trials]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Sweep:
        if not isinstance(data, dict) or data.get("version") != SWEEP_VERSION:
            raise LaunchError(f"{where} is not a sweep record of this version of leo-launch")
        try:
            trials = [Trial.from_dict(t) for t in data["trials"]]
            return cls(name=str(data["name"]), backend=str(data["backend"]), parallel=int(data["parallel"]),
                       trials=trials, specs={t["name"]: t.get("spec") for t in data["trials"]},
                       train_url=data.get("train_url"), namespace=data.get("namespace"),
                       context=data.get("context"), submitted=[str(n) for n in data.get("submitted") or []],
                       cancelled=bool(data.get("cancelled")), created=float(data.get("created") or 0))
        except (KeyError, TypeError, ValueError, UsageError) as err:
            raise LaunchError(f"{where} is not a valid sweep record ({err})") from None

    def pending(self) -> list[Trial]:
        return [t for t in self.trials if t.name not in self.submitted]


# ------------------------------------------------------------------ the record


def sweeps_root(environ: Mapping[str, str] | None = None) -> Path:
    return state_dir(environ) / "sweeps"


def record_path(name: str, environ: Mapping[str, str] | None = None) -> Path:
    return sweeps_root(environ) / f"{check_job_name(name)}.json"


def save(sweep: Sweep, environ: Mapping[str, str] | None = None) -> None:
    path = record_path(sweep.name, environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, sweep.to_dict(), durable=True)


def load(name: str, environ: Mapping[str, str] | None = None) -> Sweep:
    path = record_path(name, environ)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"unknown sweep {name!r}: no {path} (give <train_url>/{name} to read a "
                          "published one)") from None
    except (OSError, ValueError) as err:
        raise LaunchError(f"cannot read {path}: {err}") from None
    return Sweep.from_dict(data, str(path))


def load_all(environ: Mapping[str, str] | None = None) -> list[Sweep]:
    root = sweeps_root(environ)
    return [load(path.stem, environ) for path in sorted(root.glob("*.json"))] if root.is_dir() else []


def publish(sweep: Sweep, options: StorageOptions | None = None) -> str | None:
    """Write the record to `<train_url>/<name>/sweep.json`; its URL (None without train_url)."""
    url = job_url_of(sweep.train_url, sweep.name)
    if url is None:
        return None
    with open_store(parse_url(url), options or StorageOptions(progress=False)) as store:
        store.put_bytes(SWEEP_FILE, (json.dumps(sweep.to_dict(), indent=1) + "\n").encode())
    return url


def load_published(url: str, options: StorageOptions | None = None) -> Sweep:
    """The record at `<train_url>/<name>` (URL of the sweep's folder)."""
    with open_store(parse_url(url), options or StorageOptions(progress=False)) as store:
        try:
            data = store.get_bytes(SWEEP_FILE, 16 * 2**20)
        except NotFoundError:
            raise LaunchError(f"no sweep at {url}: {store.url.child(SWEEP_FILE)} does not exist") from None
    try:
        return Sweep.from_dict(json.loads(data), f"{url}/{SWEEP_FILE}")
    except ValueError as err:
        raise LaunchError(f"{url}/{SWEEP_FILE} is not JSON: {err}") from None


# ------------------------------------------------------------------ the loop


def phase_of(backend: Backend, name: str) -> str | None:
    """The trial's phase; None when the backend has no such job."""
    try:
        return backend.status(name, progress=False).phase
    except JobNotFoundError:
        return None


def drive(sweep: Sweep, backend: Backend, *, out: TextIO, err: TextIO, wait: bool = True,
          poll: float | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Submit pending trials while fewer than `parallel` run; with `wait`, until every
    trial has ended (else return after one round)."""
    poll = backend.poll if poll is None else poll
    while not sweep.cancelled:
        active = 0
        for trial in sweep.trials:
            phase = phase_of(backend, trial.name)
            if phase is not None and trial.name not in sweep.submitted:
                sweep.submitted.append(trial.name)  # submitted by a run killed before recording it
                save(sweep, environ)
            if phase is not None and phase not in FINAL_PHASES:
                active += 1
        for trial in sweep.pending()[:max(sweep.parallel - active, 0)]:
            submit_trial(sweep, trial, backend, out=out, err=err)
            sweep.submitted.append(trial.name)
            save(sweep, environ)
            active += 1
        if not wait or (not sweep.pending() and active == 0):
            return
        time.sleep(poll)
        sweep = load(sweep.name, environ)  # a `sweep cancel` meanwhile stops the loop


def submit_trial(sweep: Sweep, trial: Trial, backend: Backend, *, out: TextIO, err: TextIO) -> None:
    spec = js.JobSpec.from_dict(sweep.specs[trial.name])
    try:
        backend.submit(backend.plan(spec), out=out, err=err)
    except JobExistsError:
        pass  # an earlier run submitted it just before being stopped


def cancel(sweep: Sweep, backend: Backend, environ: Mapping[str, str] | None = None) -> list[str]:
    """Stop submitting, then cancel every submitted trial; what each cancel said."""
    sweep.cancelled = True
    save(sweep, environ)
    return [backend.cancel(name) for name in sweep.submitted]
