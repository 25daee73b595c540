"""The one reader of a job's `metrics.jsonl` and `result.json` (status, list and report
all use it, so they show the same best accuracy).

`metrics.jsonl` holds one JSON object per line, written by leo_core.train:
`{"step", "kind": "train", "loss", "accuracy", "steps_per_s", "time"}` and
`{"step", "kind": "validation", "accuracy", "ci95", "loss", "tasks", "best", "time"}`;
`{"step", "kind": "startup", "seconds", "since"}` (the time to the first training step of
each start: "bootstrap" or "process"); `result.json`: `{"accuracy", "ci95", "tasks",
"step", "experiment"}`, fractions.
The best validation is the trainer's latest `best` mark (the checkpoint it kept), else
the highest accuracy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError
from launcher.outputs.layout import METRICS_FILE, RESULT_FILE
from launcher.storage import (
    NotFoundError,
    StorageError,
    StorageOptions,
    StorageSettings,
    iter_lines,
    open_store,
)

RECENT_TRAIN_RECORDS = 10  # steps/s is the mean over this many of the latest train records


@dataclass(frozen=True)
class Point:
    """One logged record on a curve."""

    step: int
    accuracy: float  # a fraction
    ci95: float | None = None
    best: bool = False  # validation: the trainer marked it a new best
    steps_per_s: float | None = None  # train: the rate over the logging window
    time: float | None = None


@dataclass(frozen=True)
class MetaTest:
    accuracy: float  # fractions
    ci95: float | None
    tasks: int | None
    step: int | None
    # name -> {"accuracy", "ci95"} on the same tasks (untrained, nearest_class_mean)
    baselines: dict[str, dict[str, float | None]] | None = None


# Points kept per curve: a plot needs far fewer; a longer run (or a hostile metrics.jsonl of
# any size) is thinned evenly by step, the best, marked-best and last points always kept.
MAX_CURVE_POINTS = 100_000


def parse_metrics(data: bytes | Iterable[str], where: str = METRICS_FILE,
                  watch: RecordWatch | None = None) -> tuple[list[Point], list[Point], int]:
    """Train and validation points of a metrics.jsonl (its bytes, or its lines as a
    stream), each sorted by step with one point per step (the last logged wins: a resumed
    run may log a step again), and the number of lines that were not records (a torn last
    line, foreign text). Memory is bounded by MAX_CURVE_POINTS per curve. `watch` also
    sees every record, of any kind."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise LaunchError(f"{where} is not UTF-8 text") from err
    curves = {"train": _Curve(), "validation": _Curve()}
    skipped = 0
    for line in data:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(record, dict) or step_or_none(record.get("step")) is None:
            skipped += 1
            continue
        if watch is not None:
            watch.see(record)
        kind = record.get("kind")
        accuracy = _fraction(record.get("accuracy"))
        if kind not in curves or accuracy is None:
            continue  # other kinds of record (or a train record without accuracy)
        step = step_or_none(record["step"])
        curves[kind].add(Point(step=step, accuracy=accuracy, ci95=_fraction(record.get("ci95")),
                               best=record.get("best") is True,
                               steps_per_s=_positive(record.get("steps_per_s")),
                               time=_number(record.get("time"))))
    if skipped and not any(curve.points for curve in curves.values()):
        raise LaunchError(f"{where} is not JSON lines: none of its lines is a metrics record")
    return curves["train"].sorted(), curves["validation"].sorted(), skipped


class RecordWatch:
    """What `parse_metrics` keeps of records beyond the curves: the latest step logged by
    any record, and the seconds of the last start-up record (the latest start to its first
    training step)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.startup_seconds: float | None = None

    def see(self, record: Mapping[str, Any]) -> None:
        step = step_or_none(record.get("step"))
        if step is not None and (self.step is None or step > self.step):
            self.step = step
        if record.get("kind") == "startup" and (seconds := _fraction(record.get("seconds"))) is not None:
            self.startup_seconds = seconds


class _Curve:
    """One point per step; beyond MAX_CURVE_POINTS only steps that are multiples of a
    doubling stride, plus the points `best_validation` and the last step need."""

    def __init__(self) -> None:
        self.points: dict[int, Point] = {}
        self.stride = 1
        self.keep: dict[str, Point] = {}  # "marked", "highest", "last"

    def add(self, point: Point) -> None:
        if point.step % self.stride == 0 or point.step in self.points:
            self.points[point.step] = point
        for name, better in (("marked", point.best and _after(point, self.keep.get("marked"))),
                             ("highest", _higher(point, self.keep.get("highest"))),
                             ("last", _after(point, self.keep.get("last")))):
            if better:
                self.keep[name] = point
        if len(self.points) > MAX_CURVE_POINTS:
            self.stride *= 2
            self.points = {s: p for s, p in self.points.items() if s % self.stride == 0}

    def sorted(self) -> list[Point]:
        if self.stride > 1:  # thinned: the points that decide best and last come back
            for point in self.keep.values():
                self.points.setdefault(point.step, point)
        return [self.points[s] for s in sorted(self.points)]


def _after(point: Point, other: Point | None) -> bool:
    return other is None or point.step >= other.step


def _higher(point: Point, other: Point | None) -> bool:
    return other is None or (point.accuracy, -point.step) > (other.accuracy, -other.step)


def parse_result(data: bytes, where: str = RESULT_FILE) -> MetaTest:
    try:
        result = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise LaunchError(f"{where} is not valid JSON") from err
    accuracy = _fraction(result.get("accuracy")) if isinstance(result, dict) else None
    if accuracy is None:
        raise LaunchError(f"{where} has no meta-test accuracy (expected "
                          '{"accuracy": 0.7631, "ci95": 0.0012, ...} with fractions)')
    baselines = {}
    if isinstance(result.get("baselines"), dict):
        for name, value in result["baselines"].items():
            if isinstance(value, dict) and _fraction(value.get("accuracy")) is not None:
                baselines[str(name)] = {"accuracy": _fraction(value.get("accuracy")),
                                        "ci95": _fraction(value.get("ci95"))}
    return MetaTest(accuracy=accuracy, ci95=_fraction(result.get("ci95")),
                    tasks=positive_int(result.get("tasks")), step=step_or_none(result.get("step")),
                    baselines=baselines or None)


def meta_test_experiment(data: bytes) -> str | None:
    try:
        result = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    return text_or_none(result.get("experiment")) if isinstance(result, dict) else None


def recent_rate(train: Sequence[Point], recent: int = RECENT_TRAIN_RECORDS) -> float | None:
    """Mean steps/s of the latest train records; from their steps and times when the
    records carry no rate."""
    window = list(train)[-recent:]
    rates = [p.steps_per_s for p in window if p.steps_per_s is not None]
    if rates:
        return sum(rates) / len(rates)
    timed = [p for p in window if p.time is not None]
    if len(timed) >= 2 and timed[-1].time > timed[0].time:
        return (timed[-1].step - timed[0].step) / (timed[-1].time - timed[0].time)
    return None


def best_validation(validation: Iterable[Point]) -> Point | None:
    """The trainer's latest new best; the highest accuracy (earliest on ties) when no
    record carries the mark."""
    points = list(validation)
    marked = [p for p in points if p.best]
    if marked:
        return marked[-1]
    return max(points, key=lambda p: (p.accuracy, -p.step), default=None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _fraction(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number >= 0 else None


def _positive(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def step_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def positive_int(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def summarize_metrics(data: bytes | str | Iterable[str]) -> dict[str, Any]:
    """`step` (the latest logged by any record), `best_accuracy` / `best_step` (see
    the module docstring) and `startup_seconds` of a metrics.jsonl (its bytes or text, or
    its lines as a stream: memory stays bounded whatever the file's size); {} for what
    holds no record."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    watch = RecordWatch()
    try:
        _, validation, _ = parse_metrics(data.splitlines() if isinstance(data, str) else data, watch=watch)
    except StorageError:
        raise  # reading failed: the caller says so (or knows a missing file means no metrics)
    except LaunchError:  # no metrics record at all
        validation = []
    out: dict[str, Any] = {}
    if watch.step is not None:
        out["step"] = watch.step
    if watch.startup_seconds is not None:
        out["startup_seconds"] = watch.startup_seconds
    best = best_validation(validation)
    if best is not None:
        out["best_accuracy"] = round(float(best.accuracy), 6)
        out["best_step"] = best.step
    return out


# Where boto3 finds credentials without asking the cloud's instance-metadata address.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
NOT_CONFIGURED = ("not read: no storage credentials or endpoint are configured here (AWS_ACCESS_KEY_ID "
                  "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, or AWS_ENDPOINT_URL)")


def storage_configured(endpoint: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this machine is set up for object storage: an endpoint (the job's, or
    AWS_ENDPOINT_URL[_S3]), credential variables, or a shared credentials/config file.
    Without any, boto3's default chain would end at the instance-metadata address."""
    env = os.environ if environ is None else environ
    if endpoint or any(env.get(key) for key in CREDENTIAL_VARIABLES + ENDPOINT_VARIABLES):
        return True
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials",
             env.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    return any(Path(f).is_file() for f in files)


def read_progress(job_url: str | None, *, storage: StorageSettings | None = None,
                  local_out: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`step`, `best_accuracy` and `result` of a job from its metrics.jsonl and result.json:
    the local output directory when given and present, else `job_url` (object storage,
    read only when `storage_configured`, with the job's `storage` settings). Storage that cannot be reached, or is not
    configured, gives `{"storage_error": "..."}` instead, quickly."""
    out: dict[str, Any] = {}
    if local_out is not None and (local_out / METRICS_FILE).is_file():
        try:
            with open_store(str(local_out), StorageOptions(progress=False)) as store:
                out.update(summarize_metrics(iter_lines(store, METRICS_FILE)))
            result_path = local_out / RESULT_FILE
            if result_path.is_file():
                out["result"] = json.loads(result_path.read_text())
            return out
        except (StorageError, OSError, ValueError):
            pass
    if not job_url:
        return out
    if job_url.startswith(("s3://", "obs://")) and not storage_configured(storage and storage.endpoint, environ):
        return {"storage_error": NOT_CONFIGURED}

    try:
        options = (storage or StorageSettings()).options(max_attempts=1, progress=False,
                                                         connect_timeout=3.0, read_timeout=10.0)
        with open_store(job_url, options) as store:
            try:
                out.update(summarize_metrics(iter_lines(store, METRICS_FILE)))
            except NotFoundError:
                pass
            try:
                out["result"] = json.loads(store.get_bytes(RESULT_FILE))
            except NotFoundError:
                pass
            except ValueError:
                pass
    except Exception as err:  # noqa: BLE001 - progress is optional: say why it is missing
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        out["storage_error"] = text
    return out
