"""Keep MindSpore's CPU runtime threads off one core, for the host-input thread.

A meta-training step's graph runs on MindSpore's actor thread, which hands halves of its
matrix products to a kernel thread and spins (sched_yield) until they come back. The
prefetch thread (`leo_core.prefetch`) draws the next step's episodes and noise meanwhile,
~9 ms of CPU per 1-shot step. On a 2-core machine it takes a core from the pair, and the
actor thread then waits for a kernel thread that is not running: measured here, each ms of
prefetch CPU cost ~0.8 ms of step time. With the runtime's threads confined to all cores
but one, their parallel launches run in turn on their cores and never wait for a
descheduled partner, while the prefetch and main threads use the core left free: 1-shot
24.2 → 21.3 ms, 5-shot 59 → 47 ms (tests/benchmarks/README.md, "Issue 25").

Only for a single training process on the CPU (with several ranks on one host each rank
would confine its runtime to the same cores), and only with at least two usable cores.
`LEO_CONFINE_RUNTIME=0` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "LEO_CONFINE_RUNTIME"
# MindSpore's thread pool names its threads ActorThread_<i> and KernelThread_<i> (mindrt).
RUNTIME_THREAD_PREFIXES = ("ActorThread_", "KernelThread_")


def _threads() -> dict[int, str]:
    """This process's threads: {thread id: name}."""
    names = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            names[int(tid)] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
    return names


def runtime_thread_ids() -> list[int]:
    return sorted(tid for tid, name in _threads().items() if name.startswith(RUNTIME_THREAD_PREFIXES))


def confine(env=os.environ) -> set[int] | None:
    """Confine the runtime threads (alive now: call after the first graph ran) to all usable
    cores but the first; returns those cores, or None when nothing was done (fewer than two
    cores, no runtime thread, or `LEO_CONFINE_RUNTIME=0`)."""
    if env.get(ENV, "1").strip() == "0":
        return None
    usable = sorted(os.sched_getaffinity(0))
    threads = runtime_thread_ids()
    if len(usable) < 2 or not threads:
        return None
    runtime_cores = set(usable[1:])
    for tid in threads:
        try:
            os.sched_setaffinity(tid, runtime_cores)
        except OSError:  # ended meanwhile
            continue
    return runtime_cores
