"""Meta-train LEO, one process or data-parallel under msrun.

    python -m leo_core.train --experiment mini_5shot --data-root DIR --out DIR [--steps N]
    msrun --worker_num 8 --local_worker_num 8 ... leo_core/train.py --experiment ... (same flags)

`metatrain_batch_size` is the GLOBAL meta-batch: under data parallelism every rank
draws the same episodes from the shared seed and trains on its own contiguous
slice of the tasks; per-rank losses are pre-scaled so the all-reduced SUM of the
gradients is the gradient of the original's mean objective. W ranks × B/W tasks
therefore make the same update as one process × B tasks. Only rank 0 writes.

A rank that fails after joining the cluster (e.g. its all-reduce times out because a
peer died) prints the traceback and exits with status 1 at once, skipping MindSpore's
interpreter shutdown, which would wait for the scheduler; see `leo_core.distributed`
for the timeouts that bound how long survivors wait.

Debugging/testing hooks: with `LEO_DUMP_PARAMS_DIR=DIR` in the environment, EVERY rank
writes its final parameters to `DIR/params-rank<r>.npz` (one array per parameter name,
plus `step`) at the end of `Trainer.run`, so data-parallel ranks can be compared; with
`LEO_DUMP_STEPS_DIR=DIR`, every rank writes `DIR/rank-<r>/step-<s>.npz` for every step:
the weights the step started from (`w/<name>`), the all-reduced gradients before the NaN
guard and clipping (`g/<name>`) and the all-reduced loss, so a test can recompute each
data-parallel step in one process at the very same weights.

Start-up: when the first training step of this process is done, rank 0 prints and logs
(`{"kind": "startup", "seconds", "since", "step"}` in metrics.jsonl) the time since
`LEO_START_TIME` (Unix seconds; the pod's bootstrap sets it at its own start), else since
this module was imported. With `LEO_COMPILE_CACHE` (the bootstrap sets it) MindSpore's
compile cache is on, keyed on the code, config and launch (leo_core.compile_cache), so a
restart loads its graphs instead of compiling them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script (msrun takes a script path)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from leo_core import (
    checkpoint,
    cli_common,
    compile_cache,
    distributed,
    fused_ops,
    hostmem,
    profiling,
    runtime_threads,
)
from leo_core.config import ConfigError, ExperimentConfig
from leo_core.distributed import Comm, shard

IMPORTED = time.time()  # the start-up clock's origin without LEO_START_TIME


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m leo_core.train", description=__doc__.split("\n\n")[0])
    cli_common.add_config_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output dir: checkpoints/, metrics.jsonl")
    parser.add_argument("--steps", type=int, help="total meta-training steps (overrides num_steps_limit)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/latest.json when it exists")
    parser.add_argument("--init", metavar="FILE",
                        help="initial weights: a .ckpt or .npz file (this project's or the ModelZoo "
                             "port's names, e.g. leo_ms_init.ckpt) or a checkpoint directory/pointer "
                             "(its best); ignored when --resume finds a checkpoint")
    parser.add_argument("--log-every", type=int, default=100, help="steps between progress lines (100)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run MindSpore's profiler over a few steps after the first two "
                             "(which compile); each rank writes DIR/rank-<r>/ with op_summary.txt")
    parser.add_argument("--profile-steps", type=int, default=profiling.DEFAULT_STEPS,
                        help=f"steps to profile ({profiling.DEFAULT_STEPS}, at most {profiling.MAX_STEPS})")
    args = parser.parse_args(argv)
    with cli_common.exit_on_user_error():  # before any data is read or process group joined
        profiling.check_steps(args.profile_steps)
        if args.log_every < 1:  # 0 divided by zero after the data load; < 0 was ignored
            raise ValueError(f"--log-every must be at least 1, got {args.log_every}")
    return args


def load_splits(cfg: ExperimentConfig, data_root: Path) -> tuple:
    """The training and validation splits `Trainer` samples from (leo_core.data.Split)."""
    from leo_core import data

    return (data.load_split(data_root, cfg.dataset_name, cfg.embedding_crop, "train", train_on_val=cfg.train_on_val),
            data.load_split(data_root, cfg.dataset_name, cfg.embedding_crop, "val"))


class Trainer:
    def __init__(self, cfg: ExperimentConfig, data_root: Path, out: Path, seed: int, comm: Comm,
                 log_every: int = 100, splits: tuple | None = None):
        """`splits`: `load_splits(cfg, data_root)` when already loaded."""
        from leo_core import data
        from leo_core.model import LEO
        from leo_core.optim import Adam

        self.cfg, self.out, self.seed, self.comm, self.log_every = cfg, out, seed, comm, log_every
        k = cfg.num_tr_examples_per_class
        train_split, self.val_split = splits or load_splits(cfg, data_root)
        # The same stream on every rank: all draw the global meta-batch.
        self.sampler = data.EpisodeSampler(train_split, cfg.num_classes, k,
                                           cfg.num_val_examples_per_class, data.make_rng(seed, 0))
        self.val_sampler = data.EpisodeSampler(self.val_split, cfg.num_classes, k,
                                               cfg.eval_queries_per_class, data.make_rng(seed, 1))
        self.model = LEO(cfg, seed)
        self.adam = Adam(cfg.outer_lr)
        self.step = 0
        self.best = {"accuracy": -1.0, "step": None}
        self.my_tasks = shard(cfg.metatrain_batch_size, comm.rank, comm.world)
        self._prefetcher = None  # started by the first train_step (after any restore)
        self.profiler = None  # a leo_core.profiling.StepProfiler with --profile
        self._train_rng_state = None  # sampler state after the last step's episodes
        if comm.world > cfg.metatrain_batch_size:
            raise ConfigError(
                f"{comm.world} ranks exceed metatrain_batch_size={cfg.metatrain_batch_size} "
                "(it is the global meta-batch): raise it with --set metatrain_batch_size=N")

    # -- state
    def restore(self) -> bool:
        """Resume from the latest checkpoint; a damaged one falls back to `best` (said so),
        else CheckpointError naming the file. False when there is no checkpoint."""
        if not (checkpoint.checkpoints_dir(self.out) / "latest.json").exists():
            return False
        try:
            ckpt = self._restore_from("latest")
        except checkpoint.CheckpointError as damaged:
            try:
                ckpt = self._restore_from("best")
            except checkpoint.CheckpointError:
                raise damaged from None
            if self.comm.is_main:
                print(f"warning: the latest checkpoint is damaged ({damaged}); resuming from the "
                      f"best one, {ckpt.path}", flush=True)
        if self.comm.is_main:
            self._truncate_metrics(self.step)
            print(f"resumed from {ckpt.path} at step {self.step} "
                  f"(written by {ckpt.state.get('world_size', '?')} rank(s), now {self.comm.world})", flush=True)
        return True

    def _restore_from(self, which: str) -> checkpoint.Checkpoint:
        ckpt = checkpoint.load(self.out, which)
        try:
            self.model.load_numpy(ckpt.params)
            self.adam.load_state(ckpt.optimizer)
            rng = self.sampler.rng.bit_generator
            before = rng.state
            try:
                rng.state = ckpt.state["train_rng"]
            except Exception:
                rng.state = before
                raise
            best = ckpt.state.get("best", self.best)
            if not isinstance(best, dict) or "accuracy" not in best:
                raise ValueError(f"best is {best!r}")
        except (ValueError, KeyError, TypeError) as err:
            raise checkpoint.CheckpointError(f"checkpoint {ckpt.path} is damaged: "
                                             f"{type(err).__name__}: {err}") from None
        self.step, self.best = ckpt.step, best
        return ckpt

    def initialise_from(self, path: str) -> None:
        """Start from the weights in `path` (see leo_core.ckpt_format.load_weights)."""
        from leo_core.ckpt_format import load_weights

        weights = load_weights(path, self.cfg.num_latents, which="best")
        self.model.load_numpy(weights.params)
        if self.comm.is_main:
            print(f"initial weights from {weights.path} ({weights.naming} names)", flush=True)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics logged after the checkpoint we resume from (they will be redone)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(f"{line}\n" for line in kept))

    def save(self) -> None:
        if not self.comm.is_main:
            return
        # The live generator may already hold the prefetched next step's draws.
        train_rng = self._train_rng_state or self.sampler.rng.bit_generator.state
        state = {"train_rng": train_rng, "seed": self.seed,
                 "experiment": self.cfg.name, "world_size": self.comm.world, "best": self.best,
                 "config": self.cfg.to_dict()}
        checkpoint.save(self.out, self.step, self.model.params, self.adam.state(), state)
        if self.best["step"] == self.step:
            checkpoint.mark_best(self.out, self.step, self.best["accuracy"])
        checkpoint.prune(self.out)

    def log(self, record: dict) -> None:
        if self.comm.is_main:
            with open(self.out / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def _log_startup(self) -> None:
        """The time from the start (the bootstrap's, else this process's) to the end of the
        first training step: what a restart costs before training goes on."""
        try:
            origin, since = float(os.environ["LEO_START_TIME"]), "bootstrap"
        except (KeyError, ValueError):
            origin, since = IMPORTED, "process"
        seconds = round(time.time() - origin, 2)
        self.log({"step": self.step, "kind": "startup", "seconds": seconds, "since": since})
        if self.comm.is_main:
            print(f"start-up: first training step done {seconds:.1f} s after the {since} started",
                  flush=True)

    def _confine_runtime_threads(self) -> None:
        """One training process on the CPU: MindSpore's runtime threads (alive once the
        first step ran) off one core, which the prefetch thread then has to itself
        (leo_core.runtime_threads)."""
        import mindspore as ms

        if self.comm.world == 1 and ms.get_context("device_target") == "CPU":
            runtime_threads.confine()

    @property
    def validates_first(self) -> bool:
        """Whether run() starts with the step-0 validation (a fresh run, not a resumed one)."""
        return self.step == 0 and self.best["step"] is None

    # -- one meta-training step
    def train_step(self) -> tuple[float, float]:
        from leo_core.model import WEIGHT_NAMES
        from leo_core.optim import clip_gradients, has_nan, nan_guard_gradients
        from leo_core.prefetch import StepPrefetcher, prepare_step

        cfg, comm = self.cfg, self.comm
        batch_size = cfg.metatrain_batch_size
        if self._prefetcher is None:  # episodes and noise of step s + 1 drawn during step s
            self._prefetcher = StepPrefetcher(lambda step: prepare_step(
                self.sampler, cfg, self.seed, step, self.my_tasks, batch_size),
                enabled=os.environ.get("LEO_PREFETCH", "1") != "0")
        prepared = self._prefetcher.get(self.step)
        self._train_rng_state = prepared.rng_state_after
        batch, noise = prepared.batch, prepared.noise
        loss, ce, acc, grads = self.model.loss_and_grads(
            batch.tr_x, batch.tr_y, batch.val_x, batch.val_y, noise,
            task_weight=1.0 / batch_size, reg_weight=1.0 / comm.world, inputs=prepared.inputs)
        loss, acc_sum, grads = self._all_reduced(loss, acc, grads)
        self._dump_step(loss, grads)
        if has_nan(loss, grads):
            grads = nan_guard_gradients(self.model.params, WEIGHT_NAMES)
            loss = 0.0  # as the original, keep NaNs out of the summaries
        grads = clip_gradients(grads, cfg.gradient_threshold, cfg.gradient_norm_threshold)
        self.adam.update(self.model.params, grads)
        self.step += 1
        return loss, acc_sum / batch_size

    def _all_reduced(self, loss: float, acc: np.ndarray, grads: dict) -> tuple[float, float, dict]:
        """The step's loss, accuracy sum and gradients summed over the ranks: one all-reduce
        carries every gradient and the step's statistics."""
        from leo_core.model import PARAM_NAMES

        flat = np.concatenate([grads[name].ravel() for name in PARAM_NAMES]
                              + [np.array([loss, acc.sum()], np.float32)])
        flat = self.comm.allreduce_sum(flat)
        offset = 0
        for name in PARAM_NAMES:
            size = grads[name].size
            grads[name] = flat[offset:offset + size].reshape(grads[name].shape)
            offset += size
        return float(flat[-2]), float(flat[-1]), grads

    def compile_training_step(self) -> None:
        """Compile the training step's graphs now (its loss and gradients, then with several
        ranks its all-reduce) on zeros of its shapes; the result is dropped and the weights
        do not change. A fresh run calls it before the step-0 validation, so fresh and
        resumed runs compile the same graphs in the same order: MindSpore's compile cache
        names graphs by their order (leo_core.compile_cache), and a fresh run's cache then
        serves its first restart too. Every rank calls it (the all-reduce is collective)."""
        from leo_core.model import empty_noise

        cfg, tasks = self.cfg, len(self.my_tasks)
        n, k, q = cfg.num_classes, cfg.num_tr_examples_per_class, cfg.num_val_examples_per_class
        noise = empty_noise(cfg, tasks, q, self.model.dim)
        for array in noise.as_tuple():
            array.fill(0.0)
        x = np.zeros((tasks, n, k + q, self.model.dim), np.float32)
        y = np.zeros((tasks, n, k + q), np.int64)
        loss, _, acc, grads = self.model.loss_and_grads(
            x[:, :, :k], y[:, :, :k], x[:, :, k:], y[:, :, k:], noise,
            task_weight=1.0 / cfg.metatrain_batch_size, reg_weight=1.0 / self.comm.world)
        self._all_reduced(loss, acc, grads)

    def validate(self) -> dict:
        from leo_core.data import make_rng
        from leo_core.evaluate import evaluate_tasks

        # Fresh tasks at every validation, reproducibly (a function of seed and step).
        self.val_sampler.rng = make_rng(self.seed, 1_000_000 + self.step)
        tasks = self.cfg.num_validation_batches * self.cfg.metavalid_batch_size
        return evaluate_tasks(self.model, self.val_sampler, tasks, self.comm)

    def run(self, total_steps: int) -> dict:
        cfg, main = self.cfg, self.comm.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            print(f"training {cfg.name}: steps {self.step}→{total_steps}, global meta-batch "
                  f"{cfg.metatrain_batch_size} over {self.comm.world} rank(s), "
                  f"validation every {cfg.checkpoint_steps} steps", flush=True)
        if self.validates_first:
            # Even with no step to train: the compile order must not depend on the step count,
            # which the compile cache's key leaves out.
            self.compile_training_step()
            # As the original: validate before any update, so the untrained model is
            # `best` until a trained step beats it (its checkpoint is step-0).
            self._validate_and_log()
            self.save()
        window_start, window_steps, losses, accs = time.monotonic(), 0, [], []
        first = True
        while self.step < total_steps:
            loss, acc = self.train_step()
            if first:
                self._log_startup()
                _collect_garbage_again()
                self._confine_runtime_threads()
                first = False
            if self.profiler is not None:
                self.profiler.step_done()
            losses.append(loss)
            accs.append(acc)
            window_steps += 1
            if self.step % self.log_every == 0 or self.step == total_steps:
                rate = window_steps / max(time.monotonic() - window_start, 1e-9)
                record = {"step": self.step, "kind": "train", "loss": float(np.mean(losses)),
                          "accuracy": float(np.mean(accs)), "steps_per_s": round(rate, 3)}
                self.log(record)
                if main:
                    eta = (total_steps - self.step) / max(rate, 1e-9)
                    print(f"step {self.step}/{total_steps}  loss {record['loss']:.4f}  "
                          f"train acc {record['accuracy']:.3f}  {rate:.2f} steps/s  "
                          f"eta {_duration(eta)}", flush=True)
                window_start, window_steps, losses, accs = time.monotonic(), 0, [], []
            if self.step % cfg.checkpoint_steps == 0 or self.step == total_steps:
                # The last step is validated too, so a run that ends between two
                # validations still lets its final weights compete for `best`.
                self._validate_and_log()
                self.save()
                window_start = time.monotonic()  # keep validation out of the step rate
        if self.profiler is not None:
            self.profiler.stop()  # runs shorter than the profiled window
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self.dump_parameters()
        return self.best

    def _dump_step(self, loss: float, grads: dict[str, np.ndarray]) -> None:
        """Opt-in (env LEO_DUMP_STEPS_DIR): this step's starting weights and reduced gradients."""
        target = os.environ.get("LEO_DUMP_STEPS_DIR")
        if not target:
            return
        path = Path(target) / f"rank-{self.comm.rank}" / f"step-{self.step}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, loss=np.float32(loss), **{f"w/{k}": v for k, v in self.model.params.items()},
                 **{f"g/{k}": v for k, v in grads.items()})

    def dump_parameters(self) -> Path | None:
        """Opt-in (env LEO_DUMP_PARAMS_DIR): this rank's parameters to params-rank<r>.npz."""
        target = os.environ.get("LEO_DUMP_PARAMS_DIR")
        if not target:
            return None
        path = Path(target) / f"params-rank{self.comm.rank}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, step=np.int64(self.step), **self.model.params)
        return path

    def _validate_and_log(self) -> None:
        result = self.validate()
        improved = result["accuracy"] > self.best["accuracy"]
        if improved:
            self.best = {"accuracy": result["accuracy"], "step": self.step}
        self.log({"step": self.step, "kind": "validation", "accuracy": result["accuracy"],
                  "ci95": result["ci95"], "loss": result["loss"], "tasks": result["tasks"],
                  "best": improved, "best_step": self.best["step"]})
        if self.comm.is_main:
            print(f"validation at step {self.step}: accuracy {100 * result['accuracy']:.2f}% "
                  f"± {100 * result['ci95']:.2f}% over {result['tasks']} tasks"
                  + ("  (new best)" if improved else
                     f"  (best stays step {self.best['step']}: {100 * self.best['accuracy']:.2f}%)"),
                  flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _exit_failed_rank(comm: Comm) -> None:
    """End a failed data-parallel rank now, with status 1 (see the module docstring)."""
    print(f"rank {comm.rank}: training failed", file=sys.stderr)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _collect_garbage_again() -> None:
    """End `main`'s start-up without garbage collections: what is alive now (modules,
    data, graphs) stays and is frozen out of later collections' scans."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _enable_compile_cache(trainer: Trainer, args) -> None:
    """With LEO_COMPILE_CACHE (the bootstrap sets it): MindSpore's compile cache, keyed (see
    leo_core.compile_cache); before the first graph is compiled."""
    if not os.environ.get(compile_cache.ENV, "").strip():
        return
    key = compile_cache.cache_key(trainer.cfg.to_dict(), device=args.device or distributed.default_device(),
                                  world=trainer.comm.world, profile=bool(args.profile))
    path = compile_cache.enable(key)
    if trainer.comm.is_main:
        print(f"compile cache: {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if distributed.idle_scheduler():
        return 0  # msrun's scheduler of a one-worker launch: the worker trains
    hostmem.keep_freed_memory()
    if (args.device or distributed.default_device()) == "CPU":
        fused_ops.start_compile()  # in the background, while MindSpore imports
    # No garbage collections until the first step (`_collect_garbage_again`): they found
    # nothing to free in MindSpore's import and graph compiles, and took ~0.1 s of the import.
    gc.disable()
    try:
        return _train(args)
    finally:
        gc.enable()


def _train(args) -> int:
    with cli_common.exit_on_user_error():
        cfg = cli_common.resolve_config(args)
        if args.steps is not None:
            cfg = cfg.with_overrides({"num_steps_limit": args.steps})
        from leo_core.distributed import setup

        # The data is read while MindSpore is imported (NumPy and file reads, mostly
        # outside the GIL): ~0.1 s off a staged miniImageNet start, more on larger data.
        with ThreadPoolExecutor(1, thread_name_prefix="leo-load") as loader:
            splits = loader.submit(load_splits, cfg, Path(args.data_root))
            comm = setup(args.device)
            trainer = Trainer(cfg, Path(args.data_root), args.out, args.seed, comm, args.log_every,
                              splits=splits.result())
        resumed = args.resume and trainer.restore()
        if args.init and not resumed:
            trainer.initialise_from(args.init)
        if args.profile:
            from leo_core.profiling import StepProfiler

            trainer.profiler = StepProfiler(args.profile, comm.rank, steps=args.profile_steps)
        _enable_compile_cache(trainer, args)
    try:
        best = trainer.run(cfg.num_steps_limit)
    except Exception:
        if comm.world == 1:
            raise
        _exit_failed_rank(comm)
    if comm.is_main:
        untrained = " (the untrained model: no trained step beat it)" if best["step"] == 0 else ""
        print(f"done: best validation accuracy {100 * best['accuracy']:.2f}% at step {best['step']}"
              f"{untrained}; checkpoints in {args.out / 'checkpoints'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
