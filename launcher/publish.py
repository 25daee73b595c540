"""Checkpoints between a job's local output directory and its `train_url`.

Local layout (written by leo_core.train)::

    <out>/metrics.jsonl
    <out>/checkpoints/step-<n>/...          appears atomically (temp dir + rename)
    <out>/checkpoints/latest.json           {"step": n, "path": "step-<n>"}
    <out>/checkpoints/best.json             {"step": n, "path": "step-<n>", "accuracy": a}
    <logs>/rank-<r>.log

Remote layout under the job's base URL `<train_url>/<job>/`::

    metrics.jsonl
    checkpoints/step-<n>/<files>            uploaded first
    checkpoints/step-<n>/MANIFEST.json      names, sizes, sha256 of the files: next
    checkpoints/latest.json, best.json      the local pointers, copied last
    logs/rank-<r>.log, result.json, job.yaml

A reader that follows a pointer therefore finds a complete checkpoint with its
manifest. `pull` and `resume_from_remote` download into a temporary directory, check
every file against the manifest and rename the directory into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError, UsageError
from launcher.storage import (
    IntegrityError,
    NotFoundError,
    ObjectInfo,
    StorageError,
    StorageOptions,
    Store,
    get_json,
    open_store,
    parse_url,
    put_json,
)
from launcher.storage_files import (
    atomic_write,
    hash_file,
    local_error,
    prepare_tmp_root,
    safe_parts,
    walk_files,
)
from launcher.storage_sync import download_files, sync_files_up

log = logging.getLogger(__name__)

POINTERS = ("latest", "best")
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
_STEP_RE = re.compile(r"^step-(\d+)$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


# ------------------------------------------------------------- manifests


def build_manifest(step_dir: Path, step: int | None = None) -> dict[str, Any]:
    """The manifest of a local checkpoint directory (MANIFEST.json itself excluded)."""
    files = []
    for name, path in sorted(walk_files(step_dir).items()):
        if name == MANIFEST:
            continue
        sha, _ = hash_file(path)
        files.append({"name": name, "size": path.stat().st_size, "sha256": sha})
    if step is None:
        match = _STEP_RE.match(step_dir.name)
        step = int(match.group(1)) if match else None
    return {"format": MANIFEST_FORMAT, "step": step, "files": files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _manifest_files(manifest: Any, what: str) -> list[dict[str, Any]]:
    """The validated file list of a manifest."""
    try:
        files = manifest["files"]
        checked = []
        for entry in files:
            name, size, sha = entry["name"], int(entry["size"]), str(entry["sha256"]).lower()
            safe_parts(name, f"{what}: file name {name!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", sha) or name == MANIFEST or size < 0:
                raise ValueError(name)
            checked.append({"name": name, "size": size, "sha256": sha})
    except (KeyError, TypeError, ValueError):
        raise StorageError(f"{what} is malformed") from None
    return checked


def _parse_pointer(data: bytes, what: str) -> dict[str, Any]:
    try:
        pointer = json.loads(data)
        if not isinstance(pointer, dict) or not _STEP_RE.match(str(pointer.get("path"))):
            raise ValueError
        pointer["step"] = int(pointer.get("step", _STEP_RE.match(pointer["path"]).group(1)))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise StorageError(f"{what} is not a checkpoint pointer like "
                           '{"step": 100, "path": "step-100"}') from None
    return pointer


def _read_local_pointer(path: Path) -> tuple[dict[str, Any], bytes] | None:
    try:
        data = path.read_bytes()
        return _parse_pointer(data, str(path)), data
    except (OSError, StorageError):
        return None  # not written yet (or being replaced)


def verify_checkpoint(step_dir: Path, manifest: dict[str, Any] | None = None) -> bool:
    """Whether a local checkpoint directory matches its manifest (the given one or its
    own MANIFEST.json)."""
    try:
        if manifest is None:
            manifest = json.loads((step_dir / MANIFEST).read_bytes())
        files = _manifest_files(manifest, str(step_dir / MANIFEST))
        for entry in files:
            path = step_dir.joinpath(*entry["name"].split("/"))
            if not path.is_file() or path.stat().st_size != entry["size"]:
                return False
            if hash_file(path)[0] != entry["sha256"]:
                return False
    except (OSError, ValueError, StorageError):
        return False
    return True


# ---------------------------------------------------------- downloading


def _fetch_checkpoint(store: Store, name: str, dest_root: Path) -> tuple[Path, dict[str, Any]]:
    """Download `checkpoints/<name>/` of the job store into `dest_root/<name>`, verified
    against its manifest; an already complete local copy is kept."""
    where = store.url.child(f"checkpoints/{name}")
    try:
        manifest = get_json(store, f"checkpoints/{name}/{MANIFEST}")
    except NotFoundError:
        raise StorageError(f"checkpoint {where} has no {MANIFEST}: it is incomplete or was not "
                           "published by leo-launch") from None
    files = _manifest_files(manifest, f"{where}/{MANIFEST}")
    dest = dest_root / name
    if dest.is_dir() and verify_checkpoint(dest, manifest):
        return dest, manifest
    token = prepare_tmp_root(dest_root)
    tmp, old = dest_root / f"{token}-{name}", dest_root / f"{token}-old-{name}"
    try:
        items = [(f"checkpoints/{name}/{f['name']}", tmp.joinpath(*f["name"].split("/")),
                  ObjectInfo(f["name"], f["size"], sha256=f["sha256"])) for f in files]
        report = download_files(store, items, label=f"pull {name}")
        for (key, _, info) in items:
            if report.sha256.get(key) != info.sha256:
                raise IntegrityError(f"sha256 mismatch for {store.url.child(key)}: it does not "
                                     f"match {MANIFEST}")
        atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
    except OSError as err:
        raise local_error(err, dest) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest, manifest


@dataclass(frozen=True)
class PulledCheckpoint:
    which: str
    step: int
    path: Path  # the local step-<n> directory
    pointer: dict[str, Any]
    files: int
    bytes: int


def pull(job_url: str, which: str = "best", to: str | Path | None = None, *,
         options: StorageOptions | None = None) -> PulledCheckpoint:
    """Download the checkpoint that `<job_url>/checkpoints/<which>.json` points to into
    `<to>/step-<n>/` (verified against its manifest, renamed into place when complete),
    then write `<to>/<which>.json`. `to` defaults to `./<job name>`."""
    if which not in POINTERS:
        raise UsageError(f"--checkpoint must be one of {', '.join(POINTERS)}, not {which!r}")
    base = parse_url(job_url)
    dest_root = Path(to) if to is not None else Path(base.name or "checkpoint")
    with open_store(base, options) as store:
        pointer_key = f"checkpoints/{which}.json"
        try:
            raw = store.get_bytes(pointer_key)
        except NotFoundError:
            hint = " (no best checkpoint yet? try --checkpoint latest)" if which == "best" else ""
            raise StorageError(f"no {which} checkpoint: {store.url.child(pointer_key)} does not "
                               f"exist{hint}") from None
        pointer = _parse_pointer(raw, str(store.url.child(pointer_key)))
        path, manifest = _fetch_checkpoint(store, pointer["path"], dest_root)
        atomic_write(dest_root / f"{which}.json", raw, durable=True)
    files = _manifest_files(manifest, "manifest")
    return PulledCheckpoint(which, pointer["step"], path, pointer, len(files),
                            sum(f["size"] for f in files))


def resume_from_remote(job_url: str, local_out: str | Path, *, logs_dir: str | Path | None = None,
                       options: StorageOptions | None = None) -> int | None:
    """Before (re)starting training: bring the checkpoint that the job's remote
    `latest.json` points to (and the `best.json` one) into `<local_out>/checkpoints/`,
    verified, with the local pointers; also `metrics.jsonl` (lines after the resumed step
    dropped) and, with `logs_dir`, the earlier rank logs so they are appended to.
    Returns the step to resume from, or None when the job has no checkpoint yet.
    A local checkpoint at least as new as the remote one is kept as it is."""
    out = Path(local_out)
    ckpt = out / "checkpoints"
    options = dataclasses.replace(options or StorageOptions(), progress=False)
    with open_store(job_url, options) as store:
        try:
            raw = store.get_bytes("checkpoints/latest.json")
        except NotFoundError:
            return None
        latest = _parse_pointer(raw, str(store.url.child("checkpoints/latest.json")))
        local = _read_local_pointer(ckpt / "latest.json")
        if (local is not None and local[0]["step"] >= latest["step"]
                and verify_checkpoint(ckpt / local[0]["path"])):
            return local[0]["step"]
        _fetch_checkpoint(store, latest["path"], ckpt)
        atomic_write(ckpt / "latest.json", raw, durable=True)
        try:
            best_raw = store.get_bytes("checkpoints/best.json")
        except NotFoundError:
            best_raw = None
        if best_raw is not None:
            best = _parse_pointer(best_raw, str(store.url.child("checkpoints/best.json")))
            if best["path"] != latest["path"]:
                _fetch_checkpoint(store, best["path"], ckpt)
            atomic_write(ckpt / "best.json", best_raw, durable=True)
        if not (out / "metrics.jsonl").exists():
            try:
                metrics = store.get_bytes("metrics.jsonl")
                atomic_write(out / "metrics.jsonl", _metrics_until(metrics, latest["step"]))
            except NotFoundError:
                pass
        if logs_dir is not None:
            for key, info in store.list("logs").items():
                dest = Path(logs_dir) / key.split("/", 1)[1]
                if not dest.exists():
                    store.get_file(key, dest, info)
        return latest["step"]


def _metrics_until(data: bytes, step: int) -> bytes:
    """The complete lines of metrics.jsonl whose "step" is at most `step`."""
    kept = []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line)
            if isinstance(record, dict) and int(record.get("step", step)) > step:
                continue
        except (ValueError, TypeError):
            pass
        kept.append(line)
    return b"".join(kept)


# ------------------------------------------------------------ publishing


@dataclass
class PublishReport:
    checkpoints: list[str] = field(default_factory=list)  # step dirs uploaded
    pointers: list[str] = field(default_factory=list)  # "latest"/"best" updated
    files: list[str] = field(default_factory=list)  # metrics and logs mirrored


class Publisher:
    """Publishes a training run's output to its job URL from rank 0.

    `poll()` uploads new checkpoints (objects, then MANIFEST.json, then the pointer) and
    mirrors metrics.jsonl and the rank logs when they changed; call it every N seconds
    (`start(N)` runs it on a thread) and `final()` once at exit. `put_json`/`put_file`
    publish result.json and job.yaml. Thread-safe; nothing is printed.
    """

    def __init__(self, out_dir: str | Path, job_url: str, *, logs_dir: str | Path | None = None,
                 options: StorageOptions | None = None) -> None:
        self.out = Path(out_dir)
        self.logs = Path(logs_dir) if logs_dir is not None else None
        self.store = open_store(job_url, dataclasses.replace(options or StorageOptions(), progress=False))
        self._lock = threading.Lock()
        self._published: set[str] = set()
        self._pointers: dict[str, bytes] = {}
        self._mirrored: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def url(self) -> str:
        return str(self.store.url)

    def poll(self) -> PublishReport:
        """Publish what changed since the last call. Raises StorageError on failure;
        what was not published is retried by the next call."""
        with self._lock:
            report = PublishReport()
            ckpt = self.out / "checkpoints"
            for which in POINTERS:
                found = _read_local_pointer(ckpt / f"{which}.json")
                if found is None or self._pointers.get(which) == found[1]:
                    continue
                pointer, raw = found
                if self._publish_step(ckpt, pointer["path"], pointer["step"], report):
                    self.store.put_bytes(f"checkpoints/{which}.json", raw)
                    self._pointers[which] = raw
                    report.pointers.append(which)
            self._mirror(self.out / "metrics.jsonl", "metrics.jsonl", report, whole_lines=True)
            if self.logs is not None and self.logs.is_dir():
                for path in sorted(self.logs.glob("rank-*.log")):
                    self._mirror(path, f"logs/{path.name}", report)
            return report

    def _publish_step(self, ckpt: Path, name: str, step: int, report: PublishReport) -> bool:
        """Upload one checkpoint directory and then its manifest; False when the
        directory is gone (the trainer keeps only the latest and the best)."""
        if name in self._published:
            return True
        step_dir = ckpt / name
        if not step_dir.is_dir():
            return False
        try:
            manifest = build_manifest(step_dir, step)
        except (OSError, StorageError):
            if not step_dir.is_dir():
                return False
            raise
        manifest_key = f"checkpoints/{name}/{MANIFEST}"
        try:
            remote = get_json(self.store, manifest_key)
        except NotFoundError:
            remote = None
        if not isinstance(remote, dict) or remote.get("files") != manifest["files"]:
            if remote is not None:  # another run's step of that number: unpublish it first
                self.store.delete([manifest_key])
            files = {f"checkpoints/{name}/{f['name']}": step_dir.joinpath(*f["name"].split("/"))
                     for f in manifest["files"]}
            try:
                sent = sync_files_up(files, self.store, remote=self.store.list(f"checkpoints/{name}"),
                                     label=f"publish {name}")
            except StorageError:
                if not step_dir.is_dir():
                    return False
                raise
            expected = {f"checkpoints/{name}/{f['name']}": f["sha256"] for f in manifest["files"]}
            changed = [key for key, sha in sent.sha256.items() if expected.get(key) != sha]
            if changed:
                log.warning("checkpoint %s changed while it was published; retrying later", name)
                return False
            put_json(self.store, manifest_key, manifest)
            report.checkpoints.append(name)
        self._published.add(name)
        return True

    def _mirror(self, path: Path, key: str, report: PublishReport, *, whole_lines: bool = False) -> None:
        try:
            st = path.stat()
            signature = (st.st_size, st.st_mtime_ns)
            if self._mirrored.get(key) == signature:
                return
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as err:
            raise local_error(err, path) from err
        if whole_lines:
            data = data[: data.rfind(b"\n") + 1]
        self.store.put_bytes(key, data)
        self._mirrored[key] = signature
        report.files.append(key)

    def put_json(self, name: str, obj: Any) -> None:
        """Write a small JSON object under the job URL (e.g. result.json)."""
        with self._lock:
            put_json(self.store, name, obj)

    def put_file(self, local: str | Path, name: str) -> None:
        """Upload a file under the job URL (e.g. job.yaml)."""
        with self._lock:
            self.store.put_file(Path(local), name)

    def start(self, interval: float) -> None:
        """Call `poll()` every `interval` seconds on a daemon thread; failures are logged
        (one line, in `last_error` too) and retried at the next tick."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True,
                                        name="leo-publisher")
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
                self.last_error = None
            except Exception as err:  # noqa: BLE001 - the thread must keep going
                self.last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.warning("publishing to %s failed: %s", self.url, self.last_error)

    def stop(self) -> None:
        """Stop the background thread (waits for a poll in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def final(self) -> PublishReport:
        """At exit: stop the thread and publish everything once more (errors raised)."""
        self.stop()
        return self.poll()

    def close(self) -> None:
        self.stop()
        self.store.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------- job names


def state_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "leo-launch"


def resolve_job_url(name_or_url: str, environ: dict[str, str] | None = None, *,
                    namespace: str | None = None, context: str | None = None) -> str:
    """The base URL of a job: a URL or path is returned as given; a job NAME is looked up
    in the local job registry (`$XDG_STATE_HOME/leo-launch/jobs/<name>/job.yaml`, key
    `train_url`) and becomes `<train_url>/<name>`; a name that is not there is looked up
    on the configured Kubernetes cluster (the job's ConfigMap, in `namespace` of
    `context`)."""
    text = name_or_url.strip()
    if "://" in text or "/" in text or text.startswith((".", "~")):
        return str(parse_url(text))
    if not _NAME_RE.match(text):
        raise UsageError(f"{text!r} is neither a storage URL nor a job name (lowercase letters, "
                         "digits and '-')")
    job_yaml = state_dir(environ) / "jobs" / text / "job.yaml"
    try:
        import yaml

        data = yaml.safe_load(job_yaml.read_text())
    except FileNotFoundError:
        from launcher.jobs import kube_configured

        if kube_configured(environ):
            from launcher.cluster import train_url_of

            url = train_url_of(text, namespace=namespace, context=context)
            if url is not None:
                return url
            where = f"{job_yaml} does not exist and the cluster has no job of that name"
        else:
            where = f"{job_yaml} does not exist"
        raise LaunchError(f"unknown job {text!r}: {where}; pass the job's "
                          f"URL instead (<train_url>/{text})") from None
    except (OSError, ValueError) as err:
        raise LaunchError(f"cannot read {job_yaml}: {str(err).splitlines()[0]}") from None
    train_url = data.get("train_url") if isinstance(data, dict) else None
    if not train_url and isinstance(data, dict) and isinstance(data.get("spec"), dict):
        train_url = data["spec"].get("train_url")
    if not train_url:
        raise LaunchError(f"job {text!r} has no train_url in {job_yaml}")
    return str(parse_url(str(train_url)).child(text))
