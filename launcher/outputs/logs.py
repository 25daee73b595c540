"""Log lines of a job. Lines written by the bootstrap carry their origin: `[rank R] ...`
for a training process, `[node K] ...` for the bootstrap of node K itself. `rank_filter`
keeps one rank's lines (and its node's) out of a pod's or a local job's stream;
`print_published_logs` reads what a job published under `<job_url>/logs/`."""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable, Iterable
from typing import TextIO

from launcher.outputs.layout import LOGS_DIR, rank_of_log
from launcher.storage import (
    NotFoundError,
    StorageSettings,
    iter_lines,
    open_store,
)

_RANK_TAG = re.compile(r"^\[rank (\d+)\] ")
_NODE_TAG = re.compile(r"^\[node (\d+)\] ")


def line_rank(line: str) -> tuple[str, int] | None:
    """("rank", R) or ("node", K) for a tagged bootstrap line, None for an untagged one."""
    match = _RANK_TAG.match(line)
    if match:
        return "rank", int(match.group(1))
    match = _NODE_TAG.match(line)
    if match:
        return "node", int(match.group(1))
    return None


def rank_filter(rank: int | None, node_rank: int | None) -> Callable[[str], bool]:
    """Keep rank `rank`'s lines, its node's bootstrap lines and untagged lines (None: all)."""
    if rank is None:
        return lambda line: True

    def keep(line: str) -> bool:
        tag = line_rank(line)
        if tag is None:
            return True
        kind, number = tag
        return number == rank if kind == "rank" else number == node_rank

    return keep


def last_lines(lines: Iterable[str], count: int | None) -> list[str]:
    items = list(lines)
    if count is None:
        return items
    return items[-count:] if count > 0 else []


def last_lines_per_rank(lines: Iterable[str], count: int | None) -> list[str]:
    """The last `count` lines of each rank (`[rank R]`), and of the other lines together
    (node and untagged lines), in their order."""
    items = list(lines)
    if count is None:
        return items
    groups: dict[object, list[int]] = {}
    for index, line in enumerate(items):
        tag = line_rank(line)
        groups.setdefault(tag if tag and tag[0] == "rank" else None, []).append(index)
    kept = {i for indexes in groups.values() for i in (indexes[-count:] if count > 0 else [])}
    return [line for index, line in enumerate(items) if index in kept]


def print_published_logs(job_url: str, *, rank: int | None = None, tail: int | None = None,
                         storage: StorageSettings | None = None, out: TextIO | None = None,
                         err: TextIO | None = None) -> bool:
    """Print the rank logs a job published under `<job_url>/logs/` (one rank, or all of
    them rank after rank), each line tagged `[rank R]`. False when there are none."""
    out, err = out or sys.stdout, err or sys.stderr
    with open_store(job_url, (storage or StorageSettings()).options(progress=False)) as store:
        try:
            listing = store.list(LOGS_DIR)
        except NotFoundError:
            listing = {}
        files = {}
        for key in listing:
            rank_number = rank_of_log(key)
            if rank_number is not None:
                files[rank_number] = key
        chosen = sorted(files) if rank is None else [r for r in (rank,) if r in files]
        if not chosen:
            what = "any rank" if rank is None else f"rank {rank}"
            err.write(f"leo-launch: no logs of {what} published under {job_url}/logs\n")
            return False
        for number in chosen:  # streamed: --tail keeps only the last lines of each rank
            lines = (f"[rank {number}] {line}" for line in iter_lines(store, files[number]))
            if tail is not None:
                lines = deque(lines, maxlen=max(tail, 0))
            for line in lines:
                out.write(line + "\n")
    out.flush()
    return True
