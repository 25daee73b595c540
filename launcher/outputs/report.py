"""A run's summary and training curves, read from its job base URL `<train_url>/<job>/`.

Three files of the job layout are read through the storage layer (s3://, obs://,
file:// or a path alike):

- `metrics.jsonl` (required): one JSON object per line, written by leo_core.train:
  `{"step", "kind": "train", "loss", "accuracy", "steps_per_s", "time"}` and
  `{"step", "kind": "validation", "accuracy", "ci95", "loss", "tasks", "best", "time"}`;
- `result.json` (once the job has evaluated on meta-test): `{"accuracy", "ci95",
  "tasks", "step", "experiment"}`, accuracies as fractions, and (leo_core.evaluate writes
  them) `"baselines": {"untrained": {"accuracy", "ci95", ...}, "nearest_class_mean": {...}}`
  on the same tasks;
- `job.yaml` (when published): the resolved JobSpec (experiment, accelerator, cards,
  nodes, overrides).

`load_report` gives a `RunReport`; `RunReport.table()` / `to_dict()` format it and
`write_png` plots meta-train and meta-validation accuracy over steps with matplotlib's
Agg canvas (headless; no pyplot state). Nothing here prints; errors are LaunchError
with one-line messages.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError, UsageError
from launcher.outputs.layout import METRICS_FILE, RESULT_FILE
from launcher.outputs.metrics import (
    MetaTest,
    Point,
    RecordWatch,
    best_validation,
    meta_test_experiment,
    parse_metrics,
    parse_result,
    positive_int,
    recent_rate,
    text_or_none,
)
from launcher.spec.contract import JOB_FILE
from launcher.storage import (
    NotFoundError,
    StorageOptions,
    Store,
    iter_lines,
    open_store,
    parse_url,
)
from launcher.util.files import atomic_write, refuse_non_regular
from launcher.util.userfile import load_yaml


@dataclass(frozen=True)
class RunReport:
    url: str
    name: str
    experiment: str | None
    accelerator: str | None
    cards: int | None
    nodes: int | None
    step: int | None  # the last step logged
    target_steps: int | None  # num_steps_limit of the run, when known
    steps_per_s: float | None
    best: Point | None  # the best meta-validation record
    meta_test: MetaTest | None
    train: tuple[Point, ...]
    validation: tuple[Point, ...]
    skipped_lines: int = 0  # lines of metrics.jsonl that were not records
    startup_seconds: float | None = None  # the latest start to its first training step

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain data (fractions, not percentages; no curves)."""
        best = None
        if self.best is not None:
            best = {"step": self.best.step, "accuracy": self.best.accuracy, "ci95": self.best.ci95}
        return {
            "name": self.name,
            "url": self.url,
            "experiment": self.experiment,
            "accelerator": self.accelerator,
            "cards": self.cards,
            "nodes": self.nodes,
            "step": self.step,
            "target_steps": self.target_steps,
            "steps_per_s": None if self.steps_per_s is None else round(self.steps_per_s, 4),
            "startup_seconds": self.startup_seconds,
            "best_validation": best,
            "meta_test": None if self.meta_test is None else _meta_test_dict(self.meta_test),
            "records": {"train": len(self.train), "validation": len(self.validation),
                        "skipped": self.skipped_lines},
        }

    def table(self) -> str:
        """One header row and one row, aligned like the other commands' tables."""
        steps = "-" if self.step is None else str(self.step)
        if self.target_steps is not None and self.step is not None:
            steps = f"{self.step}/{self.target_steps}"
        cells = [
            ("JOB", self.name or "-"),
            ("EXPERIMENT", self.experiment or "-"),
            ("CARDS", "-" if self.cards is None else str(self.cards)),
            ("STEPS", steps),
            ("STEPS/S", "-" if self.steps_per_s is None else f"{self.steps_per_s:.3g}"),
            ("BEST-VAL", "-" if self.best is None else percent(self.best.accuracy, self.best.ci95)),
            ("BEST-STEP", "-" if self.best is None else str(self.best.step)),
            ("META-TEST", "-" if self.meta_test is None
             else percent(self.meta_test.accuracy, self.meta_test.ci95)),
        ]
        if self.startup_seconds is not None:  # jobs logged before start-up was measured have none
            cells.insert(5, ("START-UP", f"{self.startup_seconds:.1f}s"))
        baselines = (self.meta_test.baselines if self.meta_test is not None else None) or {}
        for key, title in (("untrained", "UNTRAINED"), ("nearest_class_mean", "NCM")):
            if key in baselines:
                cells.append((title, percent(baselines[key]["accuracy"], baselines[key]["ci95"])))
        widths = [max(len(title), len(value)) for title, value in cells]
        rows = [[title for title, _ in cells], [value for _, value in cells]]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                         for row in rows)


def _meta_test_dict(meta_test: MetaTest) -> dict[str, Any]:
    data = dataclasses.asdict(meta_test)
    if data["baselines"] is None:
        del data["baselines"]
    return data


def percent(fraction: float, ci95: float | None = None) -> str:
    text = f"{100 * fraction:.2f}%"
    return text if ci95 is None else f"{text} ± {100 * ci95:.2f}%"


# ----------------------------------------------------------------------------- reading

# result.json and job.yaml are a few kB: larger ones are refused (exit 1), not loaded.
# metrics.jsonl is streamed line by line, keeping only the curves' points (bounded by
# metrics.MAX_CURVE_POINTS), so a metrics object of any size is read in bounded memory.
MAX_SMALL_BYTES = 16 * 2**20


def load_report(job_url: str, *, options: StorageOptions | None = None) -> RunReport:
    """Read metrics.jsonl (required), result.json and job.yaml under `job_url`."""
    base = parse_url(job_url)
    options = dataclasses.replace(options or StorageOptions(), progress=False)
    with open_store(base, options) as store:
        where = str(store.url.child(METRICS_FILE))
        try:
            watch = RecordWatch()
            train, validation, skipped = parse_metrics(iter_lines(store, METRICS_FILE), where, watch)
        except NotFoundError as err:
            raise LaunchError(f"no metrics: {where} does not exist (the job "
                              "has not logged a step yet, or the URL is not a job's "
                              "<train_url>/<job>)") from err
        result = _optional(store, RESULT_FILE)
        job = _optional(store, JOB_FILE)
        meta_test = parse_result(result, str(store.url.child(RESULT_FILE))) if result is not None else None
        spec = parse_job(job, str(store.url.child(JOB_FILE))) if job is not None else {}
    if not train and not validation:
        raise LaunchError(f"no metrics yet: {where} holds no train or validation record")
    experiment = text_or_none(spec.get("experiment")) or (meta_test_experiment(result) if result else None)
    last = max(p.step for p in (*train, *validation))
    return RunReport(
        url=str(base),
        name=text_or_none(spec.get("name")) or base.name,
        experiment=experiment,
        accelerator=text_or_none(spec.get("accelerator")),
        cards=positive_int(spec.get("cards")),
        nodes=positive_int(spec.get("nodes")),
        step=last,
        target_steps=target_steps(spec, experiment),
        steps_per_s=recent_rate(train),
        best=best_validation(validation),
        meta_test=meta_test,
        train=tuple(train),
        validation=tuple(validation),
        skipped_lines=skipped,
        startup_seconds=watch.startup_seconds,
    )


def _optional(store: Store, key: str) -> bytes | None:
    try:
        return store.get_bytes(key, MAX_SMALL_BYTES)
    except NotFoundError:
        return None


def parse_job(data: bytes, where: str = JOB_FILE) -> dict[str, Any]:
    """The JobSpec fields of a published job.yaml (top level, or under `spec:`)."""
    import yaml

    try:
        job = load_yaml(data.decode("utf-8", "replace"), where)
    except UsageError as err:
        raise LaunchError(str(err)) from None
    except yaml.YAMLError as err:
        raise LaunchError(f"{where} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(job, dict):
        raise LaunchError(f"{where} is not a job spec (a YAML mapping)")
    if isinstance(job.get("spec"), dict):
        job = {**job["spec"], **{k: v for k, v in job.items() if k != "spec"}}
    return job


def target_steps(spec: Mapping[str, Any], experiment: str | None) -> int | None:
    """num_steps_limit of the run: a job.yaml override, its resolved config, or the
    experiment's registered default with the job's overrides applied."""
    overrides = _overrides(spec.get("overrides"))
    if "num_steps_limit" in overrides:
        return positive_int(overrides["num_steps_limit"])
    for key in ("experiment_config", "config"):
        config = spec.get(key)
        if isinstance(config, dict) and "num_steps_limit" in config:
            return positive_int(config["num_steps_limit"])
    if not experiment or not spec:
        return None  # without job.yaml the run's --steps is unknown
    from leo_core.config import ConfigError, load_experiment

    try:
        config = load_experiment(experiment, [f"{k}={v}" for k, v in overrides.items()])
    except (ConfigError, ValueError, TypeError):
        return None
    return positive_int(getattr(config, "num_steps_limit", None))


def _overrides(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):  # [[key, value], ...] as tuples dump
        return {str(item[0]): item[1] for item in value
                if isinstance(item, list | tuple) and len(item) == 2}
    return {}


# ----------------------------------------------------------------------------- plotting

def check_png_target(path: str | os.PathLike) -> Path:
    """The --png file, refused (UsageError) before anything is read when it cannot be
    written: a directory, or in a directory that does not exist."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"--png {path}: is a directory; give a file name such as {target / 'curves.png'}")
    if not target.parent.is_dir():
        raise UsageError(f"--png {path}: directory {target.parent} does not exist")
    try:
        refuse_non_regular(target)
    except OSError as err:
        raise UsageError(f"--png {path}: {err.strerror}") from None
    return target


def new_figure() -> tuple[Any, Any]:
    """An 8 × 4.8 inch Agg figure and its axes (no display needed); LaunchError when
    matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise LaunchError("--png needs matplotlib: pip install 'leo-launch[report]'") from err
    fig = Figure(figsize=(8, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_png(fig: Any, target: Path) -> Path:
    """Write `fig` to `target` as a PNG, atomically; one-line LaunchError when it cannot."""
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    try:
        atomic_write(target, image.getvalue())
    except OSError as err:
        raise LaunchError(f"cannot write {target}: {err.strerror or err}") from err
    return target


def write_png(report: RunReport, path: str | os.PathLike) -> Path:
    """Meta-train and meta-validation accuracy over steps (the validation 95% interval as
    a band, the best validation marked, meta-test as a dashed line) as a PNG, written
    atomically."""
    target = Path(path).expanduser()
    fig, ax = new_figure()
    marker = "." if len(report.train) <= 60 else None
    if report.train:
        ax.plot([p.step for p in report.train], [100 * p.accuracy for p in report.train],
                color="tab:blue", linewidth=1.2, marker=marker, alpha=0.85, label="meta-train accuracy")
    if report.validation:
        steps = [p.step for p in report.validation]
        accs = [100 * p.accuracy for p in report.validation]
        ax.plot(steps, accs, color="tab:orange", linewidth=1.6, marker="o", markersize=4,
                label="meta-validation accuracy")
        if all(p.ci95 is not None for p in report.validation):
            ci = [100 * p.ci95 for p in report.validation]
            ax.fill_between(steps, [a - c for a, c in zip(accs, ci, strict=True)],
                            [a + c for a, c in zip(accs, ci, strict=True)],
                            color="tab:orange", alpha=0.2, linewidth=0, label="validation 95% interval")
    if report.best is not None:
        ax.scatter([report.best.step], [100 * report.best.accuracy], marker="*", s=160, zorder=3,
                   color="tab:red",
                   label=f"best validation {percent(report.best.accuracy)} (step {report.best.step})")
    if report.meta_test is not None:
        ax.axhline(100 * report.meta_test.accuracy, color="tab:green", linestyle="--", linewidth=1.2,
                   label=f"meta-test {percent(report.meta_test.accuracy, report.meta_test.ci95)}")
    title = report.name
    cards = None if report.cards is None else f"{report.cards} card{'' if report.cards == 1 else 's'}"
    details = [d for d in (report.experiment, cards) if d]
    if details:
        title += f": {', '.join(details)}"
    ax.set_title(title)
    ax.set_xlabel("meta-training step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_png(fig, target)
