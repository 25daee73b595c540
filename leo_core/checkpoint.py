"""Checkpoints on local disk, in the layout the launcher publishes unchanged.

    <out>/checkpoints/step-<n>/weights.npz     model parameters by name
    <out>/checkpoints/step-<n>/leo.ckpt        the same parameters, `mindspore.save_checkpoint`
    <out>/checkpoints/step-<n>/optimizer.npz   Adam moments and step count
    <out>/checkpoints/step-<n>/state.json      step, RNG state, best so far, experiment
    <out>/checkpoints/latest.json              {"step": n, "path": "step-<n>"}
    <out>/checkpoints/best.json                {"step": n, "path": "step-<n>", "accuracy": a}

A step directory appears whole (written under a temporary name, then renamed) and
pointers are replaced atomically after it, so a reader never sees a partial one.
Only the directories the two pointers name are kept. `leo_core.ckpt_format` reads and
converts weights files (`.ckpt`/`.npz`, this project's or the ModelZoo port's names):

    python -m leo_core.checkpoint convert IN OUT [--names modelzoo|leo]   # default by OUT's suffix
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leo_core.checkpoint_paths import (  # noqa: F401 - part of this module's interface
    CheckpointError,
    checkpoints_dir,
    resolve,
)
from leo_core.ckpt_format import CKPT_NAME, check_finite, read_npz, save_ckpt


@dataclass
class Checkpoint:
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    state: dict[str, Any]
    path: Path


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(out: str | Path, step: int, params: dict[str, np.ndarray], optimizer: dict[str, np.ndarray],
         state: dict[str, Any]) -> Path:
    """Write step-<step> and point latest.json at it."""
    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.savez(tmp / "weights.npz", **params)

    save_ckpt(tmp / CKPT_NAME, params)  # for MindSpore users; resume reads the .npz
    np.savez(tmp / "optimizer.npz", **optimizer)
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json_atomic(root / "latest.json", {"step": step, "path": final.name})
    return final


def mark_best(out: str | Path, step: int, accuracy: float) -> None:
    root = checkpoints_dir(out)
    _write_json_atomic(root / "best.json", {"step": step, "path": f"step-{step}", "accuracy": accuracy})


def prune(out: str | Path) -> None:
    """Remove step directories that neither pointer names."""
    root = checkpoints_dir(out)
    keep = set()
    for pointer in ("latest.json", "best.json"):
        try:
            keep.add(json.loads((root / pointer).read_text())["path"])
        except (OSError, ValueError, KeyError):
            pass
    for path in root.glob("step-*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def load(path: str | Path, which: str = "latest") -> Checkpoint:
    """A complete, well-formed checkpoint, or CheckpointError (one line naming the file)."""
    step_dir = resolve(path, which)
    if not (step_dir / "weights.npz").exists():
        raise CheckpointError(f"checkpoint {step_dir} has no weights.npz (resuming needs the .npz files)")
    params = read_npz(step_dir / "weights.npz")
    check_finite(params, step_dir / "weights.npz")
    optimizer = {}
    if (step_dir / "optimizer.npz").exists():
        optimizer = read_npz(step_dir / "optimizer.npz")
        check_finite(optimizer, step_dir / "optimizer.npz")
    state_file = step_dir / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_file} is unreadable: {err}") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{state_file} has no valid step (got {step!r})")
    return Checkpoint(step, params, optimizer, state, step_dir)


if __name__ == "__main__":
    import sys

    from leo_core import ckpt_format

    sys.exit(ckpt_format.main())
