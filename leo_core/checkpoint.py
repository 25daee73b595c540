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

    python -m leo_core.checkpoint convert IN OUT --names modelzoo|leo
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint; the message is one line."""


@dataclass
class Checkpoint:
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    state: dict[str, Any]
    path: Path


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


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
    from leo_core.ckpt_format import CKPT_NAME, save_ckpt

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


def resolve(path: str | Path, which: str = "latest") -> Path:
    """A step directory from a training output dir, its checkpoints dir, a pointer
    file or the step directory itself."""
    path = Path(path)
    if path.is_dir() and _has_weights(path):
        return path
    if path.is_dir():
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        path = root / f"{which}.json"
    if path.suffix == ".json":
        try:
            pointer = json.loads(path.read_text())
            step_dir = path.parent / pointer["path"]
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint: {path} does not exist") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"checkpoint pointer {path} is unreadable") from None
        if not _has_weights(step_dir):
            raise CheckpointError(f"checkpoint {step_dir} named by {path.name} is missing")
        return step_dir
    raise CheckpointError(f"no checkpoint at {path}")


def _has_weights(step_dir: Path) -> bool:
    # leo.ckpt alone: a step directory fetched in .ckpt format (evaluation, not resume).
    return (step_dir / "weights.npz").exists() or (step_dir / "leo.ckpt").exists()


def load(path: str | Path, which: str = "latest") -> Checkpoint:
    step_dir = resolve(path, which)
    if not (step_dir / "weights.npz").exists():
        raise CheckpointError(f"checkpoint {step_dir} has no weights.npz (resuming needs the .npz files)")
    try:
        with np.load(step_dir / "weights.npz") as weights:
            params = {k: weights[k] for k in weights.files}
        optimizer = {}
        if (step_dir / "optimizer.npz").exists():
            with np.load(step_dir / "optimizer.npz") as opt:
                optimizer = {k: opt[k] for k in opt.files}
        state = json.loads((step_dir / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {step_dir} is unreadable: {err}") from None
    return Checkpoint(int(state["step"]), params, optimizer, state, step_dir)


if __name__ == "__main__":
    import sys

    from leo_core.ckpt_format import main

    sys.exit(main())
