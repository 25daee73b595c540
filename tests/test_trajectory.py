"""tests/trajectory.py: the data-parallel trajectory bounds accept a few stray elements and
reject differences that a wrong shard, reduction or learning rate would make."""

import numpy as np
import pytest

from tests.trajectory import OUTER_LR, WEIGHT_ATOL, assert_same_weights


def _weights(seed=0):
    return {"w": np.random.default_rng(seed).standard_normal((100, 64)).astype(np.float32) * 0.05}


def test_rounding_and_a_few_stray_elements_pass():
    a, b = _weights(), _weights()
    b["w"] = b["w"] + 1e-7
    b["w"].flat[:5] += 0.5 * OUTER_LR  # 5 of 6,400 stepped apart once
    assert assert_same_weights(a, b, ["w"]) == pytest.approx(1e-7, rel=0.1)


@pytest.mark.parametrize("change", ["most elements", "one element too far"])
def test_real_divergence_fails(change):
    a, b = _weights(), _weights()
    if change == "most elements":
        b["w"] = b["w"] + 3 * WEIGHT_ATOL
    else:
        b["w"].flat[7] += 2 * OUTER_LR
    with pytest.raises(AssertionError):
        assert_same_weights(a, b, ["w"])
