"""`make demo`: the main job, end to end, on this machine.

1. generate a full-size synthetic miniImageNet embedding set (the original format);
2. start a local SeaweedFS S3 server and push the embeddings to it;
3. `leo-launch submit --backend local --accel cpu --cards 2 --exp mini_5shot` with a short
   schedule, and follow its logs (2 MindSpore workers under msrun);
4. pull the best checkpoint and print a table of meta-test accuracy, each with its 95%
   interval, on the SAME 1,000 tasks: trained LEO (the best checkpoint, which may be the
   untrained step 0), the untrained model and nearest-class-mean (the job's evaluation
   writes all three into result.json);
5. write the training-curve plot and the run's report table;
6. stop what it started (the server, the job's processes).

Run from the repository (the S3 server is launcher/util/s3server.py's SeaweedFS, from the
dev extras). Outputs land in ./demo-out/. Every step is a real `leo-launch` command; the script only strings them together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "demo-out"
JOB = "leo-demo"
BUCKET = "leo-demo"
STEPS = 300
# A short schedule that fits the 15-minute budget on 2 cores: validation every 100 steps
# on 200 tasks, meta-test on 50 x 20 = 1,000 tasks (599 queries per class, as the original).
OVERRIDES = ["checkpoint_steps=100", "num_validation_batches=2", "metavalid_batch_size=100",
             "metatest_batch_size=20"]


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def leo(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launcher", *args]
    print("$ leo-launch " + " ".join(args), flush=True)
    proc = subprocess.run(command, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `leo-launch {args[0]}` failed with exit code {proc.returncode}")
    return proc


def nearest_class_mean(data_root: Path, tasks: int) -> tuple[float, float]:
    import numpy as np

    from leo_core import data

    split = data.load_split(data_root, "miniImageNet", "center", "test")
    sampler = data.EpisodeSampler(split, 5, 5, 595, data.make_rng(2, 0))
    accs = np.concatenate([data.nearest_class_mean_accuracy(sampler.sample(50))
                           for _ in range(tasks // 50)])
    return float(accs.mean()), float(1.96 * accs.std() / np.sqrt(len(accs)))


def main() -> int:
    from launcher.util.s3server import start_s3_server

    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="leo-demo-"))
    state = scratch / "state"
    server = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(XDG_STATE_HOME=str(state), GLOG_v="3", PYTHONUNBUFFERED="1")
    try:
        say("1/6 generating a full-size synthetic miniImageNet embedding set")
        data_root = scratch / "embeddings"
        subprocess.run([sys.executable, "-m", "leo_core.synthetic", "--out", str(data_root),
                        "--dataset", "miniImageNet", "--seed", "0"], check=True, cwd=ROOT)

        say("2/6 starting a local S3 server (SeaweedFS) and pushing the embeddings")
        server = start_s3_server(scratch / "s3")
        server.create_bucket(BUCKET)
        env.update(server.env())
        storage = ["--storage-endpoint", server.endpoint]
        leo("push", str(data_root), f"s3://{BUCKET}/embeddings", *storage, env=env)

        say(f"3/6 training mini_5shot on 2 CPU workers for {STEPS} steps (local backend)")
        sets = [arg for item in OVERRIDES for arg in ("--set", item)]
        leo("submit", "--backend", "local", "--accel", "cpu", "--cards", "2", "--exp", "mini_5shot",
            "--name", JOB, "--steps", str(STEPS), *sets,
            "--data-url", f"s3://{BUCKET}/embeddings", "--train-url", f"s3://{BUCKET}/runs",
            *storage, "--follow", env=env)

        say("4/6 pulling the best checkpoint")
        leo("pull", JOB, "--checkpoint", "best", "--to", str(OUT / "checkpoint"), *storage, env=env)
        leo("status", JOB, env=env)

        say("5/6 report and training curves")
        leo("report", JOB, "--png", str(OUT / "curves.png"), *storage, env=env)
        result = subprocess.run(
            [sys.executable, "-m", "launcher", "report", JOB, "-o", "json", *storage],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        (OUT / "report.json").write_text(result.stdout)

        say("6/6 meta-test: trained LEO, the untrained model and nearest-class-mean, same tasks")
        summary = json.loads(result.stdout)
        test = summary.get("meta_test") or {}
        tasks = int(test.get("tasks") or 1000)
        baselines = test.get("baselines") or {}
        if "nearest_class_mean" not in baselines:  # a result.json without baselines
            ncm, ncm_ci = nearest_class_mean(data_root, tasks)
            baselines["nearest_class_mean"] = {"accuracy": ncm, "ci95": ncm_ci}
        best = summary.get("best_validation") or {}
        step = test.get("step", best.get("step"))
        rows = [(f"LEO mini_5shot, trained (best checkpoint: step {step})", test),
                ("LEO mini_5shot, untrained (step 0, initial weights)", baselines.get("untrained")),
                ("nearest-class-mean (prototype = mean of the 5 shots)",
                 baselines.get("nearest_class_mean"))]
        print(f"meta-test, {tasks} tasks, 5-way 5-shot, 595 queries per class; "
              f"{STEPS} training steps on 2 CPU workers")
        width = max(len(label) for label, _ in rows)
        print(f"  {'model'.ljust(width)}  accuracy ± 95% interval")
        for label, value in rows:
            text = ("n/a" if not value or value.get("accuracy") is None
                    else f"{100 * value['accuracy']:.2f}% ± {100 * (value.get('ci95') or 0):.2f}%")
            print(f"  {label.ljust(width)}  {text}")
        if step == 0:
            print("  (no trained step beat the untrained model on meta-validation)")
        print(f"outputs: {OUT}/ (checkpoint/, curves.png, report.json); "
              f"took {(time.monotonic() - started) / 60:.1f} min")
        return 0
    finally:
        say("stopping what the demo started")
        subprocess.run([sys.executable, "-m", "launcher", "cancel", JOB], env=env, cwd=ROOT,
                       capture_output=True)
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
