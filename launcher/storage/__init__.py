"""Object storage and local directories behind one interface (see `launcher.storage.base`
for URLs, options and the Store protocol): `open_store` and whole-URL operations.

This package imports no boto3: the object-store backend (`launcher.storage.s3`) is
loaded when an s3:// or obs:// URL is opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.errors import UsageError
from launcher.storage.base import (  # noqa: F401 - the package's public names
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PART_SIZE,
    MB,
    SCHEMES,
    TMP_PREFIX,
    IntegrityError,
    NotFoundError,
    ObjectInfo,
    StorageError,
    StorageOptions,
    StorageSettings,
    StorageURL,
    Store,
    SyncReport,
    TooLarge,
    URLLike,
    add_storage_arguments,
    parse_url,
    redact_endpoint,
    split_key,
    storage_problem,
)
from launcher.storage.local import LocalStore
from launcher.storage.sync import sync_down as _sync_down
from launcher.storage.sync import sync_files_up
from launcher.storage.sync import sync_up as _sync_up


def open_store(url: URLLike, options: StorageOptions | None = None) -> Store:
    """A store rooted at `url` (no network traffic until it is used)."""
    parsed = parse_url(url)
    options = options or StorageOptions()
    if parsed.is_local:
        return LocalStore(parsed, options)
    from launcher.storage.s3 import ObjectStore

    return ObjectStore(parsed, options)


def sync_up(local: str | Path, url: URLLike, *, options: StorageOptions | None = None,
            delete: bool = False) -> SyncReport:
    """Upload the tree `local` under `url`, skipping files whose size and content hash
    already match; delete extra objects only when `delete`."""
    _refuse_overlap(Path(local), url)
    with open_store(url, options) as store:
        return _sync_up(Path(local), store, delete=delete)


def sync_down(url: URLLike, local: str | Path, *, options: StorageOptions | None = None,
              delete: bool = False) -> SyncReport:
    """Download everything under `url` into `local`, each file verified and renamed into
    place when complete; unchanged files are skipped; extra local files deleted only
    when `delete`. Re-running after an interruption continues."""
    _refuse_overlap(Path(local), url)
    with open_store(url, options) as store:
        return _sync_down(store, Path(local), delete=delete)


def push(local: str | Path, url: URLLike, *, options: StorageOptions | None = None,
         delete: bool = False) -> SyncReport:
    """`leo-launch push`: a directory is synced under `url`; a file is uploaded to `url`,
    or to `url/<file name>` when `url` ends with '/', is a bucket root or a local directory."""
    path = Path(local)
    if path.is_dir():
        return sync_up(path, url, options=options, delete=delete)
    if not path.is_file():  # bad input, not a failure of the storage
        raise UsageError(f"{local}: no such file or directory")
    target = parse_url(url)
    if ((isinstance(url, str) and url.endswith("/")) or (not target.is_local and not target.key)
            or (target.is_local and Path(target.path).is_dir())):
        target = target.child(path.name)

    with open_store(target.parent(), options) as store:
        return sync_files_up({target.name: path}, store)


def _refuse_overlap(local: Path, url: URLLike) -> None:
    """A local tree synced with a local URL must not contain it or lie inside it: the
    sync would copy into its own source or delete it (`--delete`)."""
    target = parse_url(url)
    if not target.is_local:
        return
    mine, theirs = os.path.realpath(local), os.path.realpath(target.path)
    if os.path.commonpath([mine, theirs]) in (mine, theirs):
        raise UsageError(f"{local} and {target} overlap (one is inside the other): choose a "
                         "destination outside the source")


def upload(local: str | Path, url: URLLike, *, options: StorageOptions | None = None) -> str:
    """Upload one file to the object `url`; returns its sha256."""
    target = parse_url(url)
    with open_store(target.parent(), options) as store:
        return store.put_file(Path(local), target.name)


def download(url: URLLike, local: str | Path, *, options: StorageOptions | None = None) -> str:
    """Download the object `url` to the file `local` (verified, atomic); returns its sha256."""
    source = parse_url(url)
    with open_store(source.parent(), options) as store:
        return store.get_file(source.name, Path(local))


def list_objects(url: URLLike, *, options: StorageOptions | None = None) -> dict[str, ObjectInfo]:
    """Everything under the prefix `url`, by key relative to it."""
    with open_store(url, options) as store:
        return store.list()


def read_json(url: URLLike, *, options: StorageOptions | None = None) -> Any:
    """A small JSON object; NotFoundError when missing, StorageError when not JSON."""
    source = parse_url(url)
    with open_store(source.parent(), options) as store:
        return get_json(store, source.name)


def write_json(url: URLLike, obj: Any, *, options: StorageOptions | None = None) -> None:
    target = parse_url(url)
    with open_store(target.parent(), options) as store:
        put_json(store, target.name, obj)


# A line of a streamed text object kept in memory at most (longer ones are cut here).
MAX_LINE = 1024 * 1024


def iter_lines(store: Store, key: str, max_line: int = MAX_LINE) -> Iterator[str]:
    """The lines of a text object of any size, streamed (bounded memory: one chunk and
    one line of at most `max_line` bytes; the rest of a longer line is dropped), decoded
    as UTF-8 with replacement characters. Verified once the last line is read."""
    partial, dropping = b"", False
    for chunk in store.iter_chunks(key):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not dropping:
                yield _line(partial + chunk[start:end], max_line)
            partial, dropping, start = b"", False, end + 1
        if not dropping:
            partial += chunk[start:start + max_line - len(partial) + 1]
            dropping = len(partial) > max_line
            if dropping:
                yield _line(partial, max_line)
                partial = b""
    if partial and not dropping:
        yield _line(partial, max_line)


def _line(data: bytes, max_line: int) -> str:
    return data[:max_line].rstrip(b"\r").decode("utf-8", errors="replace")


def get_json(store: Store, key: str) -> Any:
    data = store.get_bytes(key)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StorageError(f"{store.url.child(key)} is not valid JSON") from err


def put_json(store: Store, key: str, obj: Any) -> None:
    store.put_bytes(key, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())
