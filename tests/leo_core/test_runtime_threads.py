"""leo_core.runtime_threads: MindSpore's runtime threads confined to all usable cores but one
(issue 25), checked on real MindSpore threads in a fresh process (the affinity of a test
process's own threads would outlive the test)."""

import fcntl
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from leo_core import runtime_threads, train

# Runs one small graph (MindSpore starts its thread pool), then confines; prints what it did
# and every thread's cores by name. A file: MindSpore compiles from the function's source.
PROBE = """
import json, os, sys
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {int(sys.argv[1])})
import mindspore as ms
import numpy as np
from leo_core import runtime_threads
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
@ms.jit
def product(a, b):
    return ms.ops.matmul(a, b) + 1.0
x = ms.Tensor(np.ones((64, 64), np.float32))
product(x, x).asnumpy()
cores = runtime_threads.confine()
threads = {}
for tid in os.listdir("/proc/self/task"):
    name = open(f"/proc/self/task/{tid}/comm").read().strip()
    threads.setdefault(name, []).append(sorted(os.sched_getaffinity(int(tid))))
print("PROBE " + json.dumps({"cores": sorted(cores) if cores else None, "threads": threads,
                             "usable": sorted(os.sched_getaffinity(0))}))
"""


def probe(folder, *args, env=None):
    """The probe's report; its temporary directory (where the machine-wide lock lives) is
    `folder`, so that a training process elsewhere on this machine cannot hold it."""
    script = folder / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TMPDIR": str(folder), **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.split("PROBE ")[1])


def runtime(threads):
    return {name: cores for name, cores in threads.items() if name.startswith(runtime_threads.RUNTIME_THREAD_PREFIXES)}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_the_runtime_threads_leave_the_first_core_to_the_others(tmp_path):
    seen = probe(tmp_path)
    usable = seen["usable"]
    assert seen["cores"] == usable[1:]
    assert runtime(seen["threads"]), "MindSpore started no ActorThread/KernelThread"
    for name, cores in runtime(seen["threads"]).items():
        assert cores == [usable[1:]] * len(cores), name
    # The main thread (the process's name) and the others keep every usable core.
    others = [cores for name, cores in seen["threads"].items() if name not in runtime(seen["threads"])]
    assert others and all(c == usable for group in others for c in group)


def test_nothing_is_confined_on_one_core_or_when_turned_off(tmp_path):
    first = min(os.sched_getaffinity(0))
    one = probe(tmp_path, first)
    assert one["cores"] is None and one["usable"] == [first]
    off = probe(tmp_path, env={runtime_threads.ENV: "0"})
    assert off["cores"] is None
    assert all(c == off["usable"] for group in off["threads"].values() for c in group)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_a_second_training_process_on_the_machine_keeps_mindspores_layout(tmp_path):
    """While one process holds the machine's lock (a first job, a sweep's first trial), a
    second one does not stack its runtime threads on the same cores; once the holder is
    gone, the lock is free again."""
    with open(tmp_path / runtime_threads.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = probe(tmp_path)
    assert second["cores"] is None
    assert all(c == second["usable"] for group in second["threads"].values() for c in group)
    assert probe(tmp_path)["cores"] == second["usable"][1:]


@pytest.mark.parametrize("world, device, confined", [(1, "CPU", True), (2, "CPU", False), (1, "Ascend", False)])
def test_the_trainer_confines_only_a_single_cpu_process(monkeypatch, world, device, confined):
    import mindspore as ms

    calls = []
    monkeypatch.setattr(runtime_threads, "confine", lambda: calls.append(1))
    monkeypatch.setattr(ms, "get_context", lambda key: device if key == "device_target" else None)
    train.Trainer._confine_runtime_threads(SimpleNamespace(comm=SimpleNamespace(world=world)))
    assert bool(calls) == confined
