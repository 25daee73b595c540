"""Meta-validation and meta-test accuracy of a LEO checkpoint, with a 95% interval.

    python -m leo_core.evaluate --experiment mini_5shot --data-root DIR \
        --checkpoint OUT/checkpoints/best.json [--tasks 10000] [--json result.json]

--checkpoint also takes a .ckpt or .npz weights file, in this project's or the ModelZoo
port's parameter names (see leo_core.ckpt_format).

The interval is 1.96 * std(per-task accuracy) / sqrt(tasks): the original prints
none. Tasks are split across data-parallel ranks and the sums combined.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (msrun takes a script path)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from leo_core import cli_common
from leo_core.distributed import Comm, shard

# Tasks per rank evaluated at once: 16 five-way tasks with 599 queries per class
# are ~120 MB of float32 queries.
CHUNK_PER_RANK = 16
# Models with `evaluate_episodes` never gather the queries: larger chunks amortise the
# per-call cost of the adaptation graph and feed one matrix product per class.
EPISODE_CHUNK_PER_RANK = 100


def evaluate_tasks(model, sampler, num_tasks: int, comm: Comm, progress=None) -> dict:
    """Evaluate `num_tasks` tasks drawn from `sampler`, split across ranks.

    Every rank draws the indices of every chunk (so their streams stay equal) and
    evaluates only its share; sums of accuracy, accuracy² and loss are combined.
    """
    totals = np.zeros(4, np.float64)  # tasks, sum acc, sum acc², sum loss
    queries = 0
    episodes = hasattr(model, "evaluate_episodes")
    chunk = (EPISODE_CHUNK_PER_RANK if episodes else CHUNK_PER_RANK) * comm.world
    done = 0
    while done < num_tasks:
        size = min(chunk, num_tasks - done)
        mine = shard(size, comm.rank, comm.world)
        rows = sampler.sample_indices(size)[mine.start:mine.stop]
        queries = sampler.num_val
        if len(mine) and episodes:  # queries never gathered (LEO.evaluate_episodes)
            loss, acc = model.evaluate_episodes(sampler, rows)
        elif len(mine):
            batch = sampler.gather(rows)
            loss, acc = model.evaluate_batch(batch.tr_x, batch.tr_y, batch.val_x, batch.val_y)
        if len(mine):
            acc = acc.astype(np.float64)
            totals += (len(mine), acc.sum(), np.square(acc).sum(), loss.astype(np.float64).sum())
        done += size
        if progress:
            progress(done, num_tasks)
    totals = comm.allreduce_sum(totals.astype(np.float32)).astype(np.float64) if comm.world > 1 else totals
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
    args = parser.parse_args(argv)
    with cli_common.exit_on_user_error():
        cfg = cli_common.resolve_config(args)
        if args.tasks <= 0:
            raise ValueError("--tasks must be positive")
        from leo_core import data
        from leo_core.ckpt_format import load_weights
        from leo_core.distributed import setup

        weights = load_weights(args.checkpoint, cfg.num_latents, args.which)
        split = data.load_split(args.data_root, cfg.dataset_name, cfg.embedding_crop, args.split)
        queries = args.queries or cfg.eval_queries_per_class
        sampler = data.EpisodeSampler(split, cfg.num_classes, cfg.num_tr_examples_per_class, queries,
                                      data.make_rng(args.seed, 2))
        comm = setup(args.device)
    from leo_core.model import LEO

    model = LEO(cfg)
    model.load_numpy(weights.params)
    started = time.monotonic()
    printer = cli_common.Progress("evaluating", enabled=comm.is_main)
    result = evaluate_tasks(model, sampler, args.tasks, comm, printer)
    result.update(experiment=cfg.name, split=args.split, step=weights.step, checkpoint=str(weights.path),
                  seconds=round(time.monotonic() - started, 1))
    if comm.is_main:
        print(f"{args.split} accuracy {100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}% "
              f"(95% interval, 1.96·std/√n) over {result['tasks']} tasks, "
              f"{result['queries_per_class']} queries per class, checkpoint "
              + (f"step {weights.step}" if weights.step is not None else str(weights.path)))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
