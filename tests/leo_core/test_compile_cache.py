"""MindSpore's compile cache (leo_core.compile_cache): on only with LEO_COMPILE_CACHE, in a
folder keyed on what decides the graphs and their order, and a warm cache trains exactly
as no cache (MindSpore 2.10 names cached graphs by compile order: a resumed run compiles
the training step first, a fresh one the evaluation)."""

import json

import numpy as np
import pytest

from leo_core import compile_cache
from leo_core.config import load_experiment
from tests.leo_core.test_train import tiny_root, trained, train, weights  # noqa: F401 - fixtures


def test_the_key_changes_with_what_decides_the_graphs_and_their_order():
    config = load_experiment("mini_5shot").to_dict()
    base = dict(device="CPU", world=1, validate_first=True)
    key = compile_cache.cache_key(config, **base)
    assert key == compile_cache.cache_key(config, **base) and len(key) == 16
    others = [compile_cache.cache_key(config, **{**base, "validate_first": False}),
              compile_cache.cache_key(config, **{**base, "world": 2}),
              compile_cache.cache_key(config, **{**base, "device": "GPU"}),
              compile_cache.cache_key(config, **base, profile=True),
              compile_cache.cache_key({**config, "inner_unroll_length": 3}, **base)]
    assert len({key, *others}) == 6


def test_nothing_is_turned_on_without_the_variable(tmp_path):
    environ = {}
    assert compile_cache.enable("k", environ) is None and environ == {}
    environ = {compile_cache.ENV: str(tmp_path)}
    assert compile_cache.enable("k", environ) == tmp_path / "k" and (tmp_path / "k").is_dir()
    assert environ["MS_COMPILER_CACHE_ENABLE"] == "1" and environ["MS_COMPILER_CACHE_PATH"] == str(tmp_path / "k")


def _graph_dirs(cache):
    return sorted(p.parent.parent.name for p in cache.glob("*/rank_0/graph_cache"))


@pytest.mark.integration
def test_a_warm_cache_fresh_and_resumed_trains_exactly_as_no_cache(tiny_root, trained, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(compile_cache.ENV, str(cache))
    split = tmp_path / "split"
    first = train(tiny_root, split, 3)  # fresh: evaluation graph, then the training step's
    assert f"compile cache: {cache}" in first.stdout
    fresh_keys = _graph_dirs(cache)
    assert len(fresh_keys) == 1
    train(tiny_root, split, 6, "--resume")  # resumed: another order, another folder
    assert len(_graph_dirs(cache)) == 2
    again = tmp_path / "again"  # the same two runs, now with the warm cache of both
    train(tiny_root, again, 3)
    train(tiny_root, again, 6, "--resume")
    assert len(_graph_dirs(cache)) == 2 and fresh_keys[0] in _graph_dirs(cache)
    straight = trained[0]  # six steps, no cache
    for run in (split, again):
        a, b = weights(straight / "checkpoints/step-6"), weights(run / "checkpoints/step-6")
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=f"{run.name} {name}")
    validations = [[(r["step"], r["accuracy"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                    if r["kind"] == "validation"] for run in (straight, split, again)]
    assert validations[0] == validations[1] == validations[2] and len(validations[0]) == 3
