"""The experiment registry: the original's tuned values, overrides checked by type."""

import pytest

from leo_core.config import (
    ConfigError,
    experiment_names,
    load_config_file,
    load_experiment,
    parse_override,
)

# From the original code's README / config (LEO.md, "Hyper-parameters tuned by the original authors").
TUNED = {
    "mini_1shot": dict(outer_lr=2.739071e-4, l2_penalty_weight=3.623413e-10,
                       orthogonality_penalty_weight=0.188103, dropout_rate=0.307651,
                       kl_weight=0.756143, encoder_penalty_weight=5.756821e-6),
    "mini_5shot": dict(outer_lr=4.102361e-4, l2_penalty_weight=8.540338e-9,
                       orthogonality_penalty_weight=1.523998e-3, dropout_rate=0.300299,
                       kl_weight=0.466387, encoder_penalty_weight=2.661608e-7),
    "tiered_1shot": dict(outer_lr=8.659053e-4, l2_penalty_weight=4.148858e-10,
                         orthogonality_penalty_weight=5.451078e-3, dropout_rate=0.475126,
                         kl_weight=2.034189e-3, encoder_penalty_weight=8.302962e-5),
    "tiered_5shot": dict(outer_lr=6.110314e-4, l2_penalty_weight=1.690399e-10,
                         orthogonality_penalty_weight=2.481216e-2, dropout_rate=0.415158,
                         kl_weight=1.622811, encoder_penalty_weight=2.672450e-5),
}


GLYPHS = {"glyphs_1shot": "mini_1shot", "glyphs_5shot": "mini_5shot"}


def test_four_experiments_with_the_original_tuned_values():
    assert experiment_names() == sorted([*TUNED, *GLYPHS])
    for name, values in TUNED.items():
        cfg = load_experiment(name)
        for key, value in values.items():
            assert getattr(cfg, key) == pytest.approx(value, rel=1e-9), (name, key)
        assert cfg.num_tr_examples_per_class == (1 if "1shot" in name else 5)
        assert cfg.dataset_name == ("miniImageNet" if name.startswith("mini") else "tieredImageNet")
        assert (cfg.num_latents, cfg.inner_unroll_length, cfg.finetuning_unroll_length) == (64, 5, 5)
        assert (cfg.inner_lr_init, cfg.finetuning_lr_init) == (1.0, 0.001)
        assert (cfg.metatrain_batch_size, cfg.metavalid_batch_size, cfg.metatest_batch_size) == (12, 200, 200)
        assert (cfg.gradient_threshold, cfg.gradient_norm_threshold) == (0.1, 0.1)
        assert cfg.num_steps_limit == 100_000 and cfg.eval_queries_per_class == 600 - cfg.num_tr_examples_per_class


def test_glyph_experiments_reuse_mini_values_on_the_glyph_benchmark():
    for name, mini in GLYPHS.items():
        cfg, base = load_experiment(name), load_experiment(mini)
        assert cfg.dataset_name == "glyphs" and cfg.embedding_crop == "center"
        assert cfg.total_examples_per_class == 50 and cfg.checkpoint_steps == 500
        different = {k for k, v in cfg.to_dict().items() if v != base.to_dict()[k]}
        assert different == {"name", "dataset_name", "total_examples_per_class", "checkpoint_steps"}


def test_overrides_are_typed():
    cfg = load_experiment("mini_1shot", ["outer_lr=1e-3", "train_on_val=yes", "num_steps_limit=1_000"])
    assert cfg.outer_lr == 1e-3 and cfg.train_on_val is True and cfg.num_steps_limit == 1000
    assert load_experiment("mini_1shot", {"metatrain_batch_size": 24}).metatrain_batch_size == 24


@pytest.mark.parametrize(
    "override, message",
    [
        ("outer_rl=1", "unknown config key 'outer_rl' (did you mean outer_lr?)"),
        ("outer_lr=fast", "outer_lr expects a number, got 'fast'"),
        ("num_classes=2.5", "num_classes expects an integer"),
        ("train_on_val=maybe", "train_on_val expects true or false"),
        ("dropout_rate=1.0", "dropout_rate must be in [0, 1)"),
        ("metatrain_batch_size=0", "metatrain_batch_size must be positive"),
        ("embedding_crop=left", "embedding_crop must be one of center, multiview"),
        ("outer_lr", "is not of the form key=value"),
        ("name=x", "unknown config key 'name'"),
        ("total_examples_per_class=1", "total_examples_per_class must exceed"),
    ],
)
def test_bad_overrides_have_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment("mini_1shot", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_experiment_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean mini_5shot"):
        load_experiment("mini_5_shot")


def test_tiered_has_only_center_crop():
    with pytest.raises(ConfigError, match="only for embedding_crop=center"):
        load_experiment("tiered_1shot", ["embedding_crop=multiview"])


def test_config_file_lays_keys_over_its_experiment(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: tiered_5shot\nouter_lr: 0.002\n")
    cfg = load_config_file(path, overrides=["kl_weight=0.5"])
    assert (cfg.name, cfg.outer_lr, cfg.kl_weight) == ("tiered_5shot", 0.002, 0.5)
    path.write_text("outer_lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(path)
    path.write_text("outer_lr: 0.1\n")
    with pytest.raises(ConfigError, match="names no experiment"):
        load_config_file(path)


def test_parse_override_rejects_bad_values_early():
    assert parse_override(" kl_weight = 0.25 ") == ("kl_weight", "0.25")
    with pytest.raises(ConfigError):
        parse_override("kl_weight=")
