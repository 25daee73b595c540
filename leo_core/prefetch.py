"""Prepare the next meta-training step's host inputs while the current step runs.

A step's inputs are its episodes (drawn from the training sampler's stream) and its
noise (`model.sample_noise`, keyed by (seed, step, task)). Both are pure functions of
the state before the step, so drawing them one step ahead in a background thread
changes no number: the prefetched step is exactly what the main thread would have
drawn. NumPy releases the GIL in its bulk random draws and copies, and MindSpore in
graph execution, so the preparation overlaps the previous step's graph.

The sampler's generator is only used by the background thread once prefetching has
started; `Prepared.rng_state_after` is the generator state right after the step's own
episodes were drawn, i.e. what a checkpoint written after that step must record (the
live generator is already one step further).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class Prepared:
    step: int
    batch: Any  # data.EpisodeBatch
    noise: Any  # model.Noise
    inputs: Any  # model.TrainInputs: the graph's host inputs, dropout applied
    rng_state_after: dict
    seconds: float  # preparation time (in the background thread when prefetched)


def prepare_step(sampler, cfg, seed: int, step: int, tasks: range, batch_size: int) -> Prepared:
    """Episodes of the global meta-batch (this rank's `tasks` gathered), their noise and
    the training graph's inputs built from both."""
    from leo_core.model import sample_noise, train_inputs

    start = time.perf_counter()
    batch = sampler.sample(batch_size, tasks=slice(tasks.start, tasks.stop))
    state = copy.deepcopy(sampler.rng.bit_generator.state)
    noise = sample_noise(cfg, seed, step, tasks, cfg.num_val_examples_per_class)
    inputs = train_inputs(cfg, batch.tr_x, batch.tr_y, batch.val_x, batch.val_y, noise)
    return Prepared(step, batch, noise, inputs, state, time.perf_counter() - start)


class StepPrefetcher:
    """`get(step)` returns `prepare(step)` and starts `prepare(step + 1)` in the background.

    Steps must be requested in increasing order without gaps (one training run); the
    wait on the critical path is accumulated in `wait_seconds`.
    """

    def __init__(self, prepare: Callable[[int], Prepared], enabled: bool = True):
        self._prepare = prepare
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="leo-prefetch") if enabled else None
        self._pending: Future | None = None
        self._pending_step: int | None = None
        self.wait_seconds = 0.0
        self.prepare_seconds = 0.0
        self.steps = 0

    def get(self, step: int) -> Prepared:
        start = time.perf_counter()
        if self._pending is not None and self._pending_step == step:
            prepared = self._pending.result()
        else:
            if self._pending is not None:  # out of order: never reuse a wrong draw
                raise RuntimeError(f"prefetched step {self._pending_step}, asked for {step}")
            prepared = self._prepare(step)
        self._pending = None
        if self._executor is not None:
            self._pending = self._executor.submit(self._prepare, step + 1)
            self._pending_step = step + 1
        self.wait_seconds += time.perf_counter() - start
        self.prepare_seconds += prepared.seconds
        self.steps += 1
        return prepared

    def close(self) -> None:
        """Drop the pending preparation (its draws are discarded with it)."""
        if self._executor is not None:
            if self._pending is not None:
                self._pending.cancel()
                try:
                    self._pending.result()
                except Exception:  # noqa: BLE001 - a discarded draw's failure does not matter
                    pass
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending = None
