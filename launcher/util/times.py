"""Times of the API and of state files, and kubectl-style ages."""

from __future__ import annotations

import datetime as dt
from typing import Any


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp of the API ("2024-05-01T10:00:00Z") as epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def age(seconds: float | None) -> str:
    """kubectl-style age: 45s, 12m, 3h20m, 5d."""
    if seconds is None:
        return "-"
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest and hours < 10 else f"{hours}h"
    return f"{hours // 24}d"
