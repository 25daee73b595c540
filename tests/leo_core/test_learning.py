"""A short meta-training run on small synthetic data really learns.

Untrained, trained and nearest-class-mean (NCM) accuracy are measured on the same
episodes, in evaluation mode, on fresh episodes of the meta-training classes and on the
meta-test classes; the numbers are printed (pytest -s) and reported in the README.
The assertions are on the meta-training classes: 150 steps (of the original's 100,000)
do not yet transfer to new synthetic classes (see the README's results section).
"""

import numpy as np
import pytest

from leo_core import data
from leo_core.config import load_experiment
from leo_core.distributed import Comm
from leo_core.synthetic import write_dataset

pytestmark = pytest.mark.integration

STEPS = 150
TEST_TASKS = 200


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    write_dataset(root, "miniImageNet", scale=0.5, images_per_class=60, seed=11, quiet=True)
    return root


def test_training_beats_chance_and_the_untrained_model(small_root, tmp_path):
    from leo_core.train import Trainer

    cfg = load_experiment("mini_5shot", ["total_examples_per_class=60", "checkpoint_steps=100000"])
    trainer = Trainer(cfg, small_root, tmp_path, seed=0, comm=Comm(), log_every=1000)
    episodes = {}
    for name in ("train", "test"):
        split = data.load_split(small_root, cfg.dataset_name, cfg.embedding_crop, name)
        episodes[name] = data.EpisodeSampler(split, 5, 5, 55, data.make_rng(123, 0)).sample(TEST_TASKS)

    def accuracy(batch):
        accs = []
        for start in range(0, TEST_TASKS, 25):
            part = slice(start, start + 25)
            _, acc = trainer.model.evaluate_batch(batch.tr_x[part], batch.tr_y[part],
                                                  batch.val_x[part], batch.val_y[part])
            accs.append(acc)
        return float(np.concatenate(accs).mean())

    untrained = {name: accuracy(batch) for name, batch in episodes.items()}
    for _ in range(STEPS):
        trainer.train_step()
    trained = {name: accuracy(batch) for name, batch in episodes.items()}
    ncm = {name: float(data.nearest_class_mean_accuracy(b).mean()) for name, b in episodes.items()}
    for name in episodes:
        print(f"\n5-way 5-shot, {TEST_TASKS} {name}-class tasks, 55 queries/class, {STEPS} steps: "
              f"untrained {untrained[name]:.3f}  trained {trained[name]:.3f}  "
              f"nearest-class-mean {ncm[name]:.3f}")
    assert trained["train"] > 0.2 + 0.2  # well above chance (5-way)
    assert trained["train"] > untrained["train"] + 0.05
