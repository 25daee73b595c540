"""The store of `file://` URLs and plain paths: a directory on this machine.

Writes are atomic (temporary file, then rename); the sha256 of a file is computed
when a stat needs it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from launcher.storage.base import (
    NotFoundError,
    ObjectInfo,
    ProgressFn,
    StorageOptions,
    StorageURL,
    split_key,
    too_large,
)
from launcher.storage.files import (
    CHUNK,
    atomic_write,
    check_content,
    hash_file,
    local_error,
    tmp_path,
    walk_files,
)


class LocalStore:
    def __init__(self, url: StorageURL, options: StorageOptions) -> None:
        self.url = url
        self.options = options
        self.root = Path(url.path)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*split_key(key, str(self.url.child(key)), allow_empty=True))

    def list(self, prefix: str = "") -> dict[str, ObjectInfo]:
        base = self._path(prefix)
        if not base.exists():
            return {}
        if base.is_file():
            return {prefix: self._info(prefix, base)}
        found = {}
        for rel, path in walk_files(base).items():
            key = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
            found[key] = self._info(key, path)
        return found

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key, st.st_size, mtime=st.st_mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        sha, _ = hash_file(path)
        st = path.stat()
        return ObjectInfo(key, st.st_size, sha256=sha, mtime=st.st_mtime)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            if max_bytes is None:
                return path.read_bytes()
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise too_large(self.url.child(key), path.stat().st_size, max_bytes)
            return data
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
            raise NotFoundError(f"{self.url.child(key)} does not exist") from err
        except OSError as err:
            raise local_error(err, path) from err

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
            raise NotFoundError(f"{self.url.child(key)} does not exist") from err
        except OSError as err:
            raise local_error(err, path) from err

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data, durable=key.endswith(".json"))

    def put_file(self, local: Path, key: str, progress: ProgressFn | None = None) -> str:
        return _copy(local, self._path(key), None, progress)

    def get_file(self, key: str, dest: Path, info: ObjectInfo | None = None,
                 progress: ProgressFn | None = None) -> str:
        source = self._path(key)
        if not source.is_file():
            raise NotFoundError(f"{self.url.child(key)} does not exist")
        return _copy(source, dest, info, progress)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as err:
                raise local_error(err, self._path(key)) from err

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy(source: Path, dest: Path, expected: ObjectInfo | None, progress: ProgressFn | None) -> str:
    """Copy through a temporary file beside `dest`, hashing on the way; checked against
    `expected` (size, sha256) before the rename."""
    import hashlib

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path(dest)
        sha = hashlib.sha256()
        size = 0
        try:
            with open(source, "rb", buffering=0) as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            digest = sha.hexdigest()
            if expected is not None:
                check_content(str(source), size, digest, None, expected.size, expected.sha256, None)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as err:
        raise local_error(err, err.filename or dest) from err
    return digest
