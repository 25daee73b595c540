"""MindSpore's compile cache (leo_core.compile_cache): on only with LEO_COMPILE_CACHE, in a
folder keyed on what decides the graphs and their order, and a warm cache trains exactly
as no cache (MindSpore 2.10 names cached graphs by compile order: fresh and resumed runs
both compile the training step first): that one is in test_train.py."""

from leo_core import compile_cache
from leo_core.config import load_experiment


def test_the_key_changes_with_what_decides_the_graphs_and_their_order():
    config = load_experiment("mini_5shot").to_dict()
    base = dict(device="CPU", world=1)
    key = compile_cache.cache_key(config, **base)
    assert key == compile_cache.cache_key(config, **base) and len(key) == 16
    others = [compile_cache.cache_key(config, **{**base, "world": 2}),
              compile_cache.cache_key(config, **{**base, "device": "GPU"}),
              compile_cache.cache_key(config, **base, profile=True),
              compile_cache.cache_key({**config, "inner_unroll_length": 3}, **base)]
    assert len({key, *others}) == 5
    assert compile_cache.cache_key({**config, "num_steps_limit": 7}, **base) == key  # no graph changes


def test_nothing_is_turned_on_without_the_variable(tmp_path):
    environ = {}
    assert compile_cache.enable("k", environ) is None and environ == {}
    environ = {compile_cache.ENV: str(tmp_path)}
    assert compile_cache.enable("k", environ) == tmp_path / "k" and (tmp_path / "k").is_dir()
    assert environ["MS_COMPILER_CACHE_ENABLE"] == "1" and environ["MS_COMPILER_CACHE_PATH"] == str(tmp_path / "k")
