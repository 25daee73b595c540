"""How many CPU cores this process may use, and how many MindSpore kernel threads to give it.

MindSpore's CPU kernel pool defaults to every core of the machine. A training process also
runs the prefetch thread (the next step's episodes and noise, leo_core.prefetch) and the
Python main thread, and a container usually gets fewer cores than its machine has: on 2
cores the default pool and the prefetch thread fight for the same cores (tests/benchmarks/
README.md has the measurements). No MindSpore import here: the pod's bootstrap uses it too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX_FILE = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cpu_limit(path: Path | None = None) -> int | None:
    """The container's CPU limit rounded up to whole cores, None when unlimited or unknown."""
    try:
        quota, period = (path or CPU_MAX_FILE).read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def usable_cores(limit_file: Path | None = None) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup's CPU limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cpu_limit(limit_file)
    return max(1, min(cores, limit) if limit is not None else cores)


def kernel_threads(cores: int, workers: int = 1) -> int:
    """MindSpore kernel threads for each of `workers` training processes sharing `cores`:
    their share, less one core for the process's prefetch and Python threads."""
    return max(1, cores // max(1, workers) - 1)
