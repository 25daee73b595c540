"""MindSpore's graph compile cache for restarts, in a folder keyed on what decides the graphs.

With `LEO_COMPILE_CACHE=DIR` (the pod's bootstrap sets `<cache dir>/compile-cache`, which
survives a container restart), `leo_core.train` turns on MindSpore's compile cache
(`MS_COMPILER_CACHE_ENABLE`, `MS_COMPILER_CACHE_PATH`) in `DIR/<key>/` before its first
graph. A restart then loads its `ms.jit` graphs instead of compiling them: mini_1shot's
first training step took 1.7 s cold and 0.3 s warm on 2 cores (tests/benchmarks/README.md).

Why the key. MindSpore 2.10 names the cached graphs by their order of compilation
(`rank_<RANK_ID>/graph_cache/compile_cache_<n>.mindir`) and checks only a hash of the entry
script and the modules it imports at its top level that are not installed packages: two
functions compiled in the other order get each other's graph (seen: `g(x)` returned `f(x)`),
and an installed or lazily imported module (leo_core.model, in the images) is not checked.
So the folder's name hashes the MindSpore and Python versions, every leo_core source file
(the fused operators' C++ source and library path too), the experiment config, the device,
the world size and the profiler flag; and every run compiles the training step first (a
fresh one before its step-0 validation, `Trainer.compile_training_step`), so a fresh run's
cache serves its restarts, the first one included. A damaged cache file is recompiled by MindSpore itself
(seen: "Failed to load the compilation cache file. Execute all the compilation actions").
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from leo_core import fused_ops

ENV = "LEO_COMPILE_CACHE"
_SOURCES = Path(__file__).resolve().parent


def cache_key(config: dict, *, device: str, world: int, profile: bool = False) -> str:
    """The folder name: a hash of everything that decides which graphs compile, and in which order."""
    import mindspore

    digest = hashlib.sha256()
    # The step limit decides no graph: a run extended with more steps keeps its cache.
    config = {key: value for key, value in config.items() if key != "num_steps_limit"}
    library = fused_ops.active_library()
    fixed = {"mindspore": mindspore.__version__, "python": sys.version, "config": config, "device": device,
             "world": world, "profile": profile,
             # The graphs name the fused operators' library by its path (None: built-in operators).
             "fused_ops": str(library) if library is not None else None}
    digest.update(json.dumps(fixed, sort_keys=True, default=str).encode())
    for path in sorted([*_SOURCES.rglob("*.py"), *_SOURCES.rglob("*.cc")]):
        digest.update(str(path.relative_to(_SOURCES)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def enable(key: str, environ=os.environ) -> Path | None:
    """Turn MindSpore's compile cache on in `$LEO_COMPILE_CACHE/<key>` (read at each graph's
    compile, so before the first one); None, and nothing changed, without the variable."""
    base = environ.get(ENV, "").strip()
    if not base:
        return None
    path = Path(base) / key
    path.mkdir(parents=True, exist_ok=True)
    environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    environ["MS_COMPILER_CACHE_PATH"] = str(path)
    return path
