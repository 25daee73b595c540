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


def _float64_predictions(queries, means):
    """The nearest-class-mean labels as computed before issue 28: all in float64."""
    distances = -2.0 * queries.astype(np.float64) @ means.transpose(0, 2, 1) + (means**2).sum(-1)[:, None, :]
    return distances.argmin(axis=-1)


def test_nearest_class_mean_near_ties_get_the_float64_label():
    """Queries almost halfway between two class means: float32 products cannot tell the
    classes apart, and the float64 re-check of close calls gives the float64 labels."""
    rng = np.random.default_rng(0)
    b, n, k, q, d = 4, 5, 1, 400, data.EMBEDDING_DIM
    tr_x = data.l2_normalize(rng.standard_normal((b, n, k, d)).astype(np.float32))
    halfway = (tr_x[:, 0, 0] + tr_x[:, 1, 0]) / 2  # [B, D]
    step = (tr_x[:, 0, 0] - tr_x[:, 1, 0])[:, None, :]
    nudges = rng.uniform(-1e-6, 1e-6, (b, n * q, 1))
    queries = (halfway[:, None, :] + nudges * step).astype(np.float32)  # [B, N*Q, D]
    means = data.class_means(tr_x)
    products = queries @ means.astype(np.float32).transpose(0, 2, 1)
    expected = _float64_predictions(queries, means)
    assert set(np.unique(expected)) == {0, 1}
    assert (products.argmax(-1) != expected).any()  # float32 alone gets some wrong
    got = data.nearest_class_mean_predictions(products, means, 1.0, lambda t, p: queries[t, p])
    np.testing.assert_array_equal(got, expected)


def test_nearest_class_mean_accuracy_equals_float64(test_split):
    sampler = data.EpisodeSampler(test_split, 5, 1, 59, data.make_rng(1))
    batch = sampler.sample(40)
    b, n, q, d = batch.val_x.shape
    expected = _float64_predictions(batch.val_x.reshape(b, n * q, d), data.class_means(batch.tr_x))
    np.testing.assert_array_equal(data.nearest_class_mean_accuracy(batch),
                                  (expected == batch.val_y.reshape(b, n * q)).mean(axis=1))


def test_query_logits_of_several_classifiers_in_one_pass(test_split):
    sampler = data.EpisodeSampler(test_split, 5, 5, 55, data.make_rng(2))
    rows = sampler.sample_indices(12)
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((12, 5, data.EMBEDDING_DIM)).astype(np.float32) for _ in range(2))
    both = sampler.query_logits(rows, np.concatenate([a, b], axis=1))
    assert both.shape == (12, 5, 55, 10)
    np.testing.assert_allclose(both[..., :5], sampler.query_logits(rows, a), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(both[..., 5:], sampler.query_logits(rows, b), rtol=1e-6, atol=1e-6)


def test_baselines_read_each_chunk_once(test_split):
    """The three evaluations share one query pass per chunk: no gathered queries, one
    query_logits call per chunk, one adaptation per LEO model and chunk."""
    cfg = load_experiment("mini_1shot", ["total_examples_per_class=60"])
    calls = {"gather": 0, "query_logits": 0}

    class Counting(data.EpisodeSampler):
        def gather(self, rows):
            calls["gather"] += 1
            return super().gather(rows)

        def query_logits(self, rows, weights):
            calls["query_logits"] += 1
            return super().query_logits(rows, weights)

    sampler = Counting(test_split, 5, 1, 59, data.make_rng(4))
    models = {"trained": LEO(cfg, 7), "untrained": LEO(cfg, 0), "nearest_class_mean": NearestClassMean()}
    results = evaluate_with_baselines(models, lambda: sampler, 250, Comm())
    assert calls == {"gather": 0, "query_logits": 3}  # chunks of 100, 100 and 50 tasks
    assert all(r["tasks"] == 250 for r in results.values())


def test_episode_results_follow_argmax_on_ties_and_nan():
    """LEO.episode_results (class-major comparisons) gives NumPy argmax's labels, first
    index on ties, and falls back to argmax itself when a logit is NaN."""
    from leo_core.model import _nan_safe_results

    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 5, 40, 5)).astype(np.float32)
    logits[..., 3] = np.where(rng.random(logits.shape[:3]) < 0.5, logits[..., 1], logits[..., 3])
    logits[..., 0] = np.where(rng.random(logits.shape[:3]) < 0.3, logits[..., 4], logits[..., 0])
    for case in (logits, np.where(rng.random(logits.shape) < 0.01, np.nan, logits).astype(np.float32)):
        ce, acc = LEO.episode_results(case, None, None, None)
        ce_ref, acc_ref = _nan_safe_results(case)
        np.testing.assert_array_equal(acc, acc_ref)
        np.testing.assert_allclose(ce, ce_ref, rtol=1e-6)


def test_chunks_are_scored_beside_the_next_adaptation_and_summed_in_order(test_split):
    """The query pass (NumPy) of a chunk runs in a second thread, so it can overlap the next
    chunk's adaptation (MindSpore); progress still arrives chunk by chunk, in order."""
    import threading

    cfg = load_experiment("mini_1shot", ["total_examples_per_class=60"])
    threads = set()

    class Recording(data.EpisodeSampler):
        def query_logits(self, rows, weights):
            threads.add(threading.current_thread().name)
            return super().query_logits(rows, weights)

    sampler = Recording(test_split, 5, 1, 59, data.make_rng(3, 2))
    reported = []
    models = {"trained": LEO(cfg, seed=7), "untrained": LEO(cfg, 0), "nearest_class_mean": NearestClassMean()}
    results = evaluate_with_baselines(models, lambda: sampler, 250, Comm(), lambda *done: reported.append(done))
    assert threads and threading.main_thread().name not in threads
    assert reported == [(100, 250), (200, 250), (250, 250)]
    for name, (accuracy, _, _) in PINNED["mini_1shot"].items():
        assert results[name]["accuracy"] == pytest.approx(accuracy, rel=0, abs=1e-12), name
