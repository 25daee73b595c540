"""A transfer progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024
    return ""


class Progress:
    """Thread-safe byte and file counters with a bar redrawn at most 10 times a second.
    Quiet (counters only) when disabled or when the stream is not a terminal."""

    WIDTH = 24

    def __init__(self, label: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.total_bytes = 0
        self.total_files = 0
        self.done_bytes = 0
        self.done_files = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def set_total(self, nbytes: int, files: int) -> None:
        with self._lock:
            self.total_bytes, self.total_files = nbytes, files
        self._draw(force=True)

    def add(self, nbytes: int) -> None:
        """Bytes transferred (a callback for transfers)."""
        with self._lock:
            self.done_bytes += nbytes
        self._draw()

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1
        self._draw()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            done, total = self.done_bytes, self.total_bytes
            files, total_files = self.done_files, self.total_files
        fraction = min(1.0, done / total) if total else (1.0 if files >= total_files else 0.0)
        filled = int(fraction * self.WIDTH)
        rate = done / max(now - self._start, 1e-6)
        line = (f"\r{self.label} {fraction * 100:3.0f}% [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                f"{_size(done)}/{_size(total)} {_size(rate)}/s {files}/{total_files} files")
        self.stream.write(line.ljust(78))
        self.stream.flush()
        self._drawn = True
