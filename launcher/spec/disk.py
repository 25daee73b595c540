"""How much node disk a pod asks for (issue 23): the `/cache` emptyDir holds the staged
data (a zip is downloaded, then unpacked beside it), the initial weights and the work
folder (checkpoints, logs). Its `sizeLimit` and the pod's `ephemeral-storage` follow.

Sizes: `--cache-size` when given; else, at submit, measured from storage (`cache_size`);
else DEFAULT_CACHE_SIZE with remote data (tieredImageNet's 13 GB as a zip plus the
unpacked tree fit) and MIN_CACHE_SIZE without.
"""

from __future__ import annotations

import math
from typing import Any

from launcher.spec import names as syn

GI = 2**30
DEFAULT_CACHE_SIZE = "32Gi"  # remote --data-url of unknown size
MIN_CACHE_SIZE = "4Gi"  # work folder only: checkpoints, logs, profiler traces
WORK_BYTES = 4 * GI  # the work folder's share beside the data
HEADROOM = 1.25
CONTAINER_BYTES = 2 * GI  # the container's writable layer and /tmp, beside /cache
MAX_CACHE_BYTES = 64 * 2**40  # far above any node's disk


def size_problem(value: Any) -> str | None:
    if not syn.is_quantity(value) or syn.parse_quantity(value) <= 0:
        return "is not a positive Kubernetes quantity (e.g. 20Gi)"
    if syn.parse_quantity(value) > MAX_CACHE_BYTES:
        return "is more than 64Ti"
    return None


def cache_size(data_bytes: int, init_bytes: int = 0, *, zipped: bool = False) -> str:
    """The sizeLimit of /cache for what will be staged: the data (twice for a zip: the
    archive and its unpacked tree), the weights and the work folder, plus headroom."""
    needed = (data_bytes * (2 if zipped else 1) + init_bytes) * HEADROOM + WORK_BYTES
    return f"{math.ceil(needed / GI)}Gi"


def default_cache_size(spec: Any) -> str:
    remote = any(u and u.startswith(("s3://", "obs://")) for u in (spec.data_url, spec.init_url))
    return DEFAULT_CACHE_SIZE if remote else MIN_CACHE_SIZE


def pod_disk(spec: Any) -> tuple[str, str]:
    """(the /cache sizeLimit, the pod's ephemeral-storage request and limit)."""
    cache = spec.cache_size or default_cache_size(spec)
    total = syn.parse_quantity(cache) + CONTAINER_BYTES
    return cache, f"{math.ceil(total / GI)}Gi"
