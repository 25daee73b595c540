"""leo_core.hostmem: glibc keeps freed arrays in the heap for the training process."""

from __future__ import annotations

import subprocess
import sys

from leo_core import hostmem

PROBE = """
import numpy as np, resource, sys
sys.path.insert(0, ".")
from leo_core import hostmem
if sys.argv[1] == "keep":
    assert hostmem.keep_freed_memory()
def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # a step's host arrays: several megabytes-sized ones, freed together
    arrays = [np.ones(500_000, np.float32) for _ in range(5)]
    del arrays
for _ in range(3):  # warm up
    step()
before = minor_faults()
for _ in range(20):
    step()
print(minor_faults() - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())


def test_freed_arrays_are_reused_instead_of_faulted_in_again():
    # With glibc's defaults the 10 MB freed together at the top of the heap is returned to
    # the kernel (above the trim threshold, twice the largest array) and faulted in again:
    # ~2,400 page faults a step.
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 20 * 1000, default
    assert kept < default / 10, (kept, default)


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LEO_KEEP_FREED_MEMORY", "0")
    assert hostmem.keep_freed_memory() is False
