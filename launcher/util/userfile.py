"""The one bounded reader of the files the CLI is given (annotations, inventories, job files,
configs): leo_core.bounded's checks, failing with a UsageError (exit 2)."""

from __future__ import annotations

import os
from typing import Any

from launcher.errors import UsageError
from leo_core import bounded
from leo_core.bounded import MAX_BYTES, MAX_DEPTH, BoundedFileError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "BoundedFileError", "check_json_depth", "load_yaml",
           "read_user_file"]


def read_user_file(path: str | os.PathLike, max_bytes: int = MAX_BYTES, what: str = "") -> str:
    """The UTF-8 text of the regular file `path` (at most `max_bytes`); UsageError if not."""
    try:
        return bounded.read_text(path, max_bytes, what)
    except BoundedFileError as err:
        raise UsageError(str(err)) from None


def load_yaml(text: str, where: str) -> Any:
    """YAML nested at most MAX_DEPTH deep (UsageError), parsed safely (yaml.YAMLError)."""
    try:
        return bounded.yaml_load(text, where)
    except BoundedFileError as err:
        raise UsageError(str(err)) from None


def check_json_depth(text: str, where: str) -> None:
    try:
        bounded.check_json_depth(text, where)
    except BoundedFileError as err:
        raise UsageError(str(err)) from None
