"""The outer update: clipping order, TF1 Adam, the NaN guard."""

import numpy as np

from leo_core.optim import Adam, clip_gradients, has_nan, nan_guard_gradients


def test_clip_by_value_then_each_tensor_by_norm():
    grads = {"a": np.array([0.5, -0.5, 0.05], np.float32), "b": np.array([0.03, 0.04], np.float32)}
    clipped = clip_gradients(grads, 0.1, 0.1)
    # a: value-clipped to [0.1, -0.1, 0.05], norm 0.15 -> scaled to norm 0.1.
    expected_a = np.array([0.1, -0.1, 0.05]) * (0.1 / np.sqrt(0.0225))
    np.testing.assert_allclose(clipped["a"], expected_a, rtol=1e-6)
    # b has norm 0.05 < 0.1: untouched (per tensor, not global norm).
    np.testing.assert_allclose(clipped["b"], grads["b"])


def test_adam_matches_the_tf1_update():
    params = {"w": np.array([1.0, -2.0], np.float32)}
    adam = Adam(0.01)
    grads = [np.array([0.1, -0.3], np.float32), np.array([-0.2, 0.05], np.float32)]
    m = v = np.zeros(2)
    w = params["w"].astype(np.float64)
    for t, g in enumerate(grads, start=1):
        adam.update(params, {"w": g})
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(params["w"], w, rtol=1e-5)
    restored = Adam(0.01)
    restored.load_state(adam.state())
    assert restored.t == 2 and np.array_equal(restored.m["w"], adam.m["w"])


def test_nan_guard_pulls_weights_to_zero_and_freezes_learning_rates():
    params = {"encoder/w": np.full((2, 2), 3.0, np.float32), "inner_lr": np.ones(2, np.float32)}
    assert has_nan(float("nan"), {}) and has_nan(0.0, {"x": np.array([np.nan])})
    assert not has_nan(1.0, {"x": np.array([np.inf])})  # the original checks NaN only
    guarded = nan_guard_gradients(params, ("encoder/w",))
    np.testing.assert_allclose(guarded["encoder/w"], 3e-4)
    assert not guarded["inner_lr"].any()
