"""A sweep's results, read from each trial's published outputs (`<train_url>/<trial>/`
metrics.jsonl and result.json, through launcher.outputs.report), so a summary works
after every pod is gone and from another machine.

Trials are grouped by their swept values (experiment and --grid/--random keys; the
seed is what varies inside a group). Per group: the mean over seeds of the best
meta-validation accuracy and of the meta-test accuracy, each ± a 95% interval
(Student's t over seeds; none for one seed). The best configuration is picked by
mean *validation* accuracy, never by test. For the four published experiments the
paper's and the ModelZoo port's numbers (leo_core/configs/published.json) stand beside.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError
from launcher.outputs.report import RunReport, load_report, new_figure, save_png
from launcher.storage import StorageOptions

# t(0.975, df) for df = 1..30; beyond, the normal 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of its 95% interval (None for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * sd / math.sqrt(n)


@dataclasses.dataclass(frozen=True)
class TrialResult:
    name: str
    experiment: str
    seed: int
    params: tuple[tuple[str, str], ...]
    report: RunReport | None  # None: nothing published yet (or unreadable: `error`)
    error: str | None = None


def load_trials(train_url: str, trials: list[Any], *, options: StorageOptions | None = None) -> list[TrialResult]:
    """Each trial's report from `<train_url>/<trial>`; a trial without outputs has none."""
    from launcher.outputs.layout import job_url_of

    out = []
    for trial in trials:
        try:
            report, error = load_report(str(job_url_of(train_url, trial.name)), options=options), None
        except LaunchError as err:
            report, error = None, str(err).splitlines()[0]
        out.append(TrialResult(trial.name, trial.experiment, trial.seed, trial.params, report, error))
    return out


@dataclasses.dataclass(frozen=True)
class Group:
    experiment: str
    params: tuple[tuple[str, str], ...]
    trials: int
    seeds: tuple[int, ...]  # of the trials with a meta-validation record
    validation: tuple[float, float | None] | None  # mean, ci95 (fractions)
    test: tuple[float, float | None] | None
    tested: int  # trials with a meta-test result
    published: dict[str, tuple[float, float]]  # source -> (mean %, ci95 %)
    best: bool = False


def summarise(results: list[TrialResult]) -> list[Group]:
    from leo_core.config import published_accuracy

    order: dict[tuple[str, tuple[tuple[str, str], ...]], list[TrialResult]] = {}
    for result in results:
        order.setdefault((result.experiment, result.params), []).append(result)
    groups = []
    for (experiment, params), members in order.items():
        val = [r for r in members if r.report is not None and r.report.best is not None]
        test = [r.report.meta_test.accuracy for r in members
                if r.report is not None and r.report.meta_test is not None]
        groups.append(Group(
            experiment, params, len(members), tuple(r.seed for r in val),
            mean_ci95([r.report.best.accuracy for r in val]) if val else None,  # type: ignore[union-attr]
            mean_ci95(test) if test else None, len(test), published_accuracy(experiment)))
    scored = [g for g in groups if g.validation is not None]
    if scored:
        best = max(scored, key=lambda g: g.validation[0])  # type: ignore[index]
        groups = [dataclasses.replace(g, best=True) if g is best else g for g in groups]
    return groups


def _pct(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "-"
    mean, ci = value
    return f"{100 * mean:.2f}" + ("" if ci is None else f" ± {100 * ci:.2f}")


def _published(group: Group, source: str) -> str:
    value = group.published.get(source)
    return "-" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def swept_keys(groups: list[Group]) -> list[str]:
    keys: list[str] = []
    for group in groups:
        keys += [k for k, _ in group.params if k not in keys]
    return keys


def rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """The summary as a header and text cells (accuracies in %)."""
    keys = swept_keys(groups)
    header = ["EXPERIMENT", *[k.upper() for k in keys], "SEEDS", "BEST-VAL %", "META-TEST %",
              "PAPER %", "MODELZOO %", "BEST"]
    body = []
    for g in groups:
        params = dict(g.params)
        body.append([g.experiment, *[params.get(k, "-") for k in keys],
                     f"{len(g.seeds)}/{g.trials}", _pct(g.validation), _pct(g.test),
                     _published(g, "paper"), _published(g, "modelzoo"), "*" if g.best else ""])
    return header, body


def table(groups: list[Group]) -> str:
    header, body = rows(groups)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *body])


def markdown(groups: list[Group]) -> str:
    header, body = rows(groups)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def to_csv(groups: list[Group]) -> str:
    header, body = rows(groups)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *body])
    return text.getvalue().rstrip("\n")


def to_json(groups: list[Group]) -> list[dict[str, Any]]:
    """Accuracies as fractions (as report -o json); published numbers in % as published."""
    def pair(value):
        return None if value is None else {"mean": value[0], "ci95": value[1]}
    return [{"experiment": g.experiment, "params": dict(g.params), "trials": g.trials,
             "seeds": list(g.seeds), "best_validation": pair(g.validation), "meta_test": pair(g.test),
             "tested": g.tested, "published_percent": {k: {"mean": v[0], "ci95": v[1]}
                                                       for k, v in g.published.items()},
             "best": g.best} for g in groups]


def write_png(results: list[TrialResult], path: str | os.PathLike, title: str) -> Path:
    """The meta-validation accuracy of every trial over steps, in one figure."""
    target = Path(path).expanduser()
    fig, ax = new_figure()
    for result in results:
        if result.report is None or not result.report.validation:
            continue
        points = result.report.validation
        label = ", ".join([result.experiment, *[f"{k}={v}" for k, v in result.params], f"seed {result.seed}"])
        ax.plot([p.step for p in points], [100 * p.accuracy for p in points], marker="o", markersize=3,
                linewidth=1.2, label=label)
    ax.set_title(f"sweep {title}: meta-validation accuracy")
    ax.set_xlabel("meta-training step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower right", fontsize="x-small")
    return save_png(fig, target)
