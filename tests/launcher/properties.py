"""Shared settings and strategies of the property-based tests (Hypothesis, issue 12).

Few examples and a fixed seed, so `make test` stays quick and repeatable; for a deeper
search: LEO_HYPOTHESIS_EXAMPLES=2000 python -m pytest tests/launcher -k properties"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("LEO_HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=3000, database=None,
                    derandomize="LEO_HYPOTHESIS_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Characters that break parsers: separators, escapes, controls, non-ASCII, bidi, emoji.
HOSTILE = "aZ09-_./:?#@%\\ \t\n\r\x00\x1b\x7f~=,;*&[]{}'\"é\u202e\U0001f600"
hostile_text = st.text(alphabet=HOSTILE, max_size=40) | st.text(max_size=40)


def one_line(err: BaseException) -> None:
    """An error fit for the CLI: a non-empty message of one line."""
    text = str(err).strip()
    assert text and len(text.splitlines()) == 1, repr(text)
