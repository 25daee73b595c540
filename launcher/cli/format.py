"""How the commands print jobs: the status header and rank table, the list table, JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO


def percent(value: Any) -> str:
    """0.6894 → 68.94% (accuracies are printed as percentages everywhere)."""
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
        best_at = status.get("best_step")
        where = "" if best_at is None else (f" at step {best_at}"
                                            + (" (the untrained model)" if best_at == 0 else ""))
        rows.append(("PROGRESS", f"step {status.get('step', '-')}, best meta-validation accuracy "
                                 f"{percent(status.get('best_accuracy'))}{where}"))
    if status.get("startup_seconds") is not None:
        rows.append(("START-UP", f"{status['startup_seconds']:.1f} s from the last start to its "
                                 "first training step"))
    result = status.get("result")
    if isinstance(result, dict) and "accuracy" in result:
        rows.append(("RESULT", f"meta-test accuracy {percent(result.get('accuracy'))} "
                               f"± {percent(result.get('ci95'))} over {result.get('tasks', '?')} tasks "
                               f"(checkpoint step {result.get('step', '?')})"
                               + baselines_text(result)))
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
    # one row per pod (k8s) or per process (local); ranks without either share a row per state
    groups: dict[Any, dict[str, Any]] = {}
    for entry in ranks:
        key = entry.get("pod") or entry.get("pid") or ("none", entry.get("phase"), entry.get("reason"))
        group = groups.setdefault(key, {**entry, "ranks": [], "node_ranks": []})
        group["ranks"].append(entry.get("rank"))
        if entry.get("node_rank") is not None and entry["node_rank"] not in group["node_ranks"]:
            group["node_ranks"].append(entry["node_rank"])
    what = "POD" if status.get("backend") == "k8s" or any(e.get("pod") for e in ranks) else "PID"
    table = [("RANK", "NODE RANK", what, "PHASE", "NODE", "RESTARTS", "AGE")]
    for group in groups.values():
        phase = group.get("phase", "-")
        if group.get("reason") and phase not in ("Running", "Succeeded"):
            phase += f" ({group['reason']})"
        table.append((ranks_text(group["ranks"]), ranks_text(group["node_ranks"]),
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
                     str(item.get("step", "-")), percent(item.get("best_accuracy"))))
    write_table(rows, out)


def print_json(obj: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def baselines_text(result: Mapping[str, Any]) -> str:
    """`; untrained 62.93% ± 0.41%, NCM 78.10% ± 0.44%` from a result.json's baselines."""
    baselines = result.get("baselines") if isinstance(result.get("baselines"), dict) else {}
    parts = [f"{label} {percent(b.get('accuracy'))} ± {percent(b.get('ci95'))}"
             for key, label in (("untrained", "untrained"), ("nearest_class_mean", "NCM"))
             if isinstance(b := baselines.get(key), dict)]
    return f"; same tasks: {', '.join(parts)}" if parts else ""
