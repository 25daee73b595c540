"""Processes of a launch found by a mark in their environment, and stopped for good.

msrun starts each worker in a session of its own, so neither the process tree nor a
process group finds them all once msrun is gone: every process of a job carries a
variable (`LEO_BOOTSTRAP_MARK`, `LEO_LOCAL_JOB`) and is found by it.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def marked_processes(var: str, value: str, exclude: set[int] | None = None) -> list[Any]:
    """Live processes whose environment has `var=value` (all of a launch: msrun starts
    each worker in a session of its own, so neither the process tree nor a process group
    finds them all once msrun is gone)."""
    import psutil

    found = []
    exclude = exclude or set()
    for proc in psutil.process_iter():
        if proc.pid in exclude or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(var) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def kill_processes(procs: list[Any], grace: float = 0.0) -> None:
    """SIGTERM (when `grace` > 0) then SIGKILL `procs` and their process groups (never
    our own group)."""
    import psutil

    own = os.getpgrp()
    if grace > 0:
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace)
    groups = set()
    for proc in procs:
        try:
            groups.add(os.getpgid(proc.pid))
        except OSError:
            pass
    for group in groups - {own, 0, 1}:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def kill_marked(var: str, value: str, exclude: set[int] | None = None, grace: float = 0.0) -> int:
    """Kill every process marked `var=value`, repeating until none is left; returns how
    many were found."""
    total = 0
    for _ in range(5):
        procs = marked_processes(var, value, exclude)
        if not procs:
            break
        total += len(procs)
        kill_processes(procs, grace)
        grace = 0.0
    return total


def pid_alive(pid: int) -> bool:
    """Whether a process of that id exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
