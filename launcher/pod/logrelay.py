"""The bootstrap's output: every line on stdout tagged with its origin (`[node K] ...` for
the bootstrap itself, `[rank R] ...` for a training process), and the relay that follows
msrun's worker logs, writes them out tagged and keeps each rank's own log file."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from launcher.outputs.layout import rank_log

# msrun's own chatter in a worker log, not the worker's output
NOISE = re.compile(rb"^\[(INFO|DEBUG)\] ")
# MindSpore's notes on its compile cache (leo_core.compile_cache), on every run: a cold
# cache's missing hash file, a warm one's "use the cache"; a damaged file is recompiled
CACHE_NOTES = re.compile(rb"^\[WARNING\] PIPELINE\(.*\] (CanLoadCache\] Open the hash file .* failed|"
                         rb"GetCompileCacheResource\] Check the consistency of dependency files hash failed|"
                         rb"GetCachedFuncGraph\] Use the compilation cache and execute the backend actions only)")


class Output:
    """Thread-safe writer of tagged lines to stdout."""

    def __init__(self, stream: TextIO | None = None, node_rank: int | str | None = None) -> None:
        self.stream = stream or sys.stdout
        self.node_rank = node_rank
        self.reason = ""  # the last failure() line
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(line.rstrip("\n") + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone: keep training, the rank logs still get everything

    def failure(self, text: str) -> None:
        """A node line that says why the node fails (its pod's termination message)."""
        self.reason = " ".join(str(text).split())
        self.node(text)

    def node(self, text: str) -> None:
        tag = "?" if self.node_rank is None else self.node_rank
        for line in str(text).splitlines() or [""]:
            self.write(f"[node {tag}] {line}")

    def rank(self, rank: int, text: str) -> None:
        self.write(f"[rank {rank}] {text}")


class LogRelay(threading.Thread):
    """Follows msrun's `worker_<r>.log` of this node's ranks: every new line goes to stdout
    as `[rank r] line` and is appended to `<logs>/rank-<r>.log` (what gets published)."""

    def __init__(self, msrun_dir: Path, ranks: list[int], logs_dir: Path, out: Output,
                 interval: float = 0.3) -> None:
        super().__init__(name="leo-log-relay", daemon=True)
        self.msrun_dir, self.ranks, self.logs_dir, self.out = msrun_dir, ranks, logs_dir, out
        self.interval = interval
        self._halt = threading.Event()
        self._inputs: dict[int, Any] = {}
        self._partial: dict[int, bytes] = {r: b"" for r in ranks}
        logs_dir.mkdir(parents=True, exist_ok=True)
        self._outputs = {r: open(logs_dir / rank_log(r), "ab") for r in ranks}  # noqa: SIM115

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.pump()
        self.pump(final=True)

    def pump(self, final: bool = False) -> None:
        for rank in self.ranks:
            handle = self._inputs.get(rank)
            if handle is None:
                try:
                    handle = self._inputs[rank] = open(self.msrun_dir / f"worker_{rank}.log", "rb")  # noqa: SIM115
                except FileNotFoundError:
                    continue
            data = self._partial[rank] + handle.read()
            lines = data.split(b"\n")
            self._partial[rank] = lines.pop()
            if final and self._partial[rank]:
                lines.append(self._partial[rank])
                self._partial[rank] = b""
            for raw in lines:
                self.emit(rank, raw)
            self._outputs[rank].flush()

    def emit(self, rank: int, raw: bytes) -> None:
        raw = raw.rstrip(b"\r")
        if NOISE.match(raw) or CACHE_NOTES.match(raw):
            return
        self._outputs[rank].write(raw + b"\n")
        self.out.rank(rank, raw.decode("utf-8", errors="replace"))

    def write_line(self, rank: int, text: str) -> None:
        """A line of our own into rank `rank`'s log (e.g. the evaluation's output)."""
        self.emit(rank, text.encode())
        self._outputs[rank].flush()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()
        else:
            self.pump(final=True)

    def close(self) -> None:
        self.stop()
        for handle in [*self._inputs.values(), *self._outputs.values()]:
            handle.close()


