"""Text from jobs shown on a terminal: control bytes in a log (escape sequences, carriage
returns, bells) are printed escaped, so a log cannot rewrite the screen or the title."""

from __future__ import annotations

import re
from typing import TextIO

# C0 controls but newline and tab, DEL, and the C1 controls (8-bit escape sequences)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EscapingWriter:
    """A text stream that escapes control characters on their way to `stream`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(escape_controls(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def for_terminal(stream: TextIO) -> TextIO:
    """`stream`, escaping control characters when it is a terminal (a file or a pipe gets
    the log's bytes as they are)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return EscapingWriter(stream) if tty else stream  # type: ignore[return-value]
