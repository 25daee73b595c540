"""Local file helpers of the storage layer: hashing, walking a tree, temporary names,
atomic writes and the clean-up of temporaries left by interrupted runs."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from launcher.errors import UsageError
from launcher.storage.base import TMP_PREFIX, IntegrityError, StorageError, split_key
from launcher.util import files as util_files
from launcher.util.procs import pid_alive

CHUNK = 1024 * 1024


def hash_file(path: Path, *, md5: bool = False,
              progress: Callable[[int], None] | None = None) -> tuple[str, str | None]:
    """(sha256, md5 or None) of a file, read once."""
    sha = hashlib.sha256()
    md = hashlib.md5(usedforsecurity=False) if md5 else None
    try:
        with open(path, "rb", buffering=0) as stream:
            while chunk := stream.read(CHUNK):
                sha.update(chunk)
                if md is not None:
                    md.update(chunk)
                if progress is not None:
                    progress(len(chunk))
    except OSError as err:
        raise local_error(err, path) from err
    return sha.hexdigest(), (md.hexdigest() if md is not None else None)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def local_error(err: OSError, path: Path | str | None = None) -> StorageError:
    """A one-line StorageError for a local file-system failure."""
    where = path if path is not None else err.filename
    return StorageError(f"{where or 'a local file'}: {err.strerror or err}")


def key_of(relative: Path) -> str:
    return "/".join(relative.parts)


def walk_files(root: Path, links: list[str] | None = None) -> dict[str, Path]:
    """Every regular file under `root` by '/'-separated key, temporaries excluded;
    a file `root` gives {name: root}. Symbolic links inside the tree (to files or
    folders) are never followed and FIFOs, sockets and devices never read: their keys
    are appended to `links`."""
    if root.is_file():
        return {root.name: root}
    files: dict[str, Path] = {}

    def fail(err: OSError) -> None:
        raise local_error(err)

    for folder, dirs, names in os.walk(root, onerror=fail):
        base = Path(folder)
        kept = []
        for name in sorted(dirs):
            if name.startswith(TMP_PREFIX):
                continue
            if (base / name).is_symlink():
                if links is not None:
                    links.append(key_of((base / name).relative_to(root)))
                continue
            kept.append(name)
        dirs[:] = kept
        for name in names:
            if name.startswith(TMP_PREFIX):
                continue
            path = base / name
            if path.is_symlink():
                if links is not None:
                    links.append(key_of(path.relative_to(root)))
            elif path.is_file():
                files[key_of(path.relative_to(root))] = path
            elif links is not None:  # a FIFO, socket or device: skipped, but said so
                links.append(key_of(path.relative_to(root)))
    return files


def link_inside(root: Path, key: str) -> Path | None:
    """The first folder on the way from `root` to `key` that is a symbolic link (writing
    there would land outside `root`), or None."""
    path = root
    for part in key.split("/")[:-1]:
        path = path / part
        if path.is_symlink():
            return path
    return None


def tmp_token() -> str:
    """The start of a temporary name; the pid in it lets a later run remove what a
    killed run left."""
    return f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def tmp_path(dest: Path) -> Path:
    """A temporary name beside `dest` (same file system, so os.replace is atomic)."""
    return dest.parent / f"{tmp_token()}-{dest.name[:160]}"


def prepare_tmp_root(root: Path) -> str:
    """Create `root`, remove temporaries dead processes left directly in it, and return
    a fresh token for this process's temporaries there."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise local_error(err, root) from err
    remove_stale_tmp(root, recursive=False)
    return tmp_token()


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` through a temporary file and a rename (after an fsync when
    `durable`: pointers and markers, not every downloaded file). The temporary carries
    the storage prefix, so listings skip it and a later run removes it if we die."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        util_files.atomic_write(path, data, durable=durable, tmp=tmp_path(path))
    except OSError as err:
        raise local_error(err, path) from err


def remove_stale_tmp(root: Path, *, recursive: bool = True) -> int:
    """Delete temporaries in `root` (and below when `recursive`) left by processes that
    are gone; returns how many."""
    removed = 0
    if not root.is_dir():
        return 0
    for folder, dirs, names in os.walk(root):
        for name in list(dirs) + names:
            if not name.startswith(TMP_PREFIX):
                continue
            pid_text = name[len(TMP_PREFIX):].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
                continue
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        if not recursive:
            break
    return removed


def check_content(what: str, size: int, sha256: str, md5: str | None, expected_size: int | None,
                  expected_sha256: str | None, expected_md5: str | None) -> None:
    """Raise IntegrityError unless size and hash match what was recorded (sha256 when
    known, else the MD5 of a single-part ETag)."""
    if expected_size is not None and size != expected_size:
        raise IntegrityError(f"size mismatch for {what}: expected {expected_size} bytes, got {size}")
    if expected_sha256:
        if sha256 != expected_sha256.lower():
            raise IntegrityError(
                f"sha256 mismatch for {what}: expected {expected_sha256[:16]}..., got {sha256[:16]}...")
    elif expected_md5 and md5 is not None and md5 != expected_md5:
        raise IntegrityError(f"md5 mismatch for {what}: expected {expected_md5}, got {md5}")


def safe_parts(key: str, what: str) -> list[str]:
    """The segments of a key that comes from storage or an archive (not from the user):
    StorageError when it is empty or has '.', '..' or empty segments."""

    try:
        return split_key(key, what)
    except UsageError as err:
        raise StorageError(f"{what}: unsafe path (empty, '.' or '..' segments)") from err
