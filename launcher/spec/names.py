"""Kubernetes name, label and quantity syntax (the rules the API server applies).

Each `*_problem` function returns None for a valid value or a short reason
("must be at most 63 characters", ...), so callers can phrase one-line errors
that name the flag or the manifest field. Standard library only.
"""

from __future__ import annotations

import re
from decimal import Decimal

from launcher.errors import UsageError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
QUANTITY_PATTERN = (
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX = {
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}

DNS1123_LABEL_RULE = "lowercase letters, digits and '-', starting and ending with a letter or digit"
DNS1035_LABEL_RULE = "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"


def dns1123_label_problem(value: str, max_length: int = 63) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters (has {len(value)})"
    if not _DNS_LABEL.fullmatch(value):
        return f"must consist of {DNS1123_LABEL_RULE} (DNS-1123 label)"
    return None


def dns1035_label_problem(value: str, max_length: int = 63) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters (has {len(value)})"
    if not _DNS1035_LABEL.fullmatch(value):
        return f"must consist of {DNS1035_LABEL_RULE} (DNS-1035 label)"
    return None


def dns1123_subdomain_problem(value: str, max_length: int = 253) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters (has {len(value)})"
    if not all(_DNS_LABEL.fullmatch(part) for part in value.split(".")):
        return ("must consist of dot-separated parts of " + DNS1123_LABEL_RULE
                + " (DNS-1123 subdomain)")
    return None


def label_key_problem(key: str) -> str | None:
    """A label, annotation, node-selector or taint key: `[prefix/]name`."""
    if not key:
        return "key must not be empty"
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "key prefix must not be empty"
        problem = dns1123_subdomain_problem(prefix)
        if problem:
            return f"key prefix {problem}"
    if not name:
        return "key name must not be empty"
    if len(name) > 63:
        return f"key name must be at most 63 characters (has {len(name)})"
    if not _LABEL_NAME.fullmatch(name):
        return ("key name must consist of letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    if not isinstance(value, str):
        return "value must be a string"
    if value == "":
        return None
    if len(value) > 63:
        return f"value must be at most 63 characters (has {len(value)})"
    if not _LABEL_NAME.fullmatch(value):
        return ("value must consist of letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit")
    return None


def env_name_problem(name: str) -> str | None:
    if not _ENV_NAME.fullmatch(name or ""):
        return "must start with a letter or '_' and contain only letters, digits and '_'"
    return None


def config_key_problem(key: str) -> str | None:
    if not key or len(key) > 253 or not _CONFIG_KEY.fullmatch(key):
        return "must consist of letters, digits, '-', '_' and '.' (at most 253)"
    return None


def is_quantity(value: object) -> bool:
    return isinstance(value, str) and _QUANTITY.fullmatch(value) is not None


def parse_quantity(value: str) -> Decimal:
    """The numeric value of a Kubernetes quantity ("500m" → 0.5, "2Gi" → 2147483648)."""
    if not is_quantity(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)")
    match = re.fullmatch(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)", value)
    assert match is not None
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix not in _SUFFIX and suffix[0] in "eE":  # decimal exponent: "1e3"; "Ei" is a suffix
        return number * (Decimal(10) ** Decimal(suffix[1:]))
    return number * _SUFFIX[suffix]


def looks_like_url(text: str) -> bool:
    """Whether a NAME|URL argument is a storage URL or path rather than a job name."""
    return "://" in text or "/" in text or text.startswith((".", "~"))


def check_job_name(name: str) -> str:
    """`name` when it can name a job (a DNS-1035 label, as JobSpec requires), else UsageError."""
    if not isinstance(name, str) or dns1035_label_problem(name) is not None:
        raise UsageError(f"{name!r} is not a job name (lowercase letters, digits and '-', "
                         "starting with a letter)")
    return name
