"""Experiment registry and configuration for LEO.

Imports no MindSpore: the launcher reads this registry to render jobs.
Keys keep the names of the original DeepMind `config.py` flags, so a user can
move values between the original, the ModelZoo port and this project.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from leo_core import bounded

CONFIG_DIR = Path(__file__).parent / "configs"
# glyphs: the real-image benchmark `python -m leo_core.glyphs` builds offline.
DATASETS = ("miniImageNet", "tieredImageNet", "glyphs")
CROPS = ("center", "multiview")


class ConfigError(ValueError):
    """A bad experiment name, config file or override; the message is one line."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of one LEO experiment (values of the original's tuned runs)."""

    name: str
    dataset_name: str = "miniImageNet"
    embedding_crop: str = "center"
    train_on_val: bool = False
    # Task shape.
    num_classes: int = 5
    num_tr_examples_per_class: int = 1
    num_val_examples_per_class: int = 15  # queries per class in meta-training
    total_examples_per_class: int = 600  # validation/test queries = this - K
    # Model.
    num_latents: int = 64
    inner_unroll_length: int = 5
    finetuning_unroll_length: int = 5
    inner_lr_init: float = 1.0
    finetuning_lr_init: float = 0.001
    dropout_rate: float = 0.5
    kl_weight: float = 1.0
    encoder_penalty_weight: float = 1e-9
    l2_penalty_weight: float = 1e-8
    orthogonality_penalty_weight: float = 1e-3
    # Outer loop. metatrain_batch_size is the GLOBAL meta-batch: under data
    # parallelism the tasks of one step are split across ranks.
    metatrain_batch_size: int = 12
    metavalid_batch_size: int = 200
    metatest_batch_size: int = 200
    num_steps_limit: int = 100_000
    outer_lr: float = 1e-4
    gradient_threshold: float = 0.1
    gradient_norm_threshold: float = 0.1
    checkpoint_steps: int = 1000
    num_validation_batches: int = 10

    def __post_init__(self) -> None:
        _check_values(self)

    @property
    def eval_queries_per_class(self) -> int:
        return self.total_examples_per_class - self.num_tr_examples_per_class

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> ExperimentConfig:
        """A copy with `key=value` strings (or a mapping) applied, types checked."""
        if isinstance(overrides, list):
            overrides = dict(parse_override(item) for item in overrides)
        values = {key: coerce_value(key, value) for key, value in overrides.items()}
        return dataclasses.replace(self, **values)


# Bounds (lowest, highest) of every numeric field, checked whenever a config is built: so
# `leo_core.train` and the launcher's render/submit refuse the same values (exit 2), instead
# of pods crashing on a 10^20 batch or allocating 298 GiB for num_latents=100000.
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    "num_classes": (2, 1000),
    "num_tr_examples_per_class": (1, 1000),
    "num_val_examples_per_class": (1, 1000),
    "total_examples_per_class": (1, 100_000),
    "num_latents": (1, 4096),
    "inner_unroll_length": (0, 1000),
    "finetuning_unroll_length": (0, 1000),
    "inner_lr_init": (0, 1e6),
    "finetuning_lr_init": (0, 1e6),
    "kl_weight": (0, 1e6),
    "encoder_penalty_weight": (0, 1e6),
    "l2_penalty_weight": (0, 1e6),
    "orthogonality_penalty_weight": (0, 1e6),
    "metatrain_batch_size": (1, 10_000),
    "metavalid_batch_size": (1, 10_000),
    "metatest_batch_size": (1, 10_000),
    "num_steps_limit": (1, 10**9),
    "outer_lr": (0, 10),
    "gradient_threshold": (0, 1e6),
    "gradient_norm_threshold": (0, 1e6),
    "checkpoint_steps": (1, 10**9),
    "num_validation_batches": (1, 100_000),
}
_POSITIVE = {"outer_lr"} | {key for key, (low, _) in FIELD_BOUNDS.items() if low >= 1}

FIELD_TYPES: dict[str, type] = {f.name: f.type for f in fields(ExperimentConfig)}  # type: ignore[misc]
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _field_type(key: str) -> type:
    declared = FIELD_TYPES[key]
    return _TYPES[declared] if isinstance(declared, str) else declared


def _check_values(cfg: ExperimentConfig) -> None:
    if cfg.dataset_name not in DATASETS:
        raise ConfigError(f"dataset_name must be one of {', '.join(DATASETS)}, not {cfg.dataset_name!r}")
    if cfg.embedding_crop not in CROPS:
        raise ConfigError(f"embedding_crop must be one of {', '.join(CROPS)}, not {cfg.embedding_crop!r}")
    if cfg.dataset_name == "tieredImageNet" and cfg.embedding_crop != "center":
        raise ConfigError("tieredImageNet embeddings exist only for embedding_crop=center")
    for key, (low, high) in FIELD_BOUNDS.items():
        value = getattr(cfg, key)
        if value < low or (low == 0 and key in _POSITIVE and value == 0):
            raise ConfigError(f"{key} must be {'positive' if key in _POSITIVE else 'non-negative'}"
                              f", got {value}")
        if value > high:
            raise ConfigError(f"{key} must be at most {high:g}, got {value:g}")
    if not 0.0 <= cfg.dropout_rate < 1.0:
        raise ConfigError(f"dropout_rate must be in [0, 1), got {cfg.dropout_rate}")
    if cfg.num_classes < 2:
        raise ConfigError("num_classes must be at least 2")
    if cfg.total_examples_per_class <= cfg.num_tr_examples_per_class:
        raise ConfigError(
            "total_examples_per_class must exceed num_tr_examples_per_class "
            f"({cfg.total_examples_per_class} <= {cfg.num_tr_examples_per_class})"
        )


def coerce_value(key: str, value: Any) -> Any:
    """Convert a string or YAML value to the declared type of `key`, or raise ConfigError."""
    if key not in FIELD_TYPES or key == "name":
        if key == "name":
            raise ConfigError("unknown config key 'name' (choose the experiment with --experiment)")
        close = difflib.get_close_matches(key, [k for k in FIELD_TYPES if k != "name"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")
    kind = _field_type(key)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} expects a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{key} expects a string, got {value!r}")
    return value


def parse_override(item: str) -> tuple[str, str]:
    """Split one `key=value` override."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or not value.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value")
    coerce_value(key, value)  # reject unknown keys and bad values early
    return key, value.strip()


def experiment_names() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = bounded.yaml_load(bounded.read_text(path, what="config"), f"config {path}")
    except bounded.BoundedFileError as err:
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return data


def load_experiment(
    name: str, overrides: dict[str, Any] | list[str] | None = None
) -> ExperimentConfig:
    """The registered experiment `name` ("mini_5shot", ...) with overrides applied."""
    names = experiment_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(names)}"
        raise ConfigError(f"unknown experiment {name!r}{hint}")
    values = _read_yaml(CONFIG_DIR / f"{name}.yaml")
    cfg = ExperimentConfig(name=name, **{k: coerce_value(k, v) for k, v in values.items()})
    return cfg.with_overrides(overrides or {})


def load_config_file(
    path: str | Path, experiment: str | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """A YAML file of keys laid over an experiment (its `name` key, or `experiment`)."""
    values = dict(_read_yaml(Path(path)))
    base = experiment or values.pop("name", None)
    values.pop("name", None)
    if not base:
        raise ConfigError(f"config {path} names no experiment (add name: mini_5shot or pass --experiment)")
    return load_experiment(str(base), values).with_overrides(overrides or [])


def published_accuracy(name: str) -> dict[str, tuple[float, float]]:
    """The published meta-test accuracy of experiment `name` as {"paper": (mean %, ci95 %),
    "modelzoo": (...)}; empty for experiments nobody published (configs/published.json)."""
    import json

    data = json.loads((CONFIG_DIR / "published.json").read_text())
    return {source: (float(values[name][0]), float(values[name][1]))
            for source, values in data.items() if isinstance(values, dict) and name in values}


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
