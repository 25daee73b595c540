"""Data-parallel context: rank, world size and a sum all-reduce over host arrays.

A launch is distributed when msrun / the dynamic-cluster variables (MS_ROLE,
MS_WORKER_NUM) or a rank table (RANK_TABLE_FILE with RANK_SIZE > 1) are present.
Ranks exchange one flat float32 vector per step (all gradients and a few scalars);
each rank pre-scales its part so that the SUM is the global mean objective.

Failure detection. When one rank dies, the others must not hang. `setup()` sets these
MindSpore variables before `init()` unless the environment already sets them (every
process of a job, scheduler included, runs `setup()`, so all agree):

    MS_NODE_TIMEOUT=20              the scheduler declares a worker dead after 20 s
                                    without a heartbeat; on CPU it is also the time a
                                    collective (the all-reduce) waits for a peer
    MS_HEARTBEAT_RETRY_TIMEOUT=15   a worker that cannot reach the scheduler gives up
                                    (kills itself) after 15 s; must stay below
                                    MS_NODE_TIMEOUT (default: 3/4 of it)
    MS_RECEIVE_MSG_TIMEOUT=15       one RPC answer (e.g. a heartbeat reply) is waited
                                    for at most 15 s (MindSpore's default, made explicit)
    MS_TOPO_TIMEOUT=600             cluster formation window, for launches without
                                    msrun; msrun sets it from `--cluster_time_out`

What then happens (MindSpore 2.10, seen on CPU with msrun):
- msrun polls its workers every second; when one exits non-zero it SIGKILLs the other
  workers on its node, waits for the scheduler (if it runs one) and exits 1.
- The scheduler marks the dead rank timed out after MS_NODE_TIMEOUT without heartbeats,
  makes the surviving workers end (MindSpore's failure callback SIGTERMs them) and exits
  non-zero.
- A survivor blocked in the all-reduce gets an error after MS_NODE_TIMEOUT (CPU); the
  trainer then exits at once with status 1 (`leo_core.train` ends a failed rank with
  `os._exit`: MindSpore's normal shutdown would wait for the scheduler).
- If the scheduler itself is gone, a worker gives up after MS_RECEIVE_MSG_TIMEOUT +
  MS_HEARTBEAT_RETRY_TIMEOUT.
Bound: every launcher and rank exits non-zero within 60 s of a worker's death (worst
case MS_NODE_TIMEOUT + MS_RECEIVE_MSG_TIMEOUT + MS_HEARTBEAT_RETRY_TIMEOUT + ~10 s of
polling). Measured on 2 busy cores: msrun 2x2 exits 22 s after a worker is SIGKILLed; with
the scheduler and rank 0 under msrun and rank 1 outside it (as on a second node), killing
rank 0 ends msrun after 23-27 s and rank 1 after 19-24 s. With MindSpore's defaults and
no early exit these were 30 s (2x2), 35 s (msrun) and 71 s (rank 1).
The price on CPU: ranks must reach each all-reduce within MS_NODE_TIMEOUT of each other
(the first step's graph compilation runs on all ranks at once); raise MS_NODE_TIMEOUT
in the environment for very uneven hosts.
On Ascend/GPU the collectives have their own timeouts (HCCL_EXEC_TIMEOUT,
HCCL_CONNECT_TIMEOUT; NCCL's), which these variables do not change.

Device: `--device CPU|GPU|Ascend` (default $LEO_DEVICE, $DEVICE_TARGET, else CPU). On
accelerators the device id is DEVICE_ID (set by msrun and rank tables), else
MS_LOCAL_RANK / LOCAL_RANK, else 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

DEVICES = ("CPU", "GPU", "Ascend")
NODE_TIMEOUT_S = 20
RECEIVE_MSG_TIMEOUT_S = 15
TOPO_TIMEOUT_S = 600


def launched_distributed(env=os.environ) -> bool:
    # msrun runs the script in its scheduler process too (MS_SCHED): there, init()
    # serves the cluster and ends the process when the workers are done.
    if env.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and int(env.get("MS_WORKER_NUM", "1")) > 1:
        return True
    return bool(env.get("RANK_TABLE_FILE")) and int(env.get("RANK_SIZE", "1")) > 1


def default_device(env=os.environ) -> str:
    return env.get("LEO_DEVICE") or env.get("DEVICE_TARGET") or "CPU"


def shard(count: int, rank: int, world: int) -> range:
    """The contiguous share of `count` items (tasks) that `rank` takes; shares differ by at most one."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def failure_timeouts(env=os.environ) -> dict[str, str]:
    """The failure-detection variables (module docstring) to add to `env`: those not set there."""
    node = env.get("MS_NODE_TIMEOUT", "").strip()
    node_s = int(node) if node.isdigit() and int(node) > 0 else NODE_TIMEOUT_S
    wanted = {
        "MS_NODE_TIMEOUT": str(node_s),
        "MS_HEARTBEAT_RETRY_TIMEOUT": str(max(node_s * 3 // 4, 1)),
        "MS_RECEIVE_MSG_TIMEOUT": str(RECEIVE_MSG_TIMEOUT_S),
        "MS_TOPO_TIMEOUT": str(TOPO_TIMEOUT_S),
    }
    return {key: value for key, value in wanted.items() if not env.get(key, "").strip()}


@dataclass
class Comm:
    rank: int = 0
    world: int = 1
    _reduce: object = None
    # Wall time spent in all-reduce calls (waiting for the slowest rank included).
    reduce_seconds: float = 0.0
    reduce_calls: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, vector: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return vector
        import mindspore as ms

        started = time.perf_counter()
        result = self._reduce(ms.Tensor(np.ascontiguousarray(vector, np.float32))).asnumpy()
        self.reduce_seconds += time.perf_counter() - started
        self.reduce_calls += 1
        return result


def idle_scheduler(env=os.environ) -> bool:
    """msrun's scheduler process of a ONE-worker launch: nothing joins a cluster (see
    `launched_distributed`), so the script must do nothing there; it used to run a
    second, duplicate training beside the worker (same output directory, half the CPU)."""
    return env.get("MS_ROLE") == "MS_SCHED" and not launched_distributed(env)


def setup(device: str | None = None) -> Comm:
    """Select the device and, under a distributed launch, join the collective group."""
    import mindspore as ms

    device = device or default_device()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(device, _device_id(device))
    if not launched_distributed():
        return Comm()
    from mindspore import nn, ops
    from mindspore.communication import get_group_size, get_rank, init

    os.environ.update(failure_timeouts())  # read by MindSpore's C++ side at init()
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)

    class _AllReduce(nn.Cell):
        def __init__(self):
            super().__init__()
            self.op = ops.AllReduce(ops.ReduceOp.SUM)

        def construct(self, x):
            return self.op(x)

    return Comm(rank=get_rank(), world=get_group_size(), _reduce=_AllReduce())


def _device_id(device: str) -> int:
    if device == "CPU":
        return 0
    for key in ("DEVICE_ID", "MS_LOCAL_RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0
