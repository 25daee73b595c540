"""Sync between a local tree and a store: skip what is unchanged, transfer the rest in
parallel, verify every download, never delete unless asked.

"Unchanged" means the same size and the same content hash: the sha256 kept in the
object's metadata (written by every upload of leo-launch), or the MD5 of a single-part
ETag, or for local stores the sha256 of both files. A sync that was interrupted leaves
complete files only (downloads are renamed into place when verified; objects appear
when their upload completes), so running it again continues where it stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from launcher.storage.base import ObjectInfo, StorageError, Store, SyncReport
from launcher.storage.files import (
    hash_file,
    link_inside,
    local_error,
    remove_stale_tmp,
    safe_parts,
    walk_files,
)
from launcher.storage.progress import Progress

T = TypeVar("T")


def run_each(items: Iterable[T], work: Callable[[T], object], concurrency: int) -> None:
    """Call `work` on each item on `concurrency` threads that take the items one at a time
    (no task object per item: memory stays flat for millions of keys). After the first
    failure no item starts; it is raised once the running ones have ended."""
    iterator = iter(items)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                item = _END if failures else next(iterator, _END)
            if item is _END:
                return
            try:
                work(item)
            except BaseException as err:  # noqa: BLE001 - raised by the caller's thread
                with lock:
                    failures.append(err)
                return

    threads = [threading.Thread(target=worker, name="leo-storage", daemon=True)
               for _ in range(max(1, concurrency))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException as err:  # Ctrl-C: the workers take no new item
        with lock:
            failures.append(err)
        raise
    if failures:
        raise failures[0]


_END = object()


def run_parallel(tasks: list[Callable[[], T]], concurrency: int) -> list[T]:
    """Run `tasks` on `concurrency` threads, results in order; the first failure stops
    what has not started and is raised once the running tasks have ended."""
    if len(tasks) <= 1:
        return [task() for task in tasks]
    results: list = [None] * len(tasks)

    def run(index: int) -> None:
        results[index] = tasks[index]()

    run_each(range(len(tasks)), run, min(concurrency, len(tasks)))
    return results


def unchanged(store: Store, key: str, info: ObjectInfo, path: Path, size: int) -> bool:
    """Whether the object `key` (as listed: `info`) holds the same bytes as `path`."""
    if info.size != size:
        return False
    if info.md5 is not None:
        sha, md5 = hash_file(path, md5=True)
        if md5 == info.md5:
            return True
        if info.sha256 is None:  # an ETag that is not an MD5 (e.g. SSE-KMS): ask the metadata
            full = store.stat(key)
            return bool(full and full.sha256 == sha and full.size == size)
        return info.sha256 == sha
    if info.sha256 is None:
        full = store.stat(key)
        if full is None or full.sha256 is None or full.size != size:
            return False
        info = full
    return hash_file(path)[0] == info.sha256


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise local_error(err, path) from err


def sync_files_up(files: dict[str, Path], store: Store, *,
                  remote: dict[str, ObjectInfo] | None = None, label: str = "push") -> SyncReport:
    """Upload `files` (key → local path) unless unchanged. `remote` is a listing of the
    store; without one each key is looked up on its own."""
    started = time.monotonic()
    report = SyncReport(files=len(files))
    concurrency = store.options.concurrency

    def decide(key: str, path: Path) -> tuple[str, Path, int] | None:
        size = _size(path)
        info = remote.get(key) if remote is not None else store.stat(key)
        if info is not None and unchanged(store, key, info, path, size):
            return None
        return key, path, size

    plan = run_parallel([lambda k=k, p=p: decide(k, p) for k, p in files.items()], concurrency)
    todo = [item for item in plan if item is not None]
    report.skipped = len(files) - len(todo)
    progress = Progress(label, store.options.progress)
    progress.set_total(sum(size for _, _, size in todo), len(todo))

    def send(key: str, path: Path) -> tuple[str, str]:
        sha = store.put_file(path, key, progress.add)
        progress.file_done()
        return key, sha

    try:
        sent = run_parallel([lambda k=k, p=p: send(k, p) for k, p, _ in todo], concurrency)
    finally:
        progress.close()
    report.transferred = len(sent)
    report.bytes = sum(size for _, _, size in todo)
    report.sha256 = dict(sent)
    report.seconds = time.monotonic() - started
    return report


# `push --delete` announces itself with a marker object at the prefix's root while it runs,
# checked when it starts and again (with a fresh listing) just before it deletes: two such
# pushes to one prefix at once never both succeed and leave a mix of both trees.
PUSH_MARKER = ".leo-push-"
# Tests set it to a folder: the push creates `paused` there after its uploads and waits
# for `resume` (a deterministic race between two real pushes, no sleeps).
PAUSE_VARIABLE = "LEO_TEST_PUSH_PAUSE"


class ConcurrentPush(StorageError):
    """Another `push --delete` to the same prefix is running (exit code 1)."""


def is_push_marker(key: str) -> bool:
    return key.startswith(PUSH_MARKER) and "/" not in key


def sync_up(local: Path, store: Store, *, delete: bool = False, label: str = "push") -> SyncReport:
    """Upload the tree `local` into `store`; with `delete`, remove objects that have no
    local file (refused, ConcurrentPush, while another push --delete runs there)."""
    if not local.is_dir():
        raise StorageError(f"{local}: not a directory")
    started = time.monotonic()
    links: list[str] = []
    files = walk_files(local, links)
    if not delete:
        report = sync_files_up(files, store, remote=store.list(), label=label)
        report.links = links
        report.seconds = time.monotonic() - started
        return report
    marker = f"{PUSH_MARKER}{secrets.token_hex(8)}"
    store.put_bytes(marker, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                        "started": time.time()}).encode())
    try:
        report = sync_files_up(files, store, remote=_alone(store, marker), label=label)
        _pause_for_tests()
        remote = _alone(store, marker)  # a fresh listing: what to delete, and who else writes
        # a skipped link is not a deleted file: what is under its path stays
        extra = sorted(key for key in remote if key not in files
                       and not any(key == link or key.startswith(link + "/") for link in links))
        store.delete(extra)
        report.deleted = len(extra)
    finally:
        store.delete([marker])
    report.links = links
    report.seconds = time.monotonic() - started
    return report


def _alone(store: Store, mine: str) -> dict[str, ObjectInfo]:
    """The listing of `store` without push markers; ConcurrentPush when one other than
    `mine` is there."""
    remote = store.list()
    others = sorted(key for key in remote if is_push_marker(key) and key != mine)
    if others:
        raise ConcurrentPush(
            f"another push --delete to {store.url} is running (its marker "
            f"{store.url.child(others[0])} exists): nothing was deleted; push again when it has "
            "ended (a push that was killed leaves its marker: delete it)")
    return {key: info for key, info in remote.items() if not is_push_marker(key)}


def _pause_for_tests() -> None:
    folder = os.environ.get(PAUSE_VARIABLE)
    if not folder:
        return
    Path(folder, "paused").touch()
    deadline = time.monotonic() + 300
    while not Path(folder, "resume").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def download_files(store: Store, items: list[tuple[str, Path, ObjectInfo | None]], *,
                   label: str = "pull") -> SyncReport:
    """Download each (key, destination, listed info), verified; no skipping."""
    started = time.monotonic()
    progress = Progress(label, store.options.progress)
    progress.set_total(sum(info.size for _, _, info in items if info is not None), len(items))

    def fetch(key: str, dest: Path, info: ObjectInfo | None) -> tuple[str, str]:
        sha = store.get_file(key, dest, info, progress.add)
        progress.file_done()
        return key, sha

    try:
        got = run_parallel([lambda k=k, d=d, i=i: fetch(k, d, i) for k, d, i in items],
                           store.options.concurrency)
    finally:
        progress.close()
    return SyncReport(files=len(items), transferred=len(got),
                      bytes=sum(info.size for _, _, info in items if info is not None),
                      sha256=dict(got), seconds=time.monotonic() - started)


def sync_down(store: Store, local: Path, *, delete: bool = False, label: str = "pull") -> SyncReport:
    """Download everything in `store` into the directory `local`, skipping files that are
    unchanged; with `delete`, remove local files that have no object."""
    started = time.monotonic()
    if local.exists() and not local.is_dir():
        raise StorageError(f"{local}: exists and is not a directory")
    remove_stale_tmp(local)
    remote = {key: info for key, info in store.list().items() if not is_push_marker(key)}
    for key in remote:
        safe_parts(key, f"object key {key!r} in {store.url}")  # no '..' escapes from `local`
        link = link_inside(local, key)
        if link is not None:  # never write through a link out of the destination
            raise StorageError(f"{link} is a symbolic link inside the destination: pull never "
                               "writes through links; remove it or pull to another folder")
    existing = walk_files(local) if local.is_dir() else {}

    # Planned as keys only (the listing holds the rest): files already there are compared
    # in parallel, every other key is simply fetched.
    changed: set[str] = set()

    def compare(key: str) -> None:
        path = existing[key]
        if not unchanged(store, key, remote[key], path, _size(path)):
            changed.add(key)

    run_each([key for key in existing if key in remote], compare, store.options.concurrency)
    todo = [key for key in remote if key not in existing or key in changed]
    progress = Progress(label, store.options.progress)
    progress.set_total(sum(remote[key].size for key in todo), len(todo))

    def fetch(key: str) -> None:
        store.get_file(key, local.joinpath(*key.split("/")), remote[key], progress.add)
        progress.file_done()

    try:
        run_each(todo, fetch, store.options.concurrency)
    finally:
        progress.close()
    report = SyncReport(files=len(remote), transferred=len(todo), skipped=len(remote) - len(todo),
                        bytes=sum(remote[key].size for key in todo))
    if delete:
        extra = sorted(key for key in existing if key not in remote)
        for key in extra:
            try:
                existing[key].unlink(missing_ok=True)
            except OSError as err:
                raise local_error(err, existing[key]) from err
        report.deleted = len(extra)
    report.seconds = time.monotonic() - started
    return report
