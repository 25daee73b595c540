"""Meta-validation and meta-test accuracy of a LEO checkpoint, with a 95% interval.

    python -m leo_core.evaluate --experiment mini_5shot --data-root DIR \
        --checkpoint OUT/checkpoints/best.json [--tasks 10000] [--json result.json]

--checkpoint also takes a .ckpt or .npz weights file, in this project's or the ModelZoo
port's parameter names (see leo_core.ckpt_format).

The interval is 1.96 * std(per-task accuracy) / sqrt(tasks): the original prints
none. Tasks are split across data-parallel ranks and the sums combined.

Every evaluation shows its baselines on the SAME tasks, scored in the same pass over
each chunk (`evaluate_models`; together they cost about one more model pass): the
untrained model (the initial weights of the run, rebuilt from the seed in the
checkpoint: what training started from) and nearest-class-mean (NCM: prototype = mean of
the K supports, nearest in Euclidean distance). `--no-baselines` skips them. The JSON
keeps the trained model's numbers at the top level and adds
`"baselines": {"untrained": {...}, "nearest_class_mean": {...}}` and `"best_step"`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script (msrun takes a script path)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from leo_core import cli_common, hostmem
from leo_core.distributed import Comm, shard

# Tasks per rank evaluated at once: 16 five-way tasks with 599 queries per class
# are ~120 MB of float32 queries.
CHUNK_PER_RANK = 16
# Models with `episode_weights` never gather the queries: larger chunks amortise the
# per-call cost of the adaptation graph and feed one matrix product per class.
EPISODE_CHUNK_PER_RANK = 100


def evaluate_tasks(model, sampler, num_tasks: int, comm: Comm, progress=None) -> dict:
    """`evaluate_models` of one model."""
    return evaluate_models({"model": model}, sampler, num_tasks, comm, progress)["model"]


def evaluate_models(models: dict, sampler, num_tasks: int, comm: Comm, progress=None) -> dict[str, dict]:
    """Evaluate each named model on the same `num_tasks` tasks drawn from `sampler`, split
    across ranks.

    Every rank draws the indices of every chunk (so their streams stay equal) and
    evaluates only its share; sums of accuracy, accuracy² and loss are combined. A chunk's
    episodes are read once for all models: when every model has `episode_weights`, one
    matrix product per class gives all their query logits; otherwise the episodes are
    gathered once and passed to each model's `evaluate_batch`.
    """
    totals = np.zeros((len(models), 4), np.float64)  # tasks, sum acc, sum acc², sum loss
    queries = 0
    episodes = all(hasattr(model, "episode_weights") for model in models.values())
    chunk = (EPISODE_CHUNK_PER_RANK if episodes else CHUNK_PER_RANK) * comm.world
    # With `episode_weights`, a chunk is scored (its query logits and results, NumPy) in a
    # second thread while the next chunk is drawn and adapted (MindSpore): on 2 cores the
    # step-0 validation took 1.0-1.3 s instead of 1.15-1.4 s (no gain on a loaded machine).
    # Chunks are summed in order: same numbers.
    pending: deque[tuple[int, Future]] = deque()  # (tasks done after the chunk, its results)
    with ThreadPoolExecutor(1, thread_name_prefix="leo-eval") as scorer:
        for done in range(0, num_tasks, chunk):
            size = min(chunk, num_tasks - done)
            mine = shard(size, comm.rank, comm.world)
            rows = sampler.sample_indices(size)[mine.start:mine.stop]
            queries = sampler.num_val
            if not len(mine):
                results = _ready([])
            elif episodes:
                results = scorer.submit(_scored, models, sampler, rows, *_adapted(models, sampler, rows))
            else:
                results = _ready(_shared_gather(models, sampler, rows))
            pending.append((done + size, results))
            while len(pending) > 1 or (pending and done + size >= num_tasks):
                finished, results = pending.popleft()
                for i, (loss, acc) in enumerate(results.result()):
                    acc = acc.astype(np.float64)
                    totals[i] += (len(acc), acc.sum(), np.square(acc).sum(), loss.astype(np.float64).sum())
                if progress:
                    progress(finished, num_tasks)
    if comm.world > 1:
        totals = comm.allreduce_sum(totals.astype(np.float32).ravel()).astype(np.float64).reshape(totals.shape)
    return {name: _summary(row, queries) for name, row in zip(models, totals, strict=True)}


def _ready(value) -> Future:
    future = Future()
    future.set_result(value)
    return future


def _adapted(models: dict, sampler, rows) -> tuple:
    """A chunk's support set and every model's adapted classifier weights."""
    support = sampler.support(rows)
    return support, [model.episode_weights(*support) for model in models.values()]


def _scored(models: dict, sampler, rows, support, weights) -> list:
    """(loss, accuracy) of each model from one query-logits pass over all their weights."""
    logits = sampler.query_logits(rows, np.concatenate(weights, axis=1))  # [B, N, Q, models·N]
    n = sampler.num_classes
    return [model.episode_results(logits[..., i * n:(i + 1) * n], support, sampler, rows)
            for i, model in enumerate(models.values())]


def _shared_gather(models: dict, sampler, rows) -> list:
    batch = sampler.gather(rows)
    return [model.evaluate_batch(batch.tr_x, batch.tr_y, batch.val_x, batch.val_y)
            for model in models.values()]


def _summary(totals: np.ndarray, queries: int) -> dict:
    count = totals[0]
    mean = totals[1] / count
    var = max(totals[2] / count - mean * mean, 0.0)
    return {
        "accuracy": float(mean),
        "ci95": float(1.96 * math.sqrt(var) / math.sqrt(count)),
        "loss": float(totals[3] / count),
        "tasks": int(round(count)),
        "queries_per_class": int(queries),
    }


class NearestClassMean:
    """The nearest-class-mean baseline behind LEO's evaluation interfaces (loss 0)."""

    def evaluate_batch(self, tr_x, tr_y, val_x, val_y) -> tuple[np.ndarray, np.ndarray]:
        from leo_core.data import EpisodeBatch, nearest_class_mean_accuracy

        acc = nearest_class_mean_accuracy(EpisodeBatch(tr_x, tr_y, val_x, val_y))
        return np.zeros_like(acc), acc

    def episode_weights(self, tr_x, tr_y) -> np.ndarray:
        """The class means as float32 "classifier weights": their query products."""
        from leo_core.data import class_means

        return class_means(tr_x).astype(np.float32)

    def episode_results(self, logits, support, sampler, rows) -> tuple[np.ndarray, np.ndarray]:
        from leo_core.data import class_means, nearest_class_mean_predictions

        b, n, q, _ = logits.shape
        predicted = nearest_class_mean_predictions(
            logits.reshape(b, n * q, n), class_means(support[0]), sampler.max_norm,
            lambda tasks, positions: sampler.query_vectors(rows, tasks, positions))
        acc = (predicted == np.repeat(np.arange(n), q)[None]).mean(axis=1)
        return np.zeros_like(acc), acc


BASELINES = ("untrained", "nearest_class_mean")


def evaluate_with_baselines(models: dict, make_sampler, num_tasks: int, comm: Comm,
                            progress=None) -> dict[str, dict]:
    """`evaluate_models` on the tasks of a freshly seeded sampler (`make_sampler()`)."""
    return evaluate_models(models, make_sampler(), num_tasks, comm, progress)


def _percent(result: dict) -> str:
    return f"{100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}%"


def _check_arguments(args: argparse.Namespace) -> None:
    if args.queries is not None and args.queries < 1:
        raise ValueError(f"--queries must be at least 1, got {args.queries}")
    if args.json is not None:
        folder = args.json.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ValueError(f"--json {args.json}: {folder} is not a writable directory")
        if args.json.exists() and not args.json.is_file():
            raise ValueError(f"--json {args.json} exists and is not a regular file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leo_core.evaluate", description=__doc__.split("\n\n")[0])
    cli_common.add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="a training output dir, its best.json/latest.json, a step-<n> dir, "
                             "or a .ckpt/.npz weights file (this project's or the ModelZoo port's names)")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="pointer to follow when --checkpoint is a directory (default best)")
    parser.add_argument("--tasks", type=int, default=10_000, help="number of tasks (default 10000)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--queries", type=int, default=None,
                        help="queries per class (default total_examples_per_class - K)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the untrained-model and nearest-class-mean baselines")
    args = parser.parse_args(argv)
    hostmem.keep_freed_memory()
    with cli_common.exit_on_user_error():
        cfg = cli_common.resolve_config(args)
        if args.tasks <= 0:
            raise ValueError("--tasks must be positive")
        _check_arguments(args)  # before the evaluation, not after it
        from leo_core import data
        from leo_core.ckpt_format import load_weights
        from leo_core.distributed import setup

        weights = load_weights(args.checkpoint, cfg.num_latents, args.which)
        split = data.load_split(args.data_root, cfg.dataset_name, cfg.embedding_crop, args.split)
        queries = cfg.eval_queries_per_class if args.queries is None else args.queries

        def make_sampler():
            return data.EpisodeSampler(split, cfg.num_classes, cfg.num_tr_examples_per_class,
                                       queries, data.make_rng(args.seed, 2))

        make_sampler()  # too few images for the queries: a one-line error before any work
        comm = setup(args.device)
    from leo_core.model import LEO

    model = LEO(cfg)
    model.load_numpy(weights.params)
    models = {"trained": model}
    if args.baselines:
        # The run's initial weights: LEO(cfg, seed) is what Trainer started from (seed 0 for a
        # weights file with no state.json beside it).
        models["untrained"] = LEO(cfg, int(weights.state.get("seed", 0)))
        models["nearest_class_mean"] = NearestClassMean()
    started = time.monotonic()
    printer = cli_common.Progress("evaluating", enabled=comm.is_main)
    results = evaluate_with_baselines(models, make_sampler, args.tasks, comm, printer)
    result = results.pop("trained")
    best_step = (weights.state.get("best") or {}).get("step")
    result.update(experiment=cfg.name, split=args.split, step=weights.step, best_step=best_step,
                  checkpoint=str(weights.path),
                  seconds=round(time.monotonic() - started, 1))
    if results:
        results["nearest_class_mean"].pop("loss", None)  # NCM has no cross-entropy
        result["baselines"] = results
    if comm.is_main:
        print(f"{args.split} accuracy {_percent(result)} "
              f"(95% interval, 1.96·std/√n) over {result['tasks']} tasks, "
              f"{result['queries_per_class']} queries per class, checkpoint "
              + (f"step {weights.step}" if weights.step is not None else str(weights.path)))
        for name, label in (("untrained", "untrained model (initial weights)"),
                            ("nearest_class_mean", "nearest-class-mean baseline")):
            if name in results:
                print(f"  {label}, same tasks: {_percent(results[name])}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
