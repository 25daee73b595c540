"""`python -m leo_core.train --profile DIR`: MindSpore's profiler over a few training steps.

The profiler records every operator launch of the compiled step (on CPU: host-side
kernel times; on Ascend/GPU the device timeline as well) for `steps` steps after
`skip` steps (the first compiles the graph). Each rank writes under `DIR/rank-<r>/`;
when the profiler has parsed its data, `op_summary.txt` there lists the operator time
per step by operator type, the table tests/benchmarks/README.md's breakdown comes from:

    python -m leo_core.profiling DIR/rank-0     # prints the summary again

Only what MindSpore 2.10 offers is used: `mindspore.profiler.profile` with a schedule
and `tensorboard_trace_handler` (it also writes `trace_view.json`, viewable in
chrome://tracing or Perfetto).
"""

from __future__ import annotations

import collections
import csv
import sys
from pathlib import Path

DEFAULT_STEPS = 5
MAX_STEPS = 100  # each profiled step adds to every rank's trace (the launcher uses these too)
SKIP_STEPS = 2  # steps run before the profiler records (the first compiles the graph)


def check_steps(steps: int) -> int:
    """`--profile-steps`: ValueError unless 1 to MAX_STEPS."""
    if steps < 1:
        raise ValueError(f"--profile-steps must be at least 1, got {steps}")
    if steps > MAX_STEPS:
        raise ValueError(f"--profile-steps must be at most {MAX_STEPS}, got {steps}")
    return steps


class StepProfiler:
    """Call `step_done()` after every training step; profiling covers steps
    skip+1 .. skip+steps of the run and stops by itself."""

    def __init__(self, out_dir: Path, rank: int = 0, steps: int = DEFAULT_STEPS, skip: int = SKIP_STEPS):
        import mindspore as ms
        from mindspore.profiler import ProfilerActivity, schedule, tensorboard_trace_handler

        self.out_dir = Path(out_dir) / f"rank-{rank}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.steps = steps
        self._remaining = skip + steps
        self._prof = ms.profiler.profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.NPU, ProfilerActivity.GPU],
            schedule=schedule(wait=max(skip - 1, 0), warmup=1 if skip else 0, active=steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.out_dir)),
        )
        self._prof.start()
        self.active = True

    def step_done(self) -> None:
        if not self.active:
            return
        self._prof.step()
        self._remaining -= 1
        if self._remaining <= 0:
            self.stop()

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        self._prof.stop()
        summary = summarize(self.out_dir, self.steps)
        if summary:
            (self.out_dir / "op_summary.txt").write_text(summary)


def operator_table(directory: Path, steps: int | None = None) -> tuple[Path, int, dict[str, list[float]]] | None:
    """(CSV file, steps, {operator type: [ms per step, launches per step]}) from the
    profiler's cpu_op_detail_info CSV under `directory`, or None when there is none."""
    files = sorted(Path(directory).glob("**/cpu_op_detail_info_*.csv"))
    if not files:
        return None
    rows = list(csv.DictReader(files[-1].open()))
    if not rows:
        return None
    if steps is None:  # the most frequent occurrence count is the number of steps
        steps = collections.Counter(int(r["op_occurrences"]) for r in rows).most_common(1)[0][0]
    by_type: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        by_type[row["op_type"]][0] += float(row["op_total_time(ms)"]) / steps
        by_type[row["op_type"]][1] += int(row["op_occurrences"]) / steps
    return files[-1], steps, dict(by_type)


def summarize(directory: Path, steps: int | None = None, top: int = 25) -> str:
    """Operator time per step by type from the profiler's cpu_op_detail_info CSV."""
    table = operator_table(directory, steps)
    if table is None:
        return ""
    path, steps, by_type = table
    total = sum(t for t, _ in by_type.values())
    launches = sum(c for _, c in by_type.values())
    lines = [f"{path}", f"{steps} steps; per step: {total:.1f} ms of operator time in "
             f"{launches:.0f} operator launches", f"{'operator':20s} {'ms/step':>8s} "
             f"{'launches':>8s} {'share':>6s}"]
    for name, (t, c) in sorted(by_type.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{name:20s} {t:8.2f} {c:8.0f} {100 * t / total:5.1f}%")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])) or f"no profiler operator data under {sys.argv[1]}")
