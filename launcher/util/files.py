"""Atomic writes of local files: a temporary file beside the target, then a rename, so a
reader sees the old content or the new one, never half of it."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, data: bytes | str, *, durable: bool = False,
                 tmp: str | os.PathLike | None = None) -> None:
    """Write `data` to `path` through `tmp` (default `.NAME.PID.tmp` beside it) and a
    rename; fsync first when `durable` (pointers and markers). Raises OSError."""
    path = Path(path)
    refuse_non_regular(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as stream:
            stream.write(payload)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def refuse_non_regular(path: str | os.PathLike) -> None:
    """OSError unless `path` is absent or a regular file: a rename over a device, FIFO or
    symlink would replace it (as root, /dev/full) instead of writing into it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise OSError(errno.EEXIST, f"it exists and is {kind}; not replaced", str(path))


def write_json(path: str | os.PathLike, obj: Any, *, durable: bool = False) -> None:
    """`obj` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", durable=durable)


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
