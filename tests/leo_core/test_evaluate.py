"""leo_core.evaluate's meta-test with its baselines, in process, on a small synthetic set.

The pinned numbers were produced by the evaluation before issue 28 (float64 nearest-class-
mean on gathered queries, one sampler pass per model); faster code must keep them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore")

from leo_core import data  # noqa: E402
from leo_core.config import load_experiment  # noqa: E402
from leo_core.distributed import Comm  # noqa: E402
from leo_core.evaluate import NearestClassMean, evaluate_with_baselines  # noqa: E402
from leo_core.model import LEO  # noqa: E402
from leo_core.synthetic import write_dataset  # noqa: E402


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, "miniImageNet", scale=0.2, images_per_class=60, seed=11, quiet=True)
    return data.load_split(root, "miniImageNet", "center", "test")


def _evaluate(split, experiment, tasks):
    cfg = load_experiment(experiment, ["total_examples_per_class=60"])
    trained = LEO(cfg, seed=7)  # stands in for trained weights: any fixed weights will do
    models = {"trained": trained, "untrained": LEO(cfg, 0), "nearest_class_mean": NearestClassMean()}

    def make_sampler():
        return data.EpisodeSampler(split, cfg.num_classes, cfg.num_tr_examples_per_class,
                                   cfg.eval_queries_per_class, data.make_rng(3, 2))

    return evaluate_with_baselines(models, make_sampler, tasks, Comm())


# accuracy, ci95, loss of each model, printed by the code before issue 28 (repr digits).
PINNED = {
    "mini_1shot": {
        "trained": (0.3259932202100754, 0.006638481394547416, 1.5883836164474487),
        "untrained": (0.34564067792892456, 0.006375462714040352, 1.5869842796325684),
        "nearest_class_mean": (0.39987796610169496, 0.00688395585613342, 0.0),
    },
    "mini_5shot": {
        "trained": (0.4385018182992935, 0.005107231816653886, 1.5869416470527649),
        "untrained": (0.47567999792098997, 0.005711514645042877, 1.5852473435401917),
        "nearest_class_mean": (0.5650327272727272, 0.00451931015246476, 0.0),
    },
}


@pytest.mark.parametrize("experiment", ["mini_1shot", "mini_5shot"])
def test_baselines_keep_their_numbers(test_split, experiment):
    results = _evaluate(test_split, experiment, 250)
    for name, (accuracy, ci95, loss) in PINNED[experiment].items():
        got = results[name]
        assert got["tasks"] == 250 and got["queries_per_class"] == 60 - int(experiment[5])
        # Accuracies are exact fractions of queries: the same predictions give the same sums.
        assert got["accuracy"] == pytest.approx(accuracy, rel=0, abs=1e-12), name
        assert got["ci95"] == pytest.approx(ci95, rel=0, abs=1e-9), name
        assert got["loss"] == pytest.approx(loss, rel=1e-5), name
