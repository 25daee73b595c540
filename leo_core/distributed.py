"""Data-parallel context: rank, world size and a sum all-reduce over host arrays.

A launch is distributed when msrun / the dynamic-cluster variables (MS_ROLE,
MS_WORKER_NUM) or a rank table (RANK_TABLE_FILE with RANK_SIZE > 1) are present.
Ranks exchange one flat float32 vector per step (all gradients and a few scalars);
each rank pre-scales its part so that the SUM is the global mean objective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEVICES = ("CPU", "GPU", "Ascend")


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


@dataclass
class Comm:
    rank: int = 0
    world: int = 1
    _reduce: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, vector: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return vector
        import mindspore as ms

        return self._reduce(ms.Tensor(np.ascontiguousarray(vector, np.float32))).asnumpy()


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
