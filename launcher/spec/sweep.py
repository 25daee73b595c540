"""A sweep's trials: the cross product of experiments, seeds and `--grid key=v1,v2`
values, or `--random key=lo:hi[:log] --trials N` draws (seeded, so re-expanding gives
the same trials). Pure data: no backend, no storage. Errors are UsageError (exit 2)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterable
from typing import Any

from launcher.errors import UsageError

# More trials than this need --yes: a typo in --seeds or --grid should not start hundreds of jobs.
MAX_TRIALS_WITHOUT_YES = 16


@dataclasses.dataclass(frozen=True)
class Trial:
    """One job of a sweep: its name, experiment, seed and swept values (text, as --set takes them)."""

    name: str
    experiment: str
    seed: int
    params: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "experiment": self.experiment, "seed": self.seed,
                "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        try:
            return cls(name=str(data["name"]), experiment=str(data["experiment"]), seed=int(data["seed"]),
                       params=tuple((str(k), str(v)) for k, v in dict(data.get("params") or {}).items()))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(f"sweep trial {data!r} is not valid") from err


def parse_list(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")]
    if not text or not all(items):
        raise UsageError(f"{flag} {text!r}: give a comma-separated list without empty items")
    return items


def parse_seeds(text: str) -> list[int]:
    """`N` (seeds 0..N-1) or a list `s1,s2,...`."""
    items = parse_list(text, "--seeds")
    if not all(item.isdigit() for item in items):
        raise UsageError(f"--seeds {text!r}: give a count N or a list of seeds such as 0,1,2")
    if len(items) == 1:
        count = int(items[0])
        if count < 1:
            raise UsageError("--seeds must be at least 1")
        return list(range(count))
    seeds = [int(item) for item in items]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed")
    return seeds


def _check_key(key: str, flag: str, swept: set[str]) -> None:
    from leo_core.config import ConfigError, coerce_value

    try:
        coerce_value(key, "0")
    except ConfigError as err:
        if "unknown config key" in str(err):
            raise UsageError(f"{flag}: {err}") from None
    if key in swept:
        raise UsageError(f"{flag}: {key} is swept twice")
    swept.add(key)


def parse_grid(items: Iterable[str], swept: set[str] | None = None) -> list[tuple[str, list[str]]]:
    """`key=v1,v2,...` items: keys are experiment fields, values checked as --set checks them."""
    from leo_core.config import ConfigError, coerce_value

    swept = set() if swept is None else swept
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--grid {item!r} is not of the form key=v1,v2,...")
        _check_key(key, "--grid", swept)
        if not values.strip():
            raise UsageError(f"--grid {key}: the grid is empty (give key=v1,v2,...)")
        texts = parse_list(values, f"--grid {key}")
        for text in texts:
            try:
                coerce_value(key, text)
            except ConfigError as err:
                raise UsageError(f"--grid: {err}") from None
        if len(set(texts)) != len(texts):
            raise UsageError(f"--grid {key} repeats a value")
        out.append((key, texts))
    return out


@dataclasses.dataclass(frozen=True)
class Range:
    key: str
    low: float
    high: float
    log: bool
    integer: bool

    def draw(self, rng: random.Random) -> str:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return str(round(value)) if self.integer else f"{value:.6g}"


def parse_random(items: Iterable[str], swept: set[str] | None = None) -> list[Range]:
    """`key=lo:hi[:log]` items over numeric experiment fields."""
    from leo_core.config import FIELD_TYPES, ConfigError, coerce_value

    swept = set() if swept is None else swept
    out = []
    for item in items:
        key, sep, spec = item.partition("=")
        key = key.strip()
        parts = spec.split(":")
        if not sep or not key or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise UsageError(f"--random {item!r} is not of the form key=lo:hi or key=lo:hi:log")
        _check_key(key, "--random", swept)
        kind = FIELD_TYPES[key]
        if kind not in ("int", "float", int, float):
            raise UsageError(f"--random {key}: only numeric keys can be drawn (it is {getattr(kind, '__name__', kind)})")
        try:
            low, high = (float(coerce_value(key, part)) for part in parts[:2])
        except ConfigError as err:
            raise UsageError(f"--random: {err}") from None
        log = len(parts) == 3
        if not low < high or (log and low <= 0):
            raise UsageError(f"--random {key}: need lo < hi" + (" and lo > 0 for :log" if log else ""))
        out.append(Range(key, low, high, log, kind in ("int", int)))
    return out


def expand(name: str, experiments: list[str], seeds: list[int], grid: list[tuple[str, list[str]]],
           ranges: list[Range], trials: int | None, random_seed: int = 0) -> list[Trial]:
    """Every trial, in a stable order: experiment, then configuration, then seed."""
    if len(set(experiments)) != len(experiments):
        raise UsageError("--exp repeats an experiment")
    if ranges and trials is None:
        raise UsageError("--random needs --trials N (configurations to draw)")
    if trials is not None and not ranges:
        raise UsageError("--trials applies with --random only")
    if trials is not None and trials < 1:
        raise UsageError("--trials must be at least 1")
    keys = [key for key, _ in grid]
    configs = [tuple(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in grid))]
    if ranges:
        rng = random.Random(random_seed)
        drawn = [tuple((r.key, r.draw(rng)) for r in ranges) for _ in range(trials or 0)]
        configs = [c + d for c in configs for d in drawn]
    combos = [(exp, config, seed) for exp in experiments for config in configs for seed in seeds]
    width = len(str(len(combos) - 1))
    return [Trial(f"{name}-{i:0{width}d}", exp, seed, config) for i, (exp, config, seed) in enumerate(combos)]
