"""Bounded reading of user files (configs, job files, inventories, annotations): a size cap,
regular files only, and nesting depth checked before a YAML/JSON document is built.

A device or FIFO would be read forever (or block with no writer); a 50 kB document nested
25,000 levels deep overflows the recursive parsers (a segfault in libyaml's composer).
`leo_core` and the launcher share this one copy (leo_core never imports the launcher).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_BYTES = 16 * 2**20
MAX_DEPTH = 100  # the project's files nest < 10 levels


class BoundedFileError(ValueError):
    """The file is not a regular file, too large, not UTF-8, unreadable or nested too deep."""


def read_text(path: str | os.PathLike, max_bytes: int = MAX_BYTES, what: str = "") -> str:
    """The UTF-8 text of the regular file `path`, at most `max_bytes` bytes; `what` ("config")
    names it in errors."""
    label = f"{what} {path}" if what else str(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not block before fstat refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise BoundedFileError(f"cannot read {label}: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BoundedFileError(f"cannot read {label}: it is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise BoundedFileError(f"cannot read {label}: not a regular file (a device, FIFO "
                                   "or socket)")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as err:
            raise BoundedFileError(f"cannot read {label}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise BoundedFileError(f"{label} is larger than {max_bytes // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BoundedFileError(f"cannot read {label}: it is not UTF-8 text ({err.reason} at "
                               f"byte {err.start})") from None


def yaml_load(text: str, where: str | Path, max_depth: int = MAX_DEPTH) -> Any:
    """`yaml.safe_load(text)` after checking, on the parser's flat event stream, that
    collections nest at most `max_depth` deep. yaml.YAMLError for invalid YAML."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                raise BoundedFileError(f"{where} nests more than {max_depth} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def check_json_depth(text: str, where: str | Path, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON text whose arrays/objects nest more than `max_depth` deep (brackets
    inside strings do not count)."""
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > max_depth:
            raise BoundedFileError(f"{where} nests more than {max_depth} levels deep")
