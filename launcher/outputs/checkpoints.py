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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import UsageError
from launcher.outputs.layout import (
    CHECKPOINTS_DIR,
    LOGS_DIR,
    MANIFEST,
    METRICS_FILE,
    POINTERS,
    pointer_file,
    rank_log,
    rank_of_log,
)
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
)
from launcher.storage.files import (
    atomic_write,
    hash_file,
    local_error,
    prepare_tmp_root,
    safe_parts,
    walk_files,
)
from launcher.storage.sync import (
    download_files,
)

log = logging.getLogger(__name__)

FORMATS = ("ckpt", "npz")  # pull --format: the MindSpore .ckpt, or the .npz files (resume needs these)
MANIFEST_FORMAT = 1
_STEP_RE = re.compile(r"step-(\d+)")  # fullmatch only: "$" would accept a trailing newline


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
        match = _STEP_RE.fullmatch(step_dir.name)
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
            if not re.fullmatch(r"[0-9a-f]{64}", sha) or name == MANIFEST or size < 0 \
                    or any(c["name"] == name for c in checked):  # duplicates counted twice
                raise ValueError(name)
            checked.append({"name": name, "size": size, "sha256": sha})
    except (KeyError, TypeError, ValueError) as err:
        raise StorageError(f"{what} is malformed") from err
    return checked


def _parse_pointer(data: bytes, what: str) -> dict[str, Any]:
    try:
        pointer = json.loads(data)
        match = _STEP_RE.fullmatch(str(pointer.get("path"))) if isinstance(pointer, dict) else None
        if match is None:
            raise ValueError
        step = pointer.get("step", int(match.group(1)))
        if isinstance(step, bool) or not isinstance(step, int) or step != int(match.group(1)):
            raise ValueError  # a step that disagrees with its path would resume the wrong one
        pointer["step"] = step
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise StorageError(f"{what} is not a checkpoint pointer like "
                           '{"step": 100, "path": "step-100"}') from err
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


def format_files(fmt: str) -> tuple[str, ...]:
    """The files of a checkpoint step that `pull --format fmt` brings."""
    from leo_core.ckpt_format import CKPT_NAME, NPZ_NAME

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return (CKPT_NAME, "state.json") if fmt == "ckpt" else (NPZ_NAME, "optimizer.npz", "state.json")


def _select(manifest: dict[str, Any], files: list[dict[str, Any]], fmt: str | None,
            where: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest restricted to `fmt`'s files (the local copy's own MANIFEST.json lists
    what it holds, so it verifies)."""
    if fmt is None:
        return manifest, files
    wanted = format_files(fmt)
    chosen = [f for f in files if f["name"] in wanted]
    missing = [name for name in wanted if name not in {f["name"] for f in chosen}]
    if missing:
        raise UsageError(f"checkpoint {where} has no {missing[0]} (published before --format {fmt} files "
                         f"existed?); pull it without --format")
    return {**manifest, "files": chosen, "subset": fmt}, chosen


def _fetch_checkpoint(store: Store, name: str, dest_root: Path,
                      fmt: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Download `checkpoints/<name>/` of the job store (only `fmt`'s files, if given) into
    `dest_root/<name>`, verified against its manifest; an already complete local copy is kept."""
    where = store.url.child(f"checkpoints/{name}")
    try:
        manifest = get_json(store, f"{CHECKPOINTS_DIR}/{name}/{MANIFEST}")
    except NotFoundError as err:
        raise StorageError(f"checkpoint {where} has no {MANIFEST}: it is incomplete or was not "
                           "published by leo-launch") from err
    files = _manifest_files(manifest, f"{where}/{MANIFEST}")
    manifest, files = _select(manifest, files, fmt, where)
    dest = dest_root / name
    if dest.is_dir() and verify_checkpoint(dest, manifest):
        return dest, manifest
    token = prepare_tmp_root(dest_root)
    tmp, old = dest_root / f"{token}-{name}", dest_root / f"{token}-old-{name}"
    try:
        items = [(f"checkpoints/{name}/{f['name']}", tmp.joinpath(*f["name"].split("/")),
                  ObjectInfo(f["name"], f["size"], sha256=f["sha256"])) for f in files]
        report = download_files(store, items, label=f"pull {name}")
        for (key, path, info) in items:
            if report.sha256.get(key) != info.sha256:
                raise IntegrityError(f"sha256 mismatch for {store.url.child(key)}: it does not "
                                     f"match {MANIFEST}")
            size = path.stat().st_size  # a manifest that lies about sizes fails here, not later
            if size != info.size:
                raise IntegrityError(f"size mismatch for {store.url.child(key)}: {MANIFEST} says "
                                     f"{info.size} bytes, the object has {size}")
        atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
    except OSError as err:
        raise local_error(err, dest) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:  # a file (or link) that stood where the checkpoint goes: rmtree leaves it
            old.unlink(missing_ok=True)
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
         options: StorageOptions | None = None, fmt: str | None = None) -> PulledCheckpoint:
    """Download the checkpoint that `<job_url>/checkpoints/<which>.json` points to into
    `<to>/step-<n>/` (verified against its manifest, renamed into place when complete),
    then write `<to>/<which>.json`. `to` defaults to `./<job name>`. `fmt` "ckpt" brings
    only the MindSpore `.ckpt` and `state.json`, "npz" the `.npz` files and `state.json`;
    None everything."""
    if which not in POINTERS:
        raise UsageError(f"--checkpoint must be one of {', '.join(POINTERS)}, not {which!r}")
    if fmt is not None:
        format_files(fmt)  # a bad format is refused before anything is read or written
    base = parse_url(job_url)
    dest_root = Path(to) if to is not None else Path(base.name or "checkpoint")
    with open_store(base, options) as store:
        pointer_key = f"checkpoints/{which}.json"
        try:
            raw = store.get_bytes(pointer_key)
        except NotFoundError as err:
            hint = " (no best checkpoint yet? try --checkpoint latest)" if which == "best" else ""
            raise StorageError(f"no {which} checkpoint: {store.url.child(pointer_key)} does not "
                               f"exist{hint}") from err
        pointer = _parse_pointer(raw, str(store.url.child(pointer_key)))
        path, manifest = _fetch_checkpoint(store, pointer["path"], dest_root, fmt)
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
    ckpt = out / CHECKPOINTS_DIR
    options = dataclasses.replace(options or StorageOptions(), progress=False)
    with open_store(job_url, options) as store:
        try:
            raw = store.get_bytes("checkpoints/latest.json")
        except NotFoundError:
            return None
        latest = _parse_pointer(raw, str(store.url.child("checkpoints/latest.json")))
        local = _read_local_pointer(ckpt / pointer_file("latest"))
        if (local is not None and local[0]["step"] >= latest["step"]
                and verify_checkpoint(ckpt / local[0]["path"])):
            return local[0]["step"]
        _fetch_checkpoint(store, latest["path"], ckpt)
        atomic_write(ckpt / pointer_file("latest"), raw, durable=True)
        try:
            best_raw = store.get_bytes("checkpoints/best.json")
        except NotFoundError:
            best_raw = None
        if best_raw is not None:
            best = _parse_pointer(best_raw, str(store.url.child("checkpoints/best.json")))
            if best["path"] != latest["path"]:
                _fetch_checkpoint(store, best["path"], ckpt)
            atomic_write(ckpt / pointer_file("best"), best_raw, durable=True)
        if not (out / METRICS_FILE).exists():
            try:
                metrics = store.get_bytes(METRICS_FILE)
                atomic_write(out / METRICS_FILE, _metrics_until(metrics, latest["step"]))
            except NotFoundError:
                pass
        if logs_dir is not None:
            for key, info in store.list(LOGS_DIR).items():
                # only logs/rank-<r>.log, checked where it becomes a local path
                rank = rank_of_log(key)
                if rank is None or key != f"{LOGS_DIR}/{rank_log(rank)}":
                    raise StorageError(f"unexpected object {str(store.url.child(key))!r} "
                                       f"under {LOGS_DIR}/: only {rank_log('<r>')} files belong there")
                dest = Path(logs_dir) / rank_log(rank)
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
