"""Keep MindSpore's CPU runtime threads off one core, for the host-input thread.

A meta-training step passes through MindSpore's runtime threads: the pipeline's queue
threads (frontend, infer, resize, launch) hand the graph to the actor thread, which runs
the operators and hands halves of its matrix products to a kernel thread, spinning
(sched_yield) until they come back. Meanwhile the prefetch thread (`leo_core.prefetch`)
draws the next step's episodes and noise, ~8 ms of CPU per 1-shot step. On a 2-core machine,
wherever it runs it takes the core of one of those threads, and every hand-off to that
thread waits. With all of them confined to all usable cores but the first, the prefetch and
main threads have that core to themselves. Measured on 2 cores, alternating layouts in one
process every 10 steps: 1-shot 19.6 → 16.1 ms, 5-shot 43.0 → 40.8 ms per step against the
actor and kernel threads alone confined, which were themselves 24 → 21 ms (1-shot) and
59 → 47 ms (5-shot) against no confinement, one process each
(tests/benchmarks/README.md, "Issue 25").

Only for a single training process on the CPU (with several ranks on one host each rank
would confine its runtime to the same cores), only with at least two usable cores, and only
in the first such process on the machine: it holds a lock file (in the temporary directory)
until it exits, and another training process beside it (a local sweep's parallel trials,
a second job) keeps MindSpore's own layout rather than stack its runtime on the same cores.
`LEO_CONFINE_RUNTIME=0` turns it off.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

ENV = "LEO_CONFINE_RUNTIME"
LOCK_NAME = "leo-launch-runtime-threads.lock"
_HELD: list[int] = []  # the lock's file descriptor while this process holds it
# MindSpore's thread pool names its threads ActorThread_<i> and KernelThread_<i> (mindrt);
# its runtime pipeline's threads are named after their queues.
RUNTIME_THREAD_PREFIXES = ("ActorThread_", "KernelThread_", "frontend_queue", "infer_queue", "resize_queue",
                           "launch_queue")


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


def _claim() -> bool:
    """Whether this process holds (now or already) the machine's lock, kept until it exits."""
    if _HELD:
        return True
    try:
        fd = os.open(Path(tempfile.gettempdir()) / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another process holds it
        os.close(fd)
        return False
    _HELD.append(fd)
    return True


def confine(env=os.environ) -> set[int] | None:
    """Confine the runtime threads (alive now: call after the first graph ran) to all usable
    cores but the first; returns those cores, or None when nothing was done (fewer than two
    cores, no runtime thread, `LEO_CONFINE_RUNTIME=0`, or another process on the machine
    confines its own)."""
    if env.get(ENV, "1").strip() == "0":
        return None
    usable = sorted(os.sched_getaffinity(0))
    threads = runtime_thread_ids()
    if len(usable) < 2 or not threads or not _claim():
        return None
    runtime_cores = set(usable[1:])
    for tid in threads:
        try:
            os.sched_setaffinity(tid, runtime_cores)
        except OSError:  # ended meanwhile
            continue
    return runtime_cores
