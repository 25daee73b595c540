"""`make bench-startup`: time from a 1-node CPU job's start to its first training step.

Not a test: it prints a markdown table. Each run starts training on staged synthetic
miniImageNet embeddings (written once to a temporary directory) and reads the start-up
record `leo_core.train` logs at its first training step (metrics.jsonl, kind "startup").
Variants, alternating run by run so the machine's load drifts hit all alike:

- bootstrap: what a pod runs, `python -m launcher.bootstrap` on a 1-node, 1-card CPU job
  (its ConfigMap's files, data_url the staged directory, no train_url); it sets
  `LEO_START_TIME` itself at its start and, world size 1, runs the script without msrun;
- msrun: `msrun` with the bootstrap's msrun arguments (`JobSpec.msrun_args`, 1 node, 1
  card): how the bootstrap launched a 1-card job before; `LEO_START_TIME` set at the launch;
- python: `python leo_core/train.py` alone: the lower bound.

The phases are measured from the process's spawn by when output lines arrive (the
bootstrap's `[rank 0] ` tag stripped): to the "training ..." line (interpreter, imports,
data loading, MindSpore set-up), to the step-0 validation line (the training step's graph
compile, which comes first since issue 25, the evaluation graph's and the validation of the
untrained model), to the first step. `--resume` times a restart (a
checkpoint exists: no step-0 validation) from the checkpoint of a fresh run by the
bootstrap; there the bootstrap's compile cache (`<cache>/compile-cache`) is kept from that
fresh run to every restart, as a pod's /cache is across container restarts (per-run lines
on stderr). A fresh run always starts with an empty cache, as a new pod does.

Usage: python tests/benchmarks/bench_startup.py [--runs N] [--experiment mini_1shot] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TAG = "[rank 0] "
PHASES = (("training ", "to the 'training' line"), ("validation at step 0", "to the step-0 validation"),
          ("start-up:", "to the first step"))


def _command(variant: str, experiment: str, data: Path, out: Path, logs: Path, port: int, steps: int) -> list[str]:
    from launcher.spec.jobspec import build_job_spec

    if variant == "bootstrap":
        return [sys.executable, "-m", "launcher.bootstrap"]
    script = [str(ROOT / "leo_core" / "train.py"), "--experiment", experiment, "--data-root", str(data),
              "--out", str(out), "--steps", str(steps), "--log-every", "1"]
    if variant == "python":
        return [sys.executable, *script]
    spec = build_job_spec(experiment=experiment, accelerator="cpu", cards=1, name="bench-startup")
    msrun = Path(sys.executable).parent / "msrun"
    args = spec.msrun_args(0, log_dir=str(logs), master_addr="127.0.0.1")
    args[args.index("--master_port") + 1] = str(port)
    return [str(msrun), *args, *script]


def _job_config(directory: Path, experiment: str, data: Path, steps: int) -> None:
    """The files of a 1-node, 1-card CPU job's ConfigMap (what the pod mounts)."""
    from launcher.render.render import render
    from launcher.spec.jobspec import build_job_spec

    spec = build_job_spec(experiment=experiment, accelerator="cpu", cards=1, name="bench-startup",
                          data_url=str(data), set_overrides=[f"num_steps_limit={steps}"])
    config = next(o for o in render(spec) if o["kind"] == "ConfigMap")
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in config["data"].items():
        (directory / key).write_text(text)


def run_once(variant: str, experiment: str, data: Path, work: Path, port: int, resume: Path | None) -> dict:
    cache = work.parent / f"{work.name}-cache"  # the bootstrap's /cache: kept between restarts
    out, logs = (cache / "job" / "out" if variant == "bootstrap" else work / "out"), work / "logs"
    shutil.rmtree(work, ignore_errors=True)
    if resume is None:
        shutil.rmtree(cache, ignore_errors=True)  # a new pod: nothing cached
    else:
        shutil.rmtree(cache / "job", ignore_errors=True)
    work.mkdir(parents=True)
    if resume is not None:
        shutil.copytree(resume, out)
    steps = 2 if resume is None else 3
    cmd = _command(variant, experiment, data, out, logs, port, steps) + (
        ["--resume"] if resume and variant != "bootstrap" else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEO_", "MS_"))}
    env.update({"GLOG_v": "2", "PYTHONUNBUFFERED": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    if variant == "bootstrap":
        _job_config(work / "config", experiment, data, steps)
        env.update({"LEO_CONFIG_DIR": str(work / "config"), "LEO_CACHE_DIR": str(cache), "LEO_NODE_RANK": "0",
                    "LEO_EVAL_TASKS": "1", "LEO_MASTER_PORT": str(port)})
    load = os.getloadavg()[0]
    started = time.time()
    if variant != "bootstrap":  # the bootstrap sets it at its own start
        env["LEO_START_TIME"] = f"{started:.3f}"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True)
    phases, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        text = line[len(TAG):] if line.startswith(TAG) else line
        for prefix, _ in PHASES:
            if text.startswith(prefix) and prefix not in phases:
                phases[prefix] = time.time() - started
    if proc.wait() != 0:
        sys.stderr.write("".join(lines[-30:]))
        raise SystemExit(f"{variant} run failed ({proc.returncode})")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    startup = [r for r in records if r.get("kind") == "startup"]
    return {"startup_s": startup[-1]["seconds"], "startup_records": len(startup),
            "total_s": time.time() - started, "phases": phases, "load": load}


def _free_port() -> int:
    """A loopback port nothing listens on now (the machine is shared: no fixed ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spread(values) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (3)")
    parser.add_argument("--experiment", default="mini_1shot")
    parser.add_argument("--variants", nargs="+", default=["bootstrap", "msrun", "python"],
                        choices=["bootstrap", "msrun", "python"])
    parser.add_argument("--resume", action="store_true", help="time a restart from a step-1 checkpoint")
    parser.add_argument("--smoke", action="store_true",
                        help="one run of each variant: runs every part, no timing claims "
                             "(tests/test_bench_smoke.py)")
    args = parser.parse_args()
    if args.smoke:
        args.runs = 1

    from leo_core.synthetic import write_dataset

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "data", "miniImageNet", seed=0, quiet=True)
        resume = None
        if args.resume:  # a fresh run leaves the checkpoint a restart resumes from and, run by
            # the bootstrap, the compile cache its pod's restarted container finds in /cache
            first = "bootstrap" if "bootstrap" in args.variants else "python"
            run_once(first, args.experiment, tmp / "data", tmp / first, _free_port(), None)
            resume = tmp / "resume"
            shutil.copytree(tmp / f"{first}-cache" / "job" / "out" if first == "bootstrap" else tmp / first / "out",
                            resume)
        runs = {v: [] for v in args.variants}
        for i in range(args.runs):
            for variant in args.variants:
                result = run_once(variant, args.experiment, tmp / "data", tmp / variant, _free_port(), resume)
                runs[variant].append(result)
                print(f"  run {i + 1}/{args.runs} {variant}: start-up {result['startup_s']:.1f} s, load "
                      f"{result['load']:.1f}", file=sys.stderr, flush=True)
    load_end = os.getloadavg()

    print(f"## Start-up: job start to the first training step — {os.cpu_count()} cores, {args.experiment}, "
          f"{'restart from a checkpoint' if args.resume else 'fresh run'}, {args.runs} runs per variant\n")
    print(f"Load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_start)} at the start, "
          f"{'/'.join(f'{x:.1f}' for x in load_end)} at the end. Seconds: median (min–max over runs). "
          "The record counts from LEO_START_TIME (the bootstrap's own start, after its imports; "
          "else the launch), the phases from the process's spawn.\n")
    print("| variant | start-up s (leo_core.train's record) | "
          + " | ".join(title for _, title in PHASES) + " | startup records per run | load |")
    print("|---|---|" + "---|" * len(PHASES) + "---|---|")
    for variant, results in runs.items():
        cells = []
        for prefix, _ in PHASES:
            values = [r["phases"][prefix] for r in results if prefix in r["phases"]]
            cells.append(_spread(values) if len(values) == len(results) else "-")
        loads = [r["load"] for r in results]
        print(f"| {variant} | {_spread([r['startup_s'] for r in results])} | {' | '.join(cells)} | "
              f"{max(r['startup_records'] for r in results)} | {min(loads):.1f}–{max(loads):.1f} |")


if __name__ == "__main__":
    main()
