"""Staging of a job's `data_url` into the node-local cache (`/cache` in pods).

`data_url` is either a prefix holding the original directory layout
(`miniImageNet/center/train_embeddings.pkl`, ...; an `embeddings/` folder above it is
allowed) or one object ending in `.zip` (the original `embeddings.zip`, with or without
its top-level `embeddings/` folder). A local directory is used where it is, not copied.

Once per node: every local rank calls `stage()`; the first to take the lock file
(fcntl) copies and verifies, the others wait for the lock and then find the marker
`.leo-staged.json` that records what was staged, so they return at once. A copier that
dies releases the lock; the next one continues the sync where it stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from launcher.storage import (
    StorageError,
    StorageOptions,
    StorageURL,
    Store,
    open_store,
    parse_url,
)
from launcher.storage.files import (
    atomic_write,
    local_error,
    prepare_tmp_root,
    safe_parts,
)
from launcher.storage.sync import sync_down
from leo_core.config import DATASETS  # the datasets a data_url may hold

DATA_DIR = "data"  # the staged tree: <cache_dir>/data
MARKER = ".leo-staged.json"
LOCK = ".leo-stage.lock"
DEFAULT_CACHE = "/cache"


class BadData(StorageError):
    """What data_url holds cannot be used as it is (no files, an unsafe or broken zip):
    bad configuration, not retried."""


class NoSpace(BadData):
    """What is to be staged does not fit the cache (its disk, or the pod's sizeLimit)."""


def used_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (what counts toward an emptyDir's sizeLimit)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def check_space(needed: int, cache: Path, limit: int | None, what: str) -> None:
    """NoSpace (one line) when `needed` more bytes do not fit in `cache`: the free space of
    its file system and, in a pod, what its sizeLimit `limit` leaves (the kubelet evicts a
    pod that exceeds it)."""
    free = shutil.disk_usage(cache).free
    room = free if limit is None else min(free, limit - used_bytes(cache))
    if needed <= room:
        return
    why = (f"the pod's /cache sizeLimit is {_human(limit)}: submit with a larger --cache-size"
           if limit is not None and room < free else "the node's disk is too full")
    raise NoSpace(f"{what} needs {_human(needed)} in {cache} but only {_human(max(room, 0))} is free ({why})")


class StageTimeout(StorageError):
    """Waiting for another process's staging took too long."""


@contextmanager
def file_lock(path: Path, timeout: float | None = None, poll: float = 0.2) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), released on exit and when
    the holder dies; waits at most `timeout` seconds (None: forever)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise local_error(err, path) from err
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if deadline is not None and time.monotonic() >= deadline:
                    raise StageTimeout(f"waited {timeout:.0f} s for the staging lock {path}") from err
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def find_data_root(tree: Path) -> Path:
    """The directory under `tree` that holds miniImageNet/ or tieredImageNet/."""
    for candidate in (tree, tree / "embeddings"):
        if any((candidate / name).is_dir() for name in DATASETS):
            return candidate
    raise StorageError(f"{tree} holds neither {' nor '.join(d + '/' for d in DATASETS)} "
                       "(nor embeddings/ with them): is data_url the embeddings folder or zip?")


def stage(data_url: str, cache_dir: str | Path = DEFAULT_CACHE, *, lock: str | Path | None = None,
          options: StorageOptions | None = None, timeout: float | None = 6 * 3600,
          limit: int | None = None) -> Path:
    """Make the embeddings of `data_url` available on this node and return the local data
    root (the directory that contains miniImageNet/ and/or tieredImageNet/). Before copying,
    NoSpace when it cannot fit (`limit`: the pod's /cache sizeLimit in bytes)."""
    url = parse_url(data_url)
    if url.is_local and Path(url.path).is_dir():
        return find_data_root(Path(url.path))
    cache = Path(cache_dir)
    options = options or StorageOptions(progress=False)
    with file_lock(Path(lock) if lock is not None else cache / LOCK, timeout):
        is_zip = url.name.lower().endswith(".zip")
        store_url = url.parent() if is_zip else url
        with open_store(store_url, options) as store:
            fingerprint = _fingerprint(store, url.name if is_zip else None)
            marker = _read_marker(cache / MARKER)
            target = cache / DATA_DIR
            if (marker.get("data_url") == str(url) and marker.get("fingerprint") == fingerprint
                    and (cache / marker.get("root", "\0")).is_dir()):
                return cache / marker["root"]
            (cache / MARKER).unlink(missing_ok=True)
            check_space(_to_copy(store, url.name if is_zip else None, target), cache, limit, str(url))
            if is_zip:
                _stage_zip(store, url, cache, target)
            else:
                report = sync_down(store, target, delete=True, label="stage")
                if report.files == 0:
                    raise BadData(f"data_url {url} holds no files")
        root = find_data_root(target)
        atomic_write(cache / MARKER, json.dumps({
            "data_url": str(url), "fingerprint": fingerprint,
            "root": str(root.relative_to(cache)), "staged": time.time()}, indent=1).encode(), durable=True)
        return root


def _fingerprint(store: Store, zip_name: str | None) -> str:
    """A digest of what is at the data URL now (names, sizes, ETags) so an unchanged
    source is not checked file by file again."""
    if zip_name is not None:
        info = store.stat(zip_name)
        if info is None:
            raise StorageError(f"{store.url.child(zip_name)} does not exist")
        items = [(zip_name, info.size, info.etag or info.sha256 or "", info.mtime or 0)]
    else:
        items = sorted((k, i.size, i.etag or "", i.mtime or 0) for k, i in store.list().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _to_copy(store: Store, zip_name: str | None, target: Path) -> int:
    """Bytes staging will add: a zip and its unpacked tree (about as large) side by side, or
    the objects minus what an earlier, interrupted sync left in `target`."""
    if zip_name is not None:
        info = store.stat(zip_name)
        return 2 * info.size if info is not None else 0
    return max(sum(i.size for i in store.list().values()) - used_bytes(target), 0)


def _human(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _read_marker(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stage_zip(store: Store, url: StorageURL, cache: Path, target: Path) -> None:
    """Download the zip (verified), unpack it beside `target`, rename it into place."""
    token = prepare_tmp_root(cache)
    archive, unpacked, old = cache / f"{token}-{url.name}", cache / f"{token}-unpacked", cache / f"{token}-old"
    try:
        store.get_file(url.name, archive)
        _unzip(archive, unpacked, str(url))
        archive.unlink()
        if target.exists():
            os.rename(target, old)
        os.rename(unpacked, target)
    except OSError as err:
        raise local_error(err, target) from err
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _unzip(archive: Path, dest: Path, what: str) -> None:
    """Extract with CRC checks; names escaping `dest` are refused. A single top-level
    `embeddings/` folder is kept (find_data_root looks inside it)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = member.filename.replace("\\", "/")
                if name.startswith("/") or name.endswith("/"):
                    if name.startswith("/"):
                        raise BadData(f"{what}: unsafe path {name!r} in the archive")
                    continue
                try:
                    parts = safe_parts(name, f"{what}: archive member {name!r}")
                except StorageError as err:
                    raise BadData(str(err)) from None
                out = dest.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
    except zipfile.BadZipFile as err:
        raise BadData(f"{what} is not a valid zip archive: {err}") from err
