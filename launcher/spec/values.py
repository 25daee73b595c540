"""Parsers and checks of single JobSpec values: tolerations, node selectors, rank-table
modes, storage URLs and endpoints, image references. Each `*_problem` returns None for a
good value or a short reason; parsers raise UsageError naming the flag."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import UsageError
from launcher.spec import names as syn
from launcher.spec.ranktable import InventoryNode, load_inventory
from launcher.storage.base import endpoint_problem as storage_endpoint_problem
from launcher.storage.base import url_problem

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# a registry host has a dot or a port or is localhost; otherwise it is a (lowercase) path part
_IMAGE_DOMAIN = (r"(?:localhost(?::[0-9]+)?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]+)?"
                 r"|[A-Za-z0-9-]+:[0-9]+|\[[0-9A-Fa-f:]+\](?::[0-9]+)?)")
_IMAGE = re.compile(
    rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_NCCL_VALUE = re.compile(r"[A-Za-z0-9_.:,=^-]{1,256}")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_ACCEL_ALIASES = {"gpu": "nvidia", "cuda": "nvidia", "npu": "ascend", "huawei": "ascend",
                  "ascend910": "ascend", "host": "cpu"}


# ------------------------------------------------------------------ small value types

@dataclass(frozen=True)
class Toleration:
    """A pod toleration parsed from `key[=value][:Effect]`."""

    key: str
    value: str | None = None
    effect: str | None = None

    @property
    def operator(self) -> str:
        return "Exists" if self.value is None else "Equal"

    @classmethod
    def parse(cls, text: str) -> Toleration:
        flag = f"--toleration {text!r}"
        head, colon, effect = text.rpartition(":") if ":" in text else (text, "", "")
        key, eq, value = head.partition("=")
        if not key:
            raise UsageError(f"{flag} is not of the form key=value:Effect, key:Effect or key")
        tol = cls(key=key, value=value if eq else None, effect=effect if colon else None)
        tol.check(flag)
        return tol

    def check(self, where: str) -> None:
        problem = syn.label_key_problem(self.key) if isinstance(self.key, str) else "key must be a string"
        if problem:
            raise UsageError(f"{where}: {problem}")
        if self.value is not None:
            problem = syn.label_value_problem(self.value)
            if problem:
                raise UsageError(f"{where}: {problem}")
        if self.effect is not None and self.effect not in _EFFECTS:
            raise UsageError(f"{where}: effect must be one of {', '.join(_EFFECTS)}, not {self.effect!r}")

    def to_dict(self) -> dict[str, str]:
        out = {"key": self.key, "operator": self.operator}
        if self.value is not None:
            out["value"] = self.value
        if self.effect is not None:
            out["effect"] = self.effect
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Toleration:
        if not isinstance(data, Mapping) or set(data) - {"key", "operator", "value", "effect"}:
            raise UsageError(f"toleration {data!r} must have only key, operator, value, effect")
        operator = data.get("operator", "Equal" if data.get("value") is not None else "Exists")
        value = data.get("value")
        if operator not in ("Equal", "Exists") or (operator == "Exists") != (value is None):
            raise UsageError(f"toleration {data!r}: operator Exists takes no value, Equal needs one")
        tol = cls(key=data.get("key"), value=value, effect=data.get("effect"))
        tol.check("toleration")
        return tol


def parse_node_selectors(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`--node-selector key=value` flags (repeatable) → ((key, value), ...)."""
    pairs: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--node-selector {item!r} is not of the form key=value")
        if pairs.get(key, value) != value:  # a node cannot match both: say so, keep neither
            raise UsageError(f"--node-selector {key}={pairs[key]} and {key}={value} conflict: "
                             "give one value per key")
        pairs[key] = value
    out = tuple(pairs.items())
    _check_node_selector(out)
    return out


def _check_node_selector(pairs: tuple[tuple[str, str], ...]) -> None:
    for key, value in pairs:
        problem = syn.label_key_problem(key) or syn.label_value_problem(value)
        if problem:
            raise UsageError(f"--node-selector {f'{key}={value}'!r}: {problem}")


def parse_rank_table(value: str | None) -> tuple[str | None, tuple[InventoryNode, ...]]:
    """`--rank-table dynamic|controller|none|FILE` → (mode, inventory nodes)."""
    if value is None:
        return None, ()
    if value in ("dynamic", "controller", "none"):
        return value, ()
    from pathlib import Path

    if not Path(value).is_file():
        raise UsageError(f"--rank-table {value!r}: no such inventory file "
                         "(give dynamic, controller, none or the path of an inventory YAML)")
    return "file", load_inventory(value)


def storage_url_problem(url: str) -> str | None:
    """Syntax of s3://bucket/prefix, obs://bucket/prefix, file:///abs or a plain path:
    the run-time parser's verdict (launcher.storage.base.parse_url), so what submit
    accepts, the pod accepts."""
    if not isinstance(url, str) or not url:
        return "must not be empty"
    problem = _text_problem(url)
    if problem:
        return problem
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url_problem(url)  # a plain path
    if scheme in ("s3", "obs"):
        bucket = rest.partition("/")[0]
        if not _BUCKET.fullmatch(bucket):
            return (f"bucket {bucket!r} is not valid: 3-63 characters of lowercase letters, digits, "
                    "'.' and '-', starting and ending with a letter or digit")
        return _reason(url_problem(url))
    if scheme == "file":
        if not rest.startswith("/"):
            return "file:// URLs need an absolute path, e.g. file:///data/leo"
        return _reason(url_problem(url))
    return f"unknown scheme {scheme + '://'!r}; use s3://, obs://, file:// or a plain path"


def _reason(problem: str | None) -> str | None:
    """parse_url's message without its 'malformed storage URL ...:' head (the caller names
    the flag and the value)."""
    if problem is None:
        return None
    return problem.split(": ", 1)[1] if ": " in problem else problem


def endpoint_problem(url: str) -> str | None:
    """The run-time check of launcher.storage.base (no credentials, no path or query)."""
    problem = _text_problem(url)
    if problem:
        return problem
    return storage_endpoint_problem(url)


def image_problem(image: str) -> str | None:
    problem = _text_problem(image)
    if problem:
        return problem
    if len(image) > 255 or not _IMAGE.fullmatch(image):
        return "is not a valid image reference (e.g. registry.example.com/leo-launch:ascend)"
    return None


def registry_host(image: str) -> str | None:
    """The registry host of an image reference, None when it has none (Docker's rule: the
    first path component names a host when it holds a dot or a port, or is localhost)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def _text_problem(text: str) -> str | None:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return "must not contain control characters (newlines, tabs)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


