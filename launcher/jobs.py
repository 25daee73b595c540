"""What `status`, `logs`, `list` and `cancel` share across the two backends.

A job's state is one plain dict, the same for Kubernetes and local jobs (the JSON of
`status -o json`; `list -o json` prints a list of them)::

    {"name", "backend": "k8s"|"local", "phase": Pending|Running|Restarting|Succeeded|Failed,
     "reason" (why pending or failed, when known), "experiment", "accelerator", "cards",
     "nodes", "restarts", "max_restarts", "age", "age_seconds", "outputs_url" (<train_url>/<name>),
     "step", "best_accuracy", "result" (when known),
     "ranks": [{"rank", "node_rank", "phase", "node", "restarts", "age", "age_seconds",
                "pod" (k8s) | "pid" (local), "reason"}, ...]}

Log lines written by the bootstrap carry their origin: `[rank R] ...` for a training
process, `[node K] ...` for the bootstrap of node K itself. `rank_filter` keeps one rank's
lines (and its node's) out of a pod's or a local job's stream.

Nothing here imports the Kubernetes client, boto3 or MindSpore.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from launcher.errors import LaunchError, UsageError

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed")
FINAL_PHASES = ("Succeeded", "Failed")
BACKENDS = ("auto", "k8s", "local")
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_RANK_TAG = re.compile(r"^\[rank (\d+)\] ")
_NODE_TAG = re.compile(r"^\[node (\d+)\] ")


class JobNotFoundError(LaunchError):
    """No job of that name (exit code 1)."""


class JobExistsError(LaunchError):
    """A job of that name exists already; nothing was created (exit code 1)."""


# ------------------------------------------------------------------ which backend


def kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The kubeconfig files kubectl would read: $KUBECONFIG (':'-separated) or ~/.kube/config."""
    env = os.environ if environ is None else environ
    value = env.get("KUBECONFIG", "")
    if value.strip():
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    home = env.get("HOME") or os.path.expanduser("~")
    return [Path(home) / ".kube" / "config"]


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and Path(IN_CLUSTER_TOKEN).is_file()


def kube_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a Kubernetes cluster is configured: a kubeconfig file exists or this runs
    in a pod with a service account."""
    return any(p.is_file() for p in kubeconfig_paths(environ)) or in_cluster(environ)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"{name!r} is not a job name (lowercase letters, digits and '-', "
                         "starting with a letter)")
    return name


def local_job_exists(name: str, environ: Mapping[str, str] | None = None) -> bool:
    from launcher.local_backend import job_dir

    return job_dir(name, environ).is_dir()


def choose_backend(requested: str, name: str | None = None,
                   environ: Mapping[str, str] | None = None) -> str:
    """`k8s` or `local` for a command about job `name` (submit: name None).

    auto: a local job of that name → local; else a configured cluster → k8s; else local
    (for submit and list) or an error (for a name that exists nowhere).
    """
    if requested in ("k8s", "local"):
        return requested
    if requested != "auto":
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    if name is not None and local_job_exists(name, environ):
        return "local"
    if kube_configured(environ):
        return "k8s"
    if name is not None:
        from launcher.local_backend import jobs_root

        raise JobNotFoundError(f"unknown job {name!r}: it is not under {jobs_root(environ)} and no "
                               "Kubernetes cluster is configured (KUBECONFIG, ~/.kube/config)")
    return "local"


def add_cluster_arguments(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """--backend, --namespace, --context of status, logs, list and cancel."""
    group = parser.add_argument_group("cluster")
    if backend:
        group.add_argument("--backend", choices=BACKENDS, default="auto",
                           help="where the job runs (default auto: a local job of that name, "
                                "else the configured Kubernetes cluster)")
    group.add_argument("-n", "--namespace",
                       help="Kubernetes namespace (default: the context's, else default)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")


# ------------------------------------------------------------------ time


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp of the API ("2024-05-01T10:00:00Z") as epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def age(seconds: float | None) -> str:
    """kubectl-style age: 45s, 12m, 3h20m, 5d."""
    if seconds is None:
        return "-"
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest and hours < 10 else f"{hours}h"
    return f"{hours // 24}d"


# ------------------------------------------------------------------ progress from storage


def summarize_metrics(data: bytes | str) -> dict[str, Any]:
    """Latest step and best meta-validation accuracy in a metrics.jsonl."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    step = None
    best = None
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a partial last line
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("step"), int):
            step = record["step"] if step is None else max(step, record["step"])
        if record.get("kind") == "validation" and isinstance(record.get("accuracy"), int | float):
            best = record["accuracy"] if best is None else max(best, record["accuracy"])
    out: dict[str, Any] = {}
    if step is not None:
        out["step"] = step
    if best is not None:
        out["best_accuracy"] = round(float(best), 6)
    return out


def read_progress(job_url: str | None, *, endpoint: str | None = None,
                  local_out: Path | None = None) -> dict[str, Any]:
    """`step`, `best_accuracy` and `result` of a job from its metrics.jsonl and result.json:
    the local output directory when given and present, else `job_url` (object storage).
    Storage that cannot be reached gives `{"storage_error": "..."}` instead, quickly."""
    out: dict[str, Any] = {}
    if local_out is not None and (local_out / "metrics.jsonl").is_file():
        try:
            out.update(summarize_metrics((local_out / "metrics.jsonl").read_bytes()))
            result_path = local_out / "result.json"
            if result_path.is_file():
                out["result"] = json.loads(result_path.read_text())
            return out
        except (OSError, ValueError):
            pass
    if not job_url:
        return out
    from launcher.storage import NotFoundError, StorageOptions, open_store

    try:
        options = StorageOptions(endpoint=endpoint, max_attempts=1, progress=False,
                                 connect_timeout=3.0, read_timeout=10.0)
        with open_store(job_url, options) as store:
            try:
                out.update(summarize_metrics(store.get_bytes("metrics.jsonl")))
            except NotFoundError:
                pass
            try:
                out["result"] = json.loads(store.get_bytes("result.json"))
            except NotFoundError:
                pass
            except ValueError:
                pass
    except Exception as err:  # noqa: BLE001 - progress is optional: say why it is missing
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        out["storage_error"] = text
    return out


def job_url_of(train_url: str | None, name: str) -> str | None:
    if not train_url:
        return None
    from launcher.storage import parse_url

    return str(parse_url(train_url).child(name))


# ------------------------------------------------------------------ log lines


def line_rank(line: str) -> tuple[str, int] | None:
    """("rank", R) or ("node", K) for a tagged bootstrap line, None for an untagged one."""
    match = _RANK_TAG.match(line)
    if match:
        return "rank", int(match.group(1))
    match = _NODE_TAG.match(line)
    if match:
        return "node", int(match.group(1))
    return None


def rank_filter(rank: int | None, node_rank: int | None) -> Callable[[str], bool]:
    """Keep rank `rank`'s lines, its node's bootstrap lines and untagged lines (None: all)."""
    if rank is None:
        return lambda line: True

    def keep(line: str) -> bool:
        tag = line_rank(line)
        if tag is None:
            return True
        kind, number = tag
        return number == rank if kind == "rank" else number == node_rank

    return keep


def last_lines(lines: Iterable[str], count: int | None) -> list[str]:
    items = list(lines)
    if count is None:
        return items
    return items[-count:] if count > 0 else []


def check_log_arguments(args: argparse.Namespace) -> None:
    if args.rank is not None and args.rank < 0:
        raise UsageError("--rank must be 0 or more")
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be 0 or more")


# ------------------------------------------------------------------ output


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def ranks_text(ranks: list[int]) -> str:
    if not ranks:
        return "-"
    if len(ranks) > 1 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(str(r) for r in ranks)


def print_status(status: Mapping[str, Any], out: TextIO | None = None) -> None:
    """The human-readable `status` (a header, then one row per pod or process)."""
    out = out or sys.stdout
    where = status.get("backend", "?")
    if status.get("namespace"):
        where += f", namespace {status['namespace']}"
    phase = status.get("phase", "?")
    rows = [("NAME", f"{status.get('name')}  ({where})"),
            ("PHASE", phase + (f": {status['reason']}" if status.get("reason") else ""))]
    if status.get("experiment"):
        rows.append(("JOB", f"{status.get('experiment')} on {status.get('cards')} "
                            f"{status.get('accelerator')} card(s), {status.get('nodes')} node(s)"))
    rows.append(("RESTARTS", f"{status.get('restarts', 0)} of at most {status.get('max_restarts', '?')}"))
    rows.append(("AGE", status.get("age", "-")))
    if "step" in status or "best_accuracy" in status:
        rows.append(("PROGRESS", f"step {status.get('step', '-')}, best meta-validation accuracy "
                                 f"{_percent(status.get('best_accuracy'))}"))
    result = status.get("result")
    if isinstance(result, dict) and "accuracy" in result:
        rows.append(("RESULT", f"meta-test accuracy {_percent(result.get('accuracy'))} "
                               f"± {_percent(result.get('ci95'))} over {result.get('tasks', '?')} tasks "
                               f"(checkpoint step {result.get('step', '?')})"))
    if status.get("storage_error"):
        rows.append(("STORAGE", f"progress unavailable: {status['storage_error']}"))
    if status.get("outputs_url"):
        rows.append(("OUTPUTS", str(status["outputs_url"])))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.write(f"{key.ljust(width)}  {value}\n")
    ranks = status.get("ranks") or []
    if not ranks:
        return
    # one row per pod (k8s) or per process (local)
    groups: dict[Any, dict[str, Any]] = {}
    for entry in ranks:
        key = entry.get("pod") or entry.get("pid") or f"rank-{entry.get('rank')}"
        group = groups.setdefault(key, {**entry, "ranks": []})
        group["ranks"].append(entry.get("rank"))
    what = "POD" if any(e.get("pod") for e in ranks) else "PID"
    table = [("RANK", "NODE RANK", what, "PHASE", "NODE", "RESTARTS", "AGE")]
    for group in groups.values():
        phase = group.get("phase", "-")
        if group.get("reason") and phase not in ("Running", "Succeeded"):
            phase += f" ({group['reason']})"
        table.append((ranks_text(group["ranks"]), str(group.get("node_rank", "-")),
                      str(group.get("pod") or group.get("pid") or "-"), phase,
                      str(group.get("node") or "-"), str(group.get("restarts", 0)),
                      group.get("age", "-")))
    out.write("\n")
    write_table(table, out)


def write_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        out.write("  ".join(cells).rstrip() + "\n")


def print_list(items: list[Mapping[str, Any]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if not items:
        out.write("no jobs\n")
        return
    rows = [("NAME", "BACKEND", "EXPERIMENT", "ACCEL", "CARDS", "PHASE", "AGE", "STEP", "BEST ACC")]
    for item in items:
        backend = item.get("backend", "-")
        if item.get("namespace"):
            backend += f"/{item['namespace']}"
        rows.append((str(item.get("name")), backend, str(item.get("experiment") or "-"),
                     str(item.get("accelerator") or "-"), str(item.get("cards") or "-"),
                     str(item.get("phase")), str(item.get("age", "-")),
                     str(item.get("step", "-")), _percent(item.get("best_accuracy"))))
    write_table(rows, out)


def print_json(obj: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def print_published_logs(job_url: str, *, rank: int | None = None, tail: int | None = None,
                         endpoint: str | None = None, out: TextIO | None = None,
                         err: TextIO | None = None) -> bool:
    """Print the rank logs a job published under `<job_url>/logs/` (one rank, or all of
    them rank after rank), each line tagged `[rank R]`. False when there are none."""
    from launcher.storage import NotFoundError, StorageOptions, open_store

    out, err = out or sys.stdout, err or sys.stderr
    with open_store(job_url, StorageOptions(endpoint=endpoint, progress=False)) as store:
        try:
            listing = store.list("logs")
        except NotFoundError:
            listing = {}
        files = {}
        for key in listing:
            match = re.search(r"(?:^|/)rank-(\d+)\.log$", key)
            if match:
                files[int(match.group(1))] = key
        chosen = sorted(files) if rank is None else [r for r in (rank,) if r in files]
        if not chosen:
            what = "any rank" if rank is None else f"rank {rank}"
            err.write(f"leo-launch: no logs of {what} published under {job_url}/logs\n")
            return False
        lines = []
        for number in chosen:
            text = store.get_bytes(files[number]).decode("utf-8", errors="replace")
            lines.extend(f"[rank {number}] {line}" for line in text.splitlines())
    for line in last_lines(lines, tail):
        out.write(line + "\n")
    out.flush()
    return True
