"""The test network guard (leo_netguard.py) and how the tests install it everywhere."""

from __future__ import annotations

import os
from pathlib import Path

from tests.netguard.leo_netguard import OPT_OUT, TEST_NETWORK, install, installed

GUARD_DIR = Path(__file__).resolve().parent

__all__ = ["GUARD_DIR", "OPT_OUT", "TEST_NETWORK", "activate", "installed", "pythonpath"]


def pythonpath(*rest: str) -> str:
    """A PYTHONPATH with the guard's folder first (for env dicts built from scratch)."""
    parts = [str(GUARD_DIR), *(p for r in rest for p in r.split(os.pathsep) if p)]
    return os.pathsep.join(dict.fromkeys(parts))


def activate() -> None:
    """Guard this process and every Python process it starts from os.environ."""
    install()
    os.environ.pop(OPT_OUT, None)  # the opt-out is for one build step, never a whole run
    os.environ["PYTHONPATH"] = pythonpath(os.environ.get("PYTHONPATH", ""))
