"""Benchmark of the launcher's start-up and rendering (`make bench-launcher`).

Prints one table:
- `leo-launch --help`: wall time and `python -X importtime` total, and which heavy
  packages it imports (must be none of MindSpore, boto3, the Kubernetes client);
- rendering + validating a 32-node job (256 cards): in a fresh process (imports
  and schema loading included), warm in-process (median) with its breakdown,
  and the whole `leo-launch render` command.

Not a timed test: it measures and reports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
HEAVY = ("mindspore", "boto3", "botocore", "kubernetes", "kubernetes_validate")
NODES = 32


def _python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env, check=False)


def _wall(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = _python(*args)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return statistics.median(times)


def _importtime(args: list[str]) -> tuple[float, list[str]]:
    """Total top-level import time (s) and the heavy packages imported."""
    result = _python("-X", "importtime", *args)
    total, heavy = 0, set()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # a top-level import (not nested in another)
            total += int(cumulative)
        root = name.strip().split(".")[0]
        if root in HEAVY:
            heavy.add(root)
    return total / 1e6, sorted(heavy)


def _inventory(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.launcher.render_helpers import write_inventory

    return write_inventory(directory / "nodes.yaml", NODES)


def _job_flags(inventory: Path | None, scheduler: str = "job", accel: str = "ascend") -> list[str]:
    flags = ["--exp", "mini_5shot", "--accel", accel, "--cards", str(8 * NODES), "--set",
             f"metatrain_batch_size={8 * NODES}", "--scheduler", scheduler, "--train-url", "obs://leo-out/runs",
             "--storage-region", "cn-north-4",
             "--storage-secret", "obs-creds"]
    if inventory is not None:
        flags += ["--rank-table", str(inventory)]
    return flags


_COLD = """
import sys, time
start = time.perf_counter()
from launcher.cli.main import build_parser
from launcher.cli.cmd_render import spec_from_args
from launcher.render.render import render_validated
args = build_parser().parse_args(["render", *sys.argv[1:]])
objects = render_validated(spec_from_args(args))
print(time.perf_counter() - start)
"""


def _warm(flags: list[str], repeat: int) -> dict[str, float]:
    from launcher.cli.cmd_render import spec_from_args
    from launcher.cli.main import build_parser
    from launcher.render import render
    from launcher.render.check import check_manifests

    args = build_parser().parse_args(["render", *flags])
    render.render_validated(spec_from_args(args))  # imports, schemas and validators loaded once
    samples: dict[str, list[float]] = {"spec": [], "render": [], "validate": [], "dump": [], "total": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        spec = spec_from_args(args)
        t1 = time.perf_counter()
        objects = render.render(spec)
        t2 = time.perf_counter()
        check_manifests(objects)
        t3 = time.perf_counter()
        render.dump(objects)
        t4 = time.perf_counter()
        for key, value in zip(samples, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            samples[key].append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per process measurement (median)")
    parser.add_argument("--smoke", action="store_true",
                        help="one run of everything, no timing claims (tests/benchmarks/test_smoke.py)")
    options = parser.parse_args(argv)
    if options.smoke:
        options.repeat = 1
    rows: list[tuple[str, str]] = []

    help_wall = _wall(["-m", "launcher", "--help"], options.repeat)
    help_imports, heavy = _importtime(["-m", "launcher", "--help"])
    k8s_imports, _ = _importtime(["-c", "import kubernetes.client"])
    rows += [
        ("leo-launch --help: wall time (median)", f"{help_wall * 1000:.0f} ms"),
        ("leo-launch --help: import time (-X importtime)", f"{help_imports * 1000:.0f} ms"),
        ("leo-launch --help: MindSpore/boto3/Kubernetes imported", ", ".join(heavy) or "none"),
        ("for scale: import kubernetes.client alone", f"{k8s_imports * 1000:.0f} ms"),
    ]

    with tempfile.TemporaryDirectory() as tmp:
        inventory = _inventory(Path(tmp))
        cases = [
            ("ascend, Job, FILE rank table", _job_flags(inventory)),
            ("ascend, Volcano, dynamic", _job_flags(None, "volcano")),
            ("nvidia, Job", _job_flags(None, accel="nvidia")),
        ]
        # ROOT after what is inherited: under pytest that holds the test network guard
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
        cold = []
        for _ in range(options.repeat):
            result = _python("-c", _COLD, *cases[0][1], env=env)
            if result.returncode != 0:
                raise SystemExit(f"cold render failed: {result.stderr.strip()}")
            cold.append(float(result.stdout.strip()))
        rows.append((f"{NODES}-node render+validate, fresh process incl. imports (median)",
                     f"{statistics.median(cold) * 1000:.0f} ms"))
        for label, flags in cases:
            warm = _warm(flags, 1 if options.smoke else max(10, options.repeat * 4))
            rows.append((f"{NODES}-node render+validate, warm: {label}", f"{warm['total'] * 1000:.1f} ms  "
                         f"(spec {warm['spec'] * 1000:.1f}, render {warm['render'] * 1000:.1f}, validate "
                         f"{warm['validate'] * 1000:.1f}, YAML out {warm['dump'] * 1000:.1f})"))
        cli = _wall(["-m", "launcher", "render", *cases[0][1]], options.repeat)
        rows.append((f"leo-launch render (whole command, {NODES} nodes, median)", f"{cli * 1000:.0f} ms"))

    width = max(len(name) for name, _ in rows)
    print(f"{'measurement'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    if heavy:
        print(f"FAIL: --help imports {', '.join(heavy)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
