"""`make bench-core`: LEO meta-training and evaluation speed, MindSpore against PyTorch.

Not a test: it prints a markdown report. It is built so that it cannot flatter either side
on a shared machine:

- Each measurement is a BLOCK: one fresh process of ONE framework (never both alive) sets
  up, warms up (the first MindSpore call compiles its graph), times `--steps` steps and
  exits. Blocks alternate A B A B ... (`--blocks` pairs), so slow drifts of the machine's
  load hit both frameworks alike; the 1-minute load average is recorded before and after
  every block.
- Per step it records wall time (`time.perf_counter`) and CPU time of the whole process,
  all threads (`time.process_time`). A block's value is its median step; the MS/PT ratio
  is formed per adjacent pair of blocks and reported as the median over pairs with its
  min-max spread.
- It states the threads each framework used: PyTorch's intra-/inter-op settings, and
  for both the number of OS threads of the process.

Meta-training step (12 tasks, 5-way, 15 queries per class, the experiment's config on
both sides; the optimizer update is excluded on both sides): episodes come from
leo_core.data's `EpisodeSampler` over a random [64 x 600 x 640] unit-normalised split.
MindSpore runs what `leo_core.train` runs: the `StepPrefetcher` (episodes and
`sample_noise` of step s+1 drawn in a background thread) and `LEO.loss_and_grads`; the
time on the critical path waiting for host inputs is reported apart. PyTorch: the same
step written plainly in float32 (gathering on the main thread, torch RNG noise, inner
loops by `torch.autograd.grad(..., create_graph=True)`, then `.backward()`), checked
once against the float64 reference in tests/leo_core/reference_torch.py.

Evaluation: tasks/s with 600 - K queries per class, chunks as `leo_core.evaluate` uses
them, episode gathering included, over a random [20 x 600 x 640] split; and the real
`leo_core.evaluate` on `--metatest-tasks` one-shot tasks (MindSpore), without and with the
baselines (untrained model, nearest-class-mean) that `python -m leo_core.evaluate` adds.

Usage: python tests/benchmarks/bench_core.py [--blocks N] [--steps N] [--only train|eval|metatest]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "2")

from leo_core.config import load_experiment  # noqa: E402
from leo_core.model import EMBEDDING_DIM, PARAM_NAMES, init_parameters, sample_noise  # noqa: E402

D = EMBEDDING_DIM
EXPERIMENTS = ("mini_1shot", "mini_5shot")
TRAIN_QUERIES = 15
POOL_CLASSES, POOL_IMAGES = 20, 600


# ---------------------------------------------------------------- shared helpers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def random_batch(rng, cfg, batch, queries):
    """Unit-normalised random episodes (non-negative, like post-ReLU embeddings)."""
    n, k = cfg.num_classes, cfg.num_tr_examples_per_class

    def unit(shape):
        x = np.abs(rng.standard_normal(shape)).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    labels = np.arange(n)[None, :, None]
    return (unit((batch, n, k, D)), np.broadcast_to(labels, (batch, n, k)).copy(),
            unit((batch, n, queries, D)), np.broadcast_to(labels, (batch, n, queries)).copy())


def evaluation_sampler(cfg, seed: int):
    """leo_core.data's episode sampler over a random [20 classes x 600 x 640] split
    (unit-normalised once, as `load_split` does): classes and images drawn without
    replacement, support and query sets gathered with NumPy fancy indexing."""
    from leo_core.data import EpisodeSampler, Split, l2_normalize

    rng = np.random.default_rng(seed)
    pool = np.abs(rng.standard_normal((POOL_CLASSES * POOL_IMAGES, D), np.float32))
    l2_normalize(pool, out=pool)
    split = Split("bench", tuple(f"c{i}" for i in range(POOL_CLASSES)),
                  tuple(pool[i * POOL_IMAGES:(i + 1) * POOL_IMAGES] for i in range(POOL_CLASSES)))
    return EpisodeSampler(split, cfg.num_classes, cfg.num_tr_examples_per_class,
                          cfg.eval_queries_per_class, rng)


# ---------------------------------------------------------------- PyTorch baseline


def torch_leo(cfg, params, torch):
    """A plain batched float32 LEO meta-training/evaluation step in PyTorch."""
    n, k, latents = cfg.num_classes, cfg.num_tr_examples_per_class, cfg.num_latents
    keep = 1.0 - cfg.dropout_rate
    weight_offset = 1.0 - math.sqrt(2.0 / (D + n))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    p = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}

    def step(tr_x, tr_y, val_x, val_y, training=True, noise=None):
        """tr_x [B, NK, D], tr_y one-hot [B, NK, N], val_x [B, NQ, D], val_y [B, NQ, N].
        `noise` (a leo_core Noise) replaces torch's RNG, for the correctness check."""
        b = tr_x.shape[0]
        tr_masks = iter(torch.from_numpy(noise.tr_masks)) if noise is not None else None
        weight_eps = iter(torch.from_numpy(noise.weight_eps)) if noise is not None else None

        def support():
            if not training:
                return tr_x
            if tr_masks is not None:
                return tr_x * next(tr_masks)
            return tr_x * (torch.rand(tr_x.shape) < keep).float() / keep

        def sample(mean, u, offset, eps):
            std = torch.clamp(torch.exp(u) - offset, min=1e-10)
            return mean + std * eps, std

        def decode(z):
            mean, u = torch.chunk(z @ p["decoder/w"], 2, dim=-1)
            if not training:
                return mean
            eps = next(weight_eps) if weight_eps is not None else torch.randn(mean.shape)
            return sample(mean, u, weight_offset, eps)[0]

        def support_loss(x, w):  # summed CE; logits average over the K weight samples
            logits = torch.bmm(x, w.mean(dim=2).transpose(1, 2))
            return -(tr_y * torch.log_softmax(logits, dim=-1)).sum()

        codes = support() @ p["encoder/w"]  # [B, NK, L]
        w0 = p["relation/w_0"]
        h = torch.relu((codes @ w0[:latents]).unsqueeze(2) + (codes @ w0[latents:]).unsqueeze(1))
        h = torch.relu(h @ p["relation/w_1"]) @ p["relation/w_2"]
        h = h.mean(dim=2).reshape(b, n, k, 2 * latents).mean(dim=2, keepdim=True)
        mean, u = torch.chunk(h.expand(b, n, k, 2 * latents), 2, dim=-1)
        if training:
            eps = torch.from_numpy(noise.latent_eps) if noise is not None else torch.randn(mean.shape)
            z, std = sample(mean, u, 1.0, eps)
            log_q = -0.5 * ((z - mean) / std) ** 2 - torch.log(std) - half_log_2pi
            kl = (log_q + 0.5 * z**2 + half_log_2pi).mean(dim=(1, 2, 3))
        else:  # evaluation: adapt from the means, no graph back to the parameters
            z = mean.detach().requires_grad_(True)
        z_start = z
        w = decode(z)
        loss = support_loss(support(), w)
        for _ in range(cfg.inner_unroll_length):
            (grad,) = torch.autograd.grad(loss, z, create_graph=training)
            z = z - p["inner_lr"] * grad
            w = decode(z)
            loss = support_loss(support(), w)
        for s in range(cfg.finetuning_unroll_length):
            (grad,) = torch.autograd.grad(loss, w, create_graph=training)
            w = w - p["finetuning_lr"] * grad
            if s + 1 < cfg.finetuning_unroll_length:
                loss = support_loss(support(), w)
        if training:
            if noise is not None:
                val_x = val_x * torch.from_numpy(noise.val_mask)
            else:
                val_x = val_x * (torch.rand(val_x.shape) < keep).float() / keep
        logits = torch.bmm(val_x, w.mean(dim=2).transpose(1, 2))
        ce = -(val_y * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean(dim=1)
        acc = (logits.argmax(-1) == val_y.argmax(-1)).float().mean(dim=1)
        if not training:
            return ce.detach(), acc
        penalty = ((z_start - z.detach()) ** 2).mean(dim=(1, 2, 3))
        task_loss = (ce + cfg.kl_weight * kl + cfg.encoder_penalty_weight * penalty).mean()
        l2 = sum(0.5 * (p[name] ** 2).sum() for name in PARAM_NAMES[:5])
        w_dec = p["decoder/w"]
        norms = torch.linalg.norm(w_dec, dim=1, keepdim=True) + 1e-32
        corr = (w_dec @ w_dec.T) / (norms @ norms.T)
        orth = ((corr - torch.eye(latents)) ** 2).mean()
        total = task_loss + cfg.l2_penalty_weight * l2 + cfg.orthogonality_penalty_weight * orth
        for value in p.values():
            value.grad = None
        total.backward()
        return total.detach(), {name: value.grad for name, value in p.items()}

    return step


def _torch_inputs(torch, cfg, tr_x, tr_y, val_x, val_y):
    n = cfg.num_classes
    eye = np.eye(n, dtype=np.float32)
    b = tr_x.shape[0]
    return (torch.from_numpy(np.ascontiguousarray(tr_x.reshape(b, -1, D))),
            torch.from_numpy(eye[tr_y.reshape(b, -1)]),
            torch.from_numpy(np.ascontiguousarray(val_x.reshape(b, -1, D))),
            torch.from_numpy(eye[val_y.reshape(b, -1)]))


def _check_torch_baseline(torch, cfg, params) -> float:
    """Max error of the baseline's loss and gradients against the float64 reference
    (2 tasks, identical noise), relative to each tensor's largest entry."""
    from tests.leo_core import reference_torch as ref

    check = {**params}
    check["relation/w_2"] = check["relation/w_2"].copy()
    check["relation/w_2"][:, cfg.num_latents:] = np.abs(check["relation/w_2"][:, cfg.num_latents:])
    batch = random_batch(np.random.default_rng(1), cfg, 2, TRAIN_QUERIES)
    noise = sample_noise(cfg, 0, 0, range(2), TRAIN_QUERIES)
    loss, grads = torch_leo(cfg, check, torch)(*_torch_inputs(torch, cfg, *batch), noise=noise)
    ref_loss, _, _, ref_grads = ref.meta_loss_and_grads(cfg, check, *batch, noise)
    errors = [abs(float(loss) - ref_loss) / abs(ref_loss)]
    for name in PARAM_NAMES:
        expected = ref_grads[name]
        errors.append(float(np.abs(grads[name].numpy() - expected).max() / np.abs(expected).max()))
    return max(errors)



# ---------------------------------------------------------------- workers (one framework per process)

TRAIN_CLASSES, TRAIN_IMAGES = 64, 600


def _split(classes: int, images: int, seed: int):
    from leo_core.data import Split, l2_normalize

    rng = np.random.default_rng(seed)
    pool = np.abs(rng.standard_normal((classes * images, D), np.float32))
    l2_normalize(pool, out=pool)
    return Split("bench", tuple(f"c{i}" for i in range(classes)),
                 tuple(pool[i * images:(i + 1) * images] for i in range(classes)))


def _thread_cpu_ms() -> dict[str, float]:
    """CPU ms used so far by each thread of this process, by name: the Python name for
    Python threads (the prefetch thread is `leo-prefetch_0`), else the OS name
    (MindSpore's ActorThread_0, KernelThread_0, ...); threads of one name are summed."""
    import threading

    python_names = {t.native_id: t.name for t in threading.enumerate()}
    tick_ms = 1e3 / os.sysconf("SC_CLK_TCK")
    usage: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = python_names.get(int(tid)) or stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        usage[name] = usage.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * tick_ms
    return usage


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def _train_worker(framework: str, cfg):
    """(step function, info function) of one framework's meta-training step."""
    from leo_core.data import EpisodeSampler, make_rng

    batch_size = cfg.metatrain_batch_size
    sampler = EpisodeSampler(_split(TRAIN_CLASSES, TRAIN_IMAGES, 0), cfg.num_classes,
                             cfg.num_tr_examples_per_class, TRAIN_QUERIES, make_rng(0, 0))
    counter = iter(range(10**9))
    if framework == "mindspore":
        from leo_core.model import LEO
        from leo_core.prefetch import StepPrefetcher, prepare_step

        model = LEO(cfg, seed=0)
        prefetch = os.environ.get("LEO_PREFETCH", "1") != "0"
        prefetcher = StepPrefetcher(
            lambda step: prepare_step(sampler, cfg, 0, step, range(batch_size), batch_size),
            enabled=prefetch)
        from leo_core import runtime_threads

        waits, confined = [], []

        def step():
            start = time.perf_counter()
            index = next(counter)
            prepared = prefetcher.get(index)
            waits.append(time.perf_counter() - start)
            b = prepared.batch
            model.loss_and_grads(b.tr_x, b.tr_y, b.val_x, b.val_y, prepared.noise,
                                 task_weight=1.0 / batch_size, inputs=prepared.inputs)
            if index == 0:  # as leo_core.train after its first step
                confined.append(runtime_threads.confine())

        def info():
            prefetcher.close()
            cores = confined[0] if confined else None
            return {"host_wait_ms": 1e3 * statistics.median(waits[-10:]),
                    "host_prepare_ms": 1e3 * prefetcher.prepare_seconds / prefetcher.steps,
                    "prefetch": prefetch, "threads": _threads(),
                    "runtime_cores": sorted(cores) if cores else None}

        return step, info
    import torch

    torch.set_num_threads(int(framework.removeprefix("torch")))
    torch.manual_seed(0)
    params = init_parameters(cfg, seed=0)
    leo = torch_leo(cfg, params, torch)

    def step():
        next(counter)
        b = sampler.sample(batch_size)
        leo(*_torch_inputs(torch, cfg, b.tr_x, b.tr_y, b.val_x, b.val_y))

    def info():
        return {"threads": _threads(), "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads(),
                "check_err": _check_torch_baseline(torch, cfg, params)}

    return step, info


def _eval_worker(framework: str, cfg):
    """(step function, info function): one chunk of tasks gathered and evaluated."""
    from leo_core.evaluate import CHUNK_PER_RANK

    sampler = evaluation_sampler(cfg, seed=0)
    if framework == "mindspore":
        from leo_core.model import LEO

        evaluate = LEO(cfg, seed=0).evaluate_batch
    else:
        import torch

        torch.set_num_threads(int(framework.removeprefix("torch")))
        leo = torch_leo(cfg, init_parameters(cfg, seed=0), torch)

        def evaluate(*batch):
            return leo(*_torch_inputs(torch, cfg, *batch), training=False)

    def step():
        b = sampler.sample(CHUNK_PER_RANK)
        evaluate(b.tr_x, b.tr_y, b.val_x, b.val_y)

    return step, lambda: {"threads": _threads(), "chunk": CHUNK_PER_RANK}


def _metatest_worker(cfg, tasks: int) -> dict:
    """The real leo_core.evaluate path on `tasks` tasks (MindSpore), without and with the
    baselines `python -m leo_core.evaluate` adds by default (untrained model, NCM)."""
    from leo_core.distributed import Comm
    from leo_core.evaluate import NearestClassMean, evaluate_models
    from leo_core.model import LEO

    model = LEO(cfg, seed=0)
    runs = {"without": {"trained": model},
            "with": {"trained": model, "untrained": LEO(cfg, seed=1), "nearest_class_mean": NearestClassMean()}}
    result = {"tasks": tasks, "load_before": os.getloadavg()[0]}
    for name, models in runs.items():
        evaluate_models(models, evaluation_sampler(cfg, seed=1), 16, Comm())  # compile
        wall, cpu = time.perf_counter(), time.process_time()
        queries = evaluate_models(models, evaluation_sampler(cfg, seed=0), tasks, Comm())["trained"]["queries_per_class"]
        result[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    return {**result, "queries_per_class": queries, "load_after": os.getloadavg()[0],
            "peak_rss_mb": peak_rss_mb(), "threads": _threads()}


def _launches_worker(cfg, steps: int, skip: int) -> dict:
    """MindSpore's operator launches and operator time per training step, from its profiler
    (leo_core.profiling, as `leo_core.train --profile` runs it): figures that do not depend
    on the machine's speed or load (launches) or less than wall time does."""
    import tempfile

    from leo_core.profiling import StepProfiler, operator_table

    step, info = _train_worker("mindspore", cfg)
    with tempfile.TemporaryDirectory() as out:
        profiler = StepProfiler(Path(out), steps=steps, skip=skip)
        for _ in range(skip + steps):
            step()
            profiler.step_done()
        info()
        table = operator_table(Path(out), steps)
    if table is None:
        raise SystemExit("the profiler wrote no operator table")
    by_type = table[2]
    return {"launches": sum(c for _, c in by_type.values()),
            "operator_ms": sum(t for t, _ in by_type.values()), "profiled_steps": steps}


def worker(kind: str, framework: str, experiment: str, steps: int, warmup: int) -> None:
    from leo_core.hostmem import keep_freed_memory

    keep_freed_memory()  # as leo_core.train does; the same for both frameworks
    cfg = load_experiment(experiment)
    if kind == "metatest":
        print(MARK + json.dumps(_metatest_worker(cfg, steps)), flush=True)
        return
    if kind == "launches":
        print(MARK + json.dumps(_launches_worker(cfg, steps, warmup)), flush=True)
        return
    step, info = (_train_worker if kind == "train" else _eval_worker)(framework, cfg)
    start = time.perf_counter()
    step()  # compiles (MindSpore) / allocates
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    wall, cpu = [], []
    threads_before = _thread_cpu_ms()
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        step()
        wall.append(1e3 * (time.perf_counter() - w))
        cpu.append(1e3 * (time.process_time() - c))
    threads_after = _thread_cpu_ms()
    thread_cpu = {name: (used - threads_before.get(name, 0.0)) / steps for name, used in threads_after.items()}
    print(MARK + json.dumps({"first_s": first, "wall_ms": wall, "cpu_ms": cpu, "peak_rss_mb": peak_rss_mb(),
                             "thread_cpu_ms": {k: v for k, v in thread_cpu.items() if v > 0}, **info()}), flush=True)


MARK = "BENCH "


def run_block(kind: str, framework: str, experiment: str, steps: int, warmup: int) -> dict:
    """One framework alone in a fresh process; returns its measurements."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, framework, experiment,
           "--steps", str(steps), "--warmup", str(warmup)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark block {kind} {framework} {experiment} failed ({proc.returncode})")
    result = json.loads(lines[-1][len(MARK):])
    result.update(load_before=load_before, load_after=os.getloadavg()[0])
    if "wall_ms" in result:
        result["wall"] = statistics.median(result["wall_ms"])
        result["cpu"] = statistics.median(result["cpu_ms"])
    return result


def alternate(kind: str, experiment: str, blocks: int, steps: int, warmup: int,
              torch_threads: list[int]) -> dict:
    """Rounds of blocks MS, PT (each thread setting), MS, PT, ... each framework alone.

    Per round, the ratio divides MindSpore's median step by the FASTER PyTorch setting's
    (on a loaded machine PyTorch's 2-thread kernels can lose badly to 1 thread, so a fixed
    setting could flatter MindSpore)."""
    variants = ["mindspore"] + [f"torch{n}" for n in torch_threads]
    runs = {v: [] for v in variants}
    for i in range(blocks):
        for framework in variants:
            block = run_block(kind, framework, experiment, steps, warmup)
            runs[framework].append(block)
            print(f"  {kind} {experiment} round {i + 1}/{blocks} {framework}: median "
                  f"{block['wall']:.1f} ms wall, {block['cpu']:.1f} ms CPU per step, load "
                  f"{block['load_before']:.1f}->{block['load_after']:.1f}", file=sys.stderr, flush=True)
    best_torch = [min((runs[v][i] for v in variants[1:]), key=lambda b: b["wall"]) for i in range(blocks)]
    ratios = [m["wall"] / t["wall"] for m, t in zip(runs["mindspore"], best_torch, strict=True)]
    cpu_ratios = [m["cpu"] / t["cpu"] for m, t in zip(runs["mindspore"], best_torch, strict=True)]
    return {**runs, "torch": best_torch, "ratios": ratios, "cpu_ratios": cpu_ratios,
            "torch_variants": variants[1:]}


# ---------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _med(blocks, key):
    return statistics.median(b[key] for b in blocks)


def _spread(values, fmt="{:.2f}"):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _loads(result) -> str:
    loads = [b[k] for fw in ("mindspore", *result["torch_variants"]) for b in result[fw]
             for k in ("load_before", "load_after")]
    return f"{min(loads):.1f}–{max(loads):.1f}"


PROFILED_STEPS = 5  # training steps under MindSpore's profiler, for the launch count
RESULTS = ROOT / "tests" / "benchmarks" / "results" / "bench_core.jsonl"


def _commit() -> str:
    """HEAD's short hash, '+dirty' when the work tree differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def report_stable_figures(train: dict, launches: dict, metatest: dict | None, record: Path) -> None:
    """Figures that depend little or not at all on the machine's speed and load, per commit:
    printed, compared with the last recorded run of another commit, and appended to `record`."""
    row = {"commit": _commit(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_model(),
           "cores": os.cpu_count(), "configs": {}}
    for exp, r in train.items():
        m = r["mindspore"]
        row["configs"][exp] = {
            "launches_per_step": round(launches[exp]["launches"], 1),
            "cpu_ms_per_step": [round(b["cpu"], 1) for b in m],
            "wall_ms_per_step": [round(b["wall"], 1) for b in m],
            "ms_pt_wall": [round(x, 3) for x in r["ratios"]],
            "ms_pt_cpu": [round(x, 3) for x in r["cpu_ratios"]],
            "peak_rss_mb": round(max(b["peak_rss_mb"] for b in m)),
            "load": [round(b[k], 1) for b in m for k in ("load_before", "load_after")]}
    if metatest:
        row["metatest"] = {k: metatest[k] for k in ("tasks", "without", "with")}
    previous = None
    if record != Path("-") and record.exists():
        rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        previous = next((p for p in reversed(rows) if p.get("commit") != row["commit"]), None)
    print("### Machine-independent figures (MindSpore meta-training step)\n")
    print("| config | operator launches per step | host CPU ms per step, median (min–max over blocks) "
          "| peak RSS MB | previous recorded run |")
    print("|---|---|---|---|---|")
    for exp, c in row["configs"].items():
        before = (previous or {}).get("configs", {}).get(exp)
        versus = (f"{previous['commit']}: {before['launches_per_step']:.0f} launches, "
                  f"{statistics.median(before['cpu_ms_per_step']):.1f} CPU ms, {before['peak_rss_mb']} MB"
                  if before else "none")
        if before and c["launches_per_step"] > before["launches_per_step"]:
            versus += " — MORE LAUNCHES THAN BEFORE"
        print(f"| {exp} | {c['launches_per_step']:.0f} | {_spread(c['cpu_ms_per_step'], '{:.1f}')} "
              f"| {c['peak_rss_mb']} | {versus} |")
    print(f"\nLaunches: MindSpore's profiler over {PROFILED_STEPS} steps after 2 (leo_core.profiling).")
    if record != Path("-"):
        record.parent.mkdir(parents=True, exist_ok=True)
        with record.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"Recorded in {record.relative_to(ROOT) if record.is_relative_to(ROOT) else record}.")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3, help="MS/PT block pairs per config (3)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per block (20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-chunks", type=int, default=5, help="timed evaluation chunks per block")
    parser.add_argument("--metatest-tasks", type=int, default=10000,
                        help="one-shot tasks for the real meta-test timing (0 skips it)")
    parser.add_argument("--only", choices=("train", "eval", "metatest"),
                        help="run one part only (eval includes the meta-test)")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--torch-threads", nargs="+", type=int, default=[1, 2],
                        help="PyTorch intra-op thread settings, each its own block (1 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 block, 1 step, 1 config, 8 meta-test tasks: runs every part, no "
                             "timing claims (tests/benchmarks/test_smoke.py)")
    parser.add_argument("--record", type=Path, default=RESULTS,
                        help=f"append this run's figures here, one JSON line (default "
                             f"{RESULTS.relative_to(ROOT)}; '-' records nothing)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.blocks, args.steps, args.warmup, args.eval_chunks = 1, 1, 1, 1
        args.metatest_tasks, args.experiments, args.torch_threads = 8, args.experiments[:1], [1]
        args.record = Path("-")  # a smoke run is no measurement: record nothing
    if args.worker:
        worker(*args.worker, steps=args.steps, warmup=args.warmup)
        return

    from importlib.metadata import version

    started = time.perf_counter()
    load_start = os.getloadavg()
    train = evals = metatest = None
    launches = {}
    if args.only in (None, "train"):
        train = {e: alternate("train", e, args.blocks, args.steps, args.warmup,
                                  args.torch_threads) for e in args.experiments}
        launches = {e: run_block("launches", "mindspore", e, PROFILED_STEPS, 2) for e in args.experiments}
    if args.only in (None, "eval"):
        evals = {e: alternate("eval", e, max(1, args.blocks - 1), args.eval_chunks, 1,
                                 args.torch_threads)
                 for e in args.experiments}
    if args.only in (None, "eval", "metatest"):
        if args.metatest_tasks:
            metatest = run_block("metatest", "mindspore", "mini_1shot", args.metatest_tasks, 0)
    load_end = os.getloadavg()

    print(f"## LEO core benchmark — {cpu_model()}, {os.cpu_count()} cores, "
          f"MindSpore {version('mindspore')}, PyTorch {version('torch')}\n")
    print(f"Load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_start)} at the start, "
          f"{'/'.join(f'{x:.1f}' for x in load_end)} at the end. Every block is one framework "
          "alone in a fresh process; blocks alternate MindSpore, PyTorch, MindSpore, ... "
          "Ratios are MS/PT per adjacent pair of blocks: median (min–max over pairs).\n")
    if train:
        print(f"### Meta-training step ({args.blocks} block pairs × {args.steps} timed steps after "
              f"{args.warmup} warm-up; 12 tasks, 15 queries per class; optimizer excluded)\n")
        variants = next(iter(train.values()))["torch_variants"]
        print("| config | MindSpore ms/step wall (CPU) | "
              + " | ".join(f"PyTorch {v[5:]} thread(s) ms/step wall (CPU)" for v in variants)
              + " | ratio MS/PT wall | ratio MS/PT CPU | MS host inputs: critical path / "
              "background ms | load during blocks | peak RSS MS / PT MB |")
        print("|---|---|" + "---|" * len(variants) + "---|---|---|---|---|")
        for exp, r in train.items():
            m = r["mindspore"]
            print(f"| {exp} | {_med(m, 'wall'):.1f} ({_med(m, 'cpu'):.1f}) | "
                  + " | ".join(f"{_med(r[v], 'wall'):.1f} ({_med(r[v], 'cpu'):.1f})" for v in variants)
                  + f" | {_spread(r['ratios'])} | {_spread(r['cpu_ratios'])} "
                  f"| {_med(m, 'host_wait_ms'):.2f} / {_med(m, 'host_prepare_ms'):.1f} "
                  f"| {_loads(r)} | {max(b['peak_rss_mb'] for b in m):.0f} / "
                  f"{max(b['peak_rss_mb'] for v in variants for b in r[v]):.0f} |")
        print("\nMS/PT ratios use, round by round, the faster PyTorch setting; medians over "
              "rounds, (min–max).")
        any_exp = next(iter(train.values()))
        pt, ms_ = any_exp["torch"][0], any_exp["mindspore"][0]
        print(f"\nThreads: PyTorch intra-op as in the column, inter-op "
              f"{pt['torch_interop_threads']}, {pt['threads']} OS threads in its process; "
              f"MindSpore {ms_['threads']} OS threads in its process (runtime defaults"
              f"{', prefetch thread included' if ms_['prefetch'] else ''}; "
              + (f"runtime threads confined to cores {ms_['runtime_cores']} after the first step, "
                 "as leo_core.train does" if ms_.get("runtime_cores") else "runtime threads not confined")
              + "). "
              "MS first call (graph compilation): "
              + ", ".join(f"{e} {_med(r['mindspore'], 'first_s'):.1f} s" for e, r in train.items())
              + ". PyTorch baseline vs the float64 reference (2 tasks, same noise), max error "
              "relative to each tensor's largest entry: "
              + ", ".join(f"{e} {r['torch'][0]['check_err']:.1e}" for e, r in train.items()) + ".\n")
        print("CPU ms per timed step by thread, median over blocks (/proc/self/task; threads "
              "busy-waiting count too):")
        for e, r in train.items():
            for framework in ("mindspore", *r["torch_variants"]):
                names = sorted({n for b in r[framework] for n in b.get("thread_cpu_ms", {})})
                shares = ", ".join(f"{n} {statistics.median(b.get('thread_cpu_ms', {}).get(n, 0.0) for b in r[framework]):.1f}"
                                   for n in names)
                print(f"- {e} {framework}: {shares}")
        print()
    if train:
        report_stable_figures(train, launches, metatest, args.record)
    if evals:
        chunk = next(iter(evals.values()))["mindspore"][0]["chunk"]
        print(f"### Evaluation (600 − K queries per class, chunks of {chunk} tasks, gathering "
              "included)\n")
        variants = next(iter(evals.values()))["torch_variants"]
        print("| config | MindSpore tasks/s (CPU ms/task) | "
              + " | ".join(f"PyTorch {v[5:]} thread(s) tasks/s (CPU ms/task)" for v in variants)
              + " | ratio MS/PT time | load during blocks |")
        print("|---|---|" + "---|" * len(variants) + "---|---|")
        for exp, r in evals.items():
            cells = [f"{chunk / _med(r[v], 'wall') * 1e3:.0f} ({_med(r[v], 'cpu') / chunk:.1f})"
                     for v in ("mindspore", *variants)]
            print(f"| {exp} | {' | '.join(cells)} | {_spread(r['ratios'])} | {_loads(r)} |")
        print()
    if metatest:
        without, with_ = metatest["without"], metatest["with"]
        print(f"Meta-test, `leo_core.evaluate`, mini_1shot, {metatest['tasks']} tasks × "
              f"{metatest['queries_per_class']} queries per class (MindSpore): "
              f"{without['wall_s']:.1f} s wall, {without['cpu_s']:.1f} s CPU without baselines; "
              f"{with_['wall_s']:.1f} s wall, {with_['cpu_s']:.1f} s CPU with both baselines "
              f"(untrained model, nearest-class-mean; {with_['wall_s'] / without['wall_s']:.2f}× the "
              f"time); load {metatest['load_before']:.1f}->{metatest['load_after']:.1f}, peak RSS "
              f"{metatest['peak_rss_mb']:.0f} MB.\n")
    print(f"Total benchmark time {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
