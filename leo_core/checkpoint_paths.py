"""Where a checkpoint is: a step directory from a training output directory, its
checkpoints directory, a pointer file (latest.json, best.json) or the step directory
itself. Shared by the checkpoint writer (leo_core.checkpoint) and the weights-file
reader (leo_core.ckpt_format), which both depend on it and not on each other."""

from __future__ import annotations

import json
from pathlib import Path


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint; the message is one line."""


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


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
