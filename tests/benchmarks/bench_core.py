"""`make bench-core`: LEO meta-training and evaluation speed, MindSpore against PyTorch.

Prints a markdown table. Not a test: timings on a shared machine are noisy.

- Meta-training step (12 tasks, 15 queries per class), median over timed steps after
  warm-up (the first call compiles the MindSpore graph; its time is shown apart).
  MindSpore: `sample_noise` (host NumPy noise) + `LEO.loss_and_grads` (graph mode,
  closed-form inner loops, autodiff outer gradient). The optimizer update
  (Adam, clipping, NaN guard) is not included: it lives in leo_core.train.
  PyTorch: the same step written plainly in float32 on the CPU — batched over
  tasks, noise from torch's RNG, inner loops by `torch.autograd.grad(...,
  create_graph=True)` (second order), then `.backward()`. Its loss and gradients
  are checked once against the float64 reference in tests/leo_core/reference_torch.py.
- Evaluation throughput: tasks/s with 600 - K queries per class in chunks of 25 tasks,
  including episode gathering by leo_core.data's `EpisodeSampler` from a random
  [20 x 600 x 640] array (unit-normalised once) — MindSpore `evaluate_batch` and the
  PyTorch baseline in evaluation mode; the time of 10,000 one-shot tasks is
  extrapolated from the rate.
- Peak RSS (resource.getrusage) of each framework's process.

Each framework runs in its own subprocess (separate peak memory); the MindSpore and
PyTorch processes of a comparison stay alive together and their steps alternate, so
both see the same load on a shared machine, and the ratio is the median of per-step
ratios.

Usage: python tests/benchmarks/bench_core.py [--steps N] [--eval-chunks N]
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
import tempfile
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
EVAL_CHUNK = 25
POOL_CLASSES, POOL_IMAGES = 20, 600
TORCH_THREADS = 2


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


# ---------------------------------------------------------------- workers (subprocesses)

MARK = "BENCH "  # prefix of the worker's protocol lines on stdout


def _reply(obj) -> None:
    print(MARK + json.dumps(obj), flush=True)


def _train_worker(framework: str, cfg):
    """(step function, closing function) of one framework's meta-training step."""
    batch_size = cfg.metatrain_batch_size
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, cfg, batch_size, TRAIN_QUERIES) for _ in range(4)]
    counter = iter(range(10**9))
    if framework == "mindspore":
        from leo_core.model import LEO

        model = LEO(cfg, seed=0)

        def step():
            i = next(counter)
            noise = sample_noise(cfg, 0, i, range(batch_size), TRAIN_QUERIES)
            model.loss_and_grads(*batches[i % 4], noise, task_weight=1.0 / batch_size)

        def close():
            noise_ms = []
            for _ in range(5):
                start = time.perf_counter()
                sample_noise(cfg, 0, next(counter), range(batch_size), TRAIN_QUERIES)
                noise_ms.append(1e3 * (time.perf_counter() - start))
            return {"noise_ms": statistics.median(noise_ms)}

        return step, close
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    params = init_parameters(cfg, seed=0)
    leo = torch_leo(cfg, params, torch)
    inputs = [_torch_inputs(torch, cfg, *b) for b in batches]

    def step():
        leo(*inputs[next(counter) % 4])

    return step, lambda: {"check_err": _check_torch_baseline(torch, cfg, params)}


def _eval_worker(framework: str, cfg):
    """(step function, closing function): one chunk of tasks gathered and evaluated."""
    sampler = evaluation_sampler(cfg, seed=0)
    if framework == "mindspore":
        from leo_core.model import LEO

        evaluate = LEO(cfg, seed=0).evaluate_batch
    else:
        import torch

        torch.set_num_threads(TORCH_THREADS)
        leo = torch_leo(cfg, init_parameters(cfg, seed=0), torch)

        def evaluate(*batch):
            return leo(*_torch_inputs(torch, cfg, *batch), training=False)

    gather_ms = []

    def step():
        start = time.perf_counter()
        b = sampler.sample(EVAL_CHUNK)
        gather_ms.append(1e3 * (time.perf_counter() - start))
        evaluate(b.tr_x, b.tr_y, b.val_x, b.val_y)

    return step, lambda: {"gather_ms": statistics.median(gather_ms[1:] or gather_ms)}


def worker(kind: str, framework: str, experiment: str, warmup: int) -> None:
    """Set up, warm up, then time one step per `step` line read from stdin."""
    cfg = load_experiment(experiment)
    step, close = (_train_worker if kind == "train" else _eval_worker)(framework, cfg)
    start = time.perf_counter()
    step()  # compiles (MindSpore) / allocates
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    _reply({"first_s": first})
    for line in sys.stdin:
        if line.strip() == "step":
            start = time.perf_counter()
            step()
            _reply({"ms": 1e3 * (time.perf_counter() - start)})
        else:
            break
    _reply({**close(), "peak_rss_mb": peak_rss_mb()})


class Worker:
    def __init__(self, kind: str, framework: str, experiment: str, warmup: int):
        self.log = tempfile.TemporaryFile("w+")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, framework,
               experiment, "--warmup", str(warmup)]
        self.name = " ".join(cmd[-5:-2])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.ready = self._read()
        self.times: list[float] = []

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self.log.seek(0)
                sys.stderr.write(self.log.read()[-4000:])
                raise SystemExit(f"benchmark worker {self.name} failed ({self.proc.returncode})")
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.times.append(self._read()["ms"])
        return self.times[-1]

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        result = self._read()
        self.proc.wait()
        self.log.close()
        return {**self.ready, **result, "median_ms": statistics.median(self.times),
                "min_ms": min(self.times)}


def paired(kind: str, experiment: str, steps: int, warmup: int) -> dict:
    """MindSpore and PyTorch workers alive together, their steps alternated so that both
    see the same machine load; the ratio is the median of the per-pair ratios."""
    ms_worker = Worker(kind, "mindspore", experiment, warmup)
    pt_worker = Worker(kind, "torch", experiment, warmup)
    ratios = []
    for i in range(steps):
        first, second = (ms_worker, pt_worker) if i % 2 == 0 else (pt_worker, ms_worker)
        first.step()
        second.step()
        ratios.append(ms_worker.times[-1] / pt_worker.times[-1])
    return {"mindspore": ms_worker.finish(), "torch": pt_worker.finish(),
            "ratio": statistics.median(ratios)}


# ---------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per config")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-chunks", type=int, default=6,
                        help=f"timed evaluation chunks of {EVAL_CHUNK} tasks per config")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, warmup=args.warmup)
        return

    from importlib.metadata import version

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    train = {exp: paired("train", exp, args.steps, args.warmup) for exp in EXPERIMENTS}
    evals = {exp: paired("eval", exp, args.eval_chunks, 2) for exp in EXPERIMENTS}
    load_after = os.getloadavg()[0]

    print(f"## LEO core benchmark — {cpu_model()}, nproc {os.cpu_count()}, "
          f"MindSpore {version('mindspore')}, PyTorch {version('torch')} ({TORCH_THREADS} threads)\n")
    print(f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (other "
          "processes share the machine). Each MindSpore/PyTorch pair runs in two live "
          "subprocesses whose steps alternate, so both see the same load; the ratio is the "
          "median of the per-step ratios, and in brackets the ratio of the fastest steps "
          "(less sensitive to load spikes, which hit PyTorch's 2-thread kernels hardest).\n")
    print("### Meta-training step (12 tasks × 5 classes, 15 queries per class)\n")
    print("MindSpore = host noise (`sample_noise`) + `LEO.loss_and_grads`; PyTorch = the same "
          "step in plain float32 (torch RNG, `create_graph=True`, `.backward()`). "
          "Optimizer update excluded for both.\n")
    print("| config | MindSpore ms/step median (min) | of which noise ms "
          "| PyTorch ms/step median (min) | ratio MS/PT paired median (of minima) "
          "| MS first call (compile) s | peak RSS MS / PT MB |")
    print("|---|---|---|---|---|---|---|")
    for exp in EXPERIMENTS:
        m, t = train[exp]["mindspore"], train[exp]["torch"]
        print(f"| {exp} | {m['median_ms']:.1f} ({m['min_ms']:.1f}) | {m['noise_ms']:.1f} "
              f"| {t['median_ms']:.1f} ({t['min_ms']:.1f}) "
              f"| {train[exp]['ratio']:.2f} ({m['min_ms'] / t['min_ms']:.2f}) "
              f"| {m['first_s']:.1f} | {m['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} |")
    print(f"\n{args.steps} timed steps after {args.warmup} warm-up steps. PyTorch baseline vs "
          "the float64 reference (2 tasks, same noise), max error of loss and gradients relative "
          "to each tensor's largest entry: "
          + ", ".join(f"{exp} {train[exp]['torch']['check_err']:.1e}" for exp in EXPERIMENTS)
          + ".\n")
    print(f"### Evaluation (600 − K queries per class, chunks of {EVAL_CHUNK} tasks, "
          "episode gathering included)\n")
    print("| config | MindSpore tasks/s median (best) | PyTorch tasks/s median (best) "
          "| ratio MS/PT time paired median (of minima) "
          "| gathering ms/chunk | 10,000 tasks MS / PT | peak RSS MS / PT MB |")
    print("|---|---|---|---|---|---|---|")
    for exp in EXPERIMENTS:
        m, t = evals[exp]["mindspore"], evals[exp]["torch"]
        m_rate, t_rate = EVAL_CHUNK / m["median_ms"] * 1e3, EVAL_CHUNK / t["median_ms"] * 1e3
        m_best, t_best = EVAL_CHUNK / m["min_ms"] * 1e3, EVAL_CHUNK / t["min_ms"] * 1e3
        print(f"| {exp} | {m_rate:.1f} ({m_best:.1f}) | {t_rate:.1f} ({t_best:.1f}) "
              f"| {evals[exp]['ratio']:.2f} ({m['min_ms'] / t['min_ms']:.2f}) "
              f"| {m['gather_ms']:.0f} | {1e4 / m_rate:.0f} s / {1e4 / t_rate:.0f} s "
              f"| {m['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} |")
    print(f"\nRates from the median chunk time of {args.eval_chunks} timed chunks per config "
          "after one warm-up chunk; 10,000 tasks extrapolated from the rate.")
    print(f"\nTotal benchmark time {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
