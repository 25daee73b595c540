"""leo_core.model against MindSpore autodiff and a literal float64 PyTorch LEO.

What each group proves:

- Closed-form inner-loop gradients (`support_loss_and_grad`, `latent_grad`) equal
  MindSpore's own autodiff (PyNative) of the summed support cross-entropy, w.r.t. the
  K-copy classifier weights and the latents, for K = 1 and 5, with sampling (training)
  and without (evaluation). In evaluation the model adapts one latent copy per class;
  autodiff over K identical copies gives each copy 1/K of the class gradient, which is
  what the closed form returns for the single copy.
- `LEO.loss_and_grads` (graph mode, float32, second order through both loops) equals
  the original LEO transcribed literally in float64 PyTorch with true nested autograd
  (`reference_torch.py`), consuming exactly the same noise: meta-loss, per-task query
  CE and accuracy, and the gradients of all seven parameter tensors. The reference
  asserts that it consumed every mask and weight sample, so the number and order of
  `sample_noise`'s dropout masks match the original's predict calls.
- `evaluate_batch` equals the reference in evaluation mode and is deterministic.
- All of the above both with the fused CPU operators (`leo_core.fused_ops`, the default on
  the CPU) and with MindSpore's built-in operators (LEO_FUSED_OPS=0, the other devices).
- Relation network over all (N*K)^2 pairs with no final activation, orthogonality
  over the 64x64 correlation matrix, the sampling formula, parameter names/shapes.

Float32 against float64: on these inputs every gradient tensor agrees to within
4.5e-6 (K = 1) and 3.1e-6 (K = 5) of its largest entry, the loss and query CE to
<6e-7 relative; the test allows 5e-5 and 1e-5 (up to 1.6e-5 was seen with other
seeds). Dropping the encoder penalty's stop-gradient moves the encoder gradient by
8% (K = 1) and 1.3% (K = 5), so the tolerance can tell. Two
float32 effects would otherwise dominate and are kept out of the data on purpose
(`_check_margins` asserts it): a ReLU pre-activation within ~1e-8 of zero flips in
float32 (seen: a 5e-9 relation pre-activation moved one gradient entry by 2%), and a
latent std clamped at 1e-10 makes `z - mean` round to 0 in float32 (the KL value then
differs from float64 by -0.5·eps² per clamped element, in the original TF float32 code
too). The test parameters are Glorot-random with the `u` half of the last relation
layer made non-negative, so latent stds are ~0.1-0.3, and the decoder's `u` half
scaled by 4, so that ~2% of the weight stds sit at the clamp (checked below). The loss weights are raised (encoder penalty 1, L2 1e-3, orthogonality 0.2)
so that every term, including the stop-gradient of the encoder penalty, moves the
gradients far beyond the tolerance.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
pytest.importorskip("torch")

from leo_core import fused_ops  # noqa: E402
from leo_core.config import load_experiment  # noqa: E402
from leo_core.model import (  # noqa: E402
    EMBEDDING_DIM,
    LEO,
    PARAM_NAMES,
    init_parameters,
    make_functions,
    num_support_masks,
    sample_noise,
)

from . import reference_torch as ref  # noqa: E402

D = EMBEDDING_DIM
BATCH = 2
TRAIN_QUERIES = 4
GRAD_RTOL = 5e-5  # of each gradient tensor's largest magnitude
# Make every loss term visible in the gradients (see the module docstring).
BOOSTED = ["encoder_penalty_weight=1.0", "l2_penalty_weight=1e-3", "orthogonality_penalty_weight=0.2"]
EXPERIMENTS = {1: "mini_1shot", 5: "mini_5shot"}
# Seeds whose data keep every relation pre-activation > 1e-7 from the ReLU kink
# (float32 rounding is ~1e-8 there); _check_margins asserts it.
DATA_SEED = 2


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _episodes(rng, b, n, k, q):
    """Random unit-normalised non-negative embeddings (like post-ReLU WRN features)."""
    tr_x = _unit(np.abs(rng.standard_normal((b, n, k, D))))
    val_x = _unit(np.abs(rng.standard_normal((b, n, q, D))))
    tr_y = np.broadcast_to(np.arange(n)[None, :, None], (b, n, k)).copy()
    val_y = np.broadcast_to(np.arange(n)[None, :, None], (b, n, q)).copy()
    return tr_x, tr_y, val_x, val_y


def _test_parameters(cfg, seed=4):
    params = init_parameters(cfg, seed)
    latents = cfg.num_latents
    params["relation/w_2"][:, latents:] = np.abs(params["relation/w_2"][:, latents:])
    # Spread the decoder's `u` so that some weight stds hit the 1e-10 clamp.
    params["decoder/w"][:, D:] *= 4.0
    # Learning rates off their constant initial values, so each entry matters.
    rng = np.random.default_rng(seed)
    params["inner_lr"] *= rng.uniform(0.5, 1.5, params["inner_lr"].shape).astype(np.float32)
    params["finetuning_lr"] *= rng.uniform(0.5, 1.5, params["finetuning_lr"].shape).astype(np.float32)
    return params


def _check_margins(params, tr_x, masks=None, margin=1e-7):
    """Precondition: no relation-network pre-activation within `margin` of the ReLU kink."""
    latents = params["encoder/w"].shape[1]
    for task in range(tr_x.shape[0]):
        x = tr_x[task].reshape(-1, D).astype(np.float64)
        if masks is not None:
            x = x * masks[task]
        codes = x @ params["encoder/w"]
        w0 = params["relation/w_0"]
        pre0 = (codes @ w0[:latents])[:, None] + (codes @ w0[latents:])[None, :]
        pre1 = np.maximum(pre0, 0) @ params["relation/w_1"]
        closest = min(np.abs(pre0).min(), np.abs(pre1).min())
        assert closest > margin, f"test data hits a ReLU kink ({closest:.1e}): change the seed"


def _max_rel_err(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=[(1, True), (1, False), (5, True), (5, False)],
                ids=["K1-fused", "K1-builtin", "K5-fused", "K5-builtin"])
def trained(request):
    """MindSpore and reference meta-loss and gradients on the same tasks and noise, with
    the fused CPU operators (leo_core.fused_ops) and with MindSpore's built-in ones."""
    k, fused = request.param
    cfg = load_experiment(EXPERIMENTS[k], BOOSTED)
    params = _test_parameters(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(fused_ops.ENV, "1" if fused else "0")
        model = LEO(cfg)
        assert model.fused == fused
    model.load_numpy(params)
    rng = np.random.default_rng(DATA_SEED)
    batch = _episodes(rng, BATCH, cfg.num_classes, k, TRAIN_QUERIES)
    noise = sample_noise(cfg, seed=DATA_SEED, step=3, tasks=range(BATCH), num_queries=TRAIN_QUERIES)
    _check_margins(params, batch[0], noise.tr_masks[0])
    ms_out = model.loss_and_grads(*batch, noise, task_weight=1.0 / BATCH)
    ref_out = ref.meta_loss_and_grads(cfg, params, *batch, noise)
    return SimpleNamespace(cfg=cfg, params=params, batch=batch, noise=noise, ms=ms_out, ref=ref_out, fused=fused)


@pytest.fixture(scope="module", params=[(1, True), (1, False), (5, True), (5, False)],
                ids=["K1-fused", "K1-builtin", "K5-fused", "K5-builtin"])
def evaluated(request):
    k, fused = request.param
    cfg = load_experiment(EXPERIMENTS[k])
    params = _test_parameters(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(fused_ops.ENV, "1" if fused else "0")
        model = LEO(cfg)
        assert model.fused == fused
    model.load_numpy(params)
    rng = np.random.default_rng(DATA_SEED)
    batch = _episodes(rng, BATCH, cfg.num_classes, k, cfg.eval_queries_per_class)
    _check_margins(params, batch[0])
    return model, cfg, params, batch


# ---------------------------------------------------------------- closed forms vs autodiff


def _tensor(a):
    return ms.Tensor(np.asarray(a, np.float32))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "builtin"])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_closed_form_inner_gradients_equal_autodiff(k, training, fused):
    cfg = load_experiment(EXPERIMENTS[k])
    f = make_functions(cfg, fused=fused_ops.make_ops(fused_ops.library()) if fused else None)
    n, latents, b = cfg.num_classes, cfg.num_latents, 2
    rng = np.random.default_rng(k + 2 * training)
    params = init_parameters(cfg, seed=k)
    w_dec = _tensor(params["decoder/w"])
    x = _tensor(_unit(np.abs(rng.standard_normal((b, n * k, D)))))
    y = _tensor(np.eye(n)[np.repeat(np.arange(n), k)][None].repeat(b, 0))
    eps = _tensor(rng.standard_normal((b, n, k, D))) if training else None

    # d(summed support CE)/dW for K distinct weight samples per class.
    w = _tensor(0.1 * rng.standard_normal((b, n, k, D)))
    _, closed_w = f.support_loss_and_grad(x, y, w)
    auto_w = ms.grad(lambda w_: f.support_loss_and_grad(x, y, w_)[0].sum())(w)
    closed_w = np.broadcast_to(closed_w.asnumpy(), (b, n, k, D))
    np.testing.assert_allclose(closed_w, auto_w.asnumpy(), rtol=1e-5, atol=1e-6)

    # d(summed support CE)/dz through the decoder (and the sampling in training).
    dec = f.split_decoder(w_dec)

    def loss_of_z(z_):
        return f.support_loss_and_grad(x, y, f.decode(z_, dec, eps)[0])[0].sum()

    if training:
        z = _tensor(0.3 * rng.standard_normal((b, n, k, latents)))
        z_closed = z
    else:  # evaluation adapts one copy; autodiff sees the original's K identical copies
        z_closed = _tensor(0.3 * rng.standard_normal((b, n, 1, latents)))
        z = ms.ops.broadcast_to(z_closed, (b, n, k, latents))
    weights, dw_du, u = f.decode(z_closed, dec, eps)
    _, grad_w = f.support_loss_and_grad(x, y, weights)
    # The inner loop's form: the gradient of the class-mean weights.
    np.testing.assert_allclose(
        grad_w.asnumpy()[:, :, 0], f.support_grad(x, y, f.mean_axis(weights, 2)).asnumpy(),
        rtol=1e-6, atol=1e-7)
    closed_z = f.latent_grad(grad_w, dw_du, dec).asnumpy()
    auto_z = ms.grad(loss_of_z)(z).asnumpy()
    if training:  # the clamp at 1e-10 must be active for part of the decoder's outputs
        std = np.exp(u.asnumpy()) - f.weight_offset
        assert (std < 1e-10).any() and (std > 1e-3).any()
    np.testing.assert_allclose(np.broadcast_to(closed_z, auto_z.shape), auto_z,
                               rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- against the float64 reference


def test_meta_loss_matches_reference(trained):
    loss, ce, acc, _ = trained.ms
    ref_loss, ref_ce, ref_acc, _ = trained.ref
    assert math.isfinite(loss)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-5)
    np.testing.assert_array_equal(acc, ref_acc.astype(np.float32))


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_all_outer_gradients_match_reference(trained, name):
    grads, ref_grads = trained.ms[3], trained.ref[3]
    assert grads[name].shape == ref_grads[name].shape
    assert np.abs(ref_grads[name]).max() > 0
    err = _max_rel_err(grads[name], ref_grads[name])
    assert err < GRAD_RTOL, f"{name}: max error {err:.2e} of the tensor's largest entry"


def test_every_gradient_within_float32_accuracy_of_the_reference(trained):
    """Tighter than GRAD_RTOL for each kind of operators. The fused CPU operators compute exp
    to ~1e-7 where MindSpore's CPU Exp is off by up to 4e-6, and the latent and weight stds
    are exp(u) - 1 and exp(u) - offset (cancellation): with them every gradient is within
    1e-6 of the float64 reference (measured: <= 5.9e-7), with the built-in operators within
    1e-5 (measured: up to 5.5e-6)."""
    grads, ref_grads = trained.ms[3], trained.ref[3]
    worst = max(_max_rel_err(grads[name], ref_grads[name]) for name in PARAM_NAMES)
    assert worst < (1e-6 if trained.fused else 1e-5), worst


def test_encoder_penalty_stop_gradient_matters(trained, monkeypatch):
    """The tolerance has teeth: without the encoder penalty's stop-gradient the
    reference's encoder gradient moves far beyond GRAD_RTOL."""
    monkeypatch.setattr(ref.ReferenceLEO, "stop_gradient", staticmethod(lambda t: t))
    without = ref.meta_loss_and_grads(trained.cfg, trained.params, *trained.batch, trained.noise)[3]
    err = _max_rel_err(without["encoder/w"], trained.ref[3]["encoder/w"])
    assert err > 10 * GRAD_RTOL, err


def test_decoder_clamp_is_exercised(trained):
    """Some, not most, classifier-weight stds at the latent means are clamped at 1e-10."""
    cfg, params = trained.cfg, trained.params
    latent_means = ref.encode(cfg, params, trained.batch[0][0])[..., : cfg.num_latents]
    u = latent_means @ params["decoder/w"][:, D:]
    clamped = np.mean(np.exp(u) - (1 - math.sqrt(2 / (D + cfg.num_classes))) <= 1e-10)
    assert 0.005 < clamped < 0.5, clamped


def test_evaluate_batch_matches_reference_and_is_deterministic(evaluated):
    model, cfg, params, batch = evaluated
    ce, acc = model.evaluate_batch(*batch)
    ce2, acc2 = model.evaluate_batch(*batch)
    np.testing.assert_array_equal(ce, ce2)
    np.testing.assert_array_equal(acc, acc2)
    assert ce.shape == acc.shape == (BATCH,)
    ref_ce, ref_acc = ref.evaluate(cfg, params, *batch)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-5)
    np.testing.assert_allclose(acc, ref_acc, atol=1e-7)


# ---------------------------------------------------------------- components


@pytest.mark.parametrize("k", [1, 5])
def test_relation_network_uses_all_pairs(k):
    cfg = load_experiment(EXPERIMENTS[k])
    f = make_functions(cfg)
    n, latents = cfg.num_classes, cfg.num_latents
    params = init_parameters(cfg, seed=7)
    weights = [_tensor(params[name]) for name in PARAM_NAMES[:4]]
    rng = np.random.default_rng(k)
    tr_x = _unit(np.abs(rng.standard_normal((1, n, k, D))))

    def encode(x):  # one distribution per class, tiled over its K examples as the original
        dist = f.encode(_tensor(x.reshape(1, n * k, D)), *weights).asnumpy()[0]
        assert dist.shape == (n, 1, 2 * latents)
        return np.broadcast_to(dist, (n, k, 2 * latents))

    dist = encode(tr_x)
    assert dist.shape == (n, k, 2 * latents)
    np.testing.assert_allclose(dist, ref.encode(cfg, params, tr_x[0]), rtol=1e-4, atol=1e-6)
    assert (dist < 0).any(), "no activation after the relation network's last layer"
    # K copies per class are the class average; perturbing one support example of class 0
    # moves every class's distribution (each class averages its pairs with all examples).
    np.testing.assert_allclose(dist, np.broadcast_to(dist[:, :1], dist.shape), atol=1e-7)
    moved = tr_x.copy()
    moved[0, 0, 0] = _unit(np.abs(rng.standard_normal(D)))
    changed = np.abs(encode(moved) - dist).max(axis=(1, 2))
    assert (changed > 1e-4).all(), changed


def test_orthogonality_over_64x64_and_l2():
    cfg = load_experiment("mini_1shot")
    model = LEO(cfg, seed=11)
    params = model.parameters_as_numpy()
    rng = np.random.default_rng(0)
    decoder = params["decoder/w"] + 0.05 * rng.standard_normal((1, 2 * D)).astype(np.float32)
    params["decoder/w"] = decoder  # correlated rows
    model.load_numpy(params)
    l2, orth = model.regularisation()
    w = decoder.astype(np.float64)
    norms = np.linalg.norm(w, axis=1, keepdims=True) + 1e-32
    corr = (w @ w.T) / (norms @ norms.T)
    assert corr.shape == (64, 64)
    expected = np.mean((corr - np.eye(64)) ** 2)
    assert orth == pytest.approx(expected, rel=1e-4)
    wt = w.T  # the ports' 1280x1280 version is a different number
    norms_t = np.linalg.norm(wt, axis=1, keepdims=True)
    transposed = np.mean(((wt @ wt.T) / (norms_t @ norms_t.T) - np.eye(2 * D)) ** 2)
    assert abs(transposed - expected) > 0.1 * expected
    expected_l2 = sum(0.5 * np.sum(params[n].astype(np.float64) ** 2) for n in PARAM_NAMES[:5])
    assert l2 == pytest.approx(expected_l2, rel=1e-5)


def test_sampling_formula():
    cfg = load_experiment("mini_5shot")
    f = make_functions(cfg)
    s = math.sqrt(2.0 / (D + cfg.num_classes))
    assert f.weight_offset == pytest.approx(1.0 - s)
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((3, 5, 5, D)).astype(np.float32)
    u = rng.uniform(-0.3, 0.3, mean.shape).astype(np.float32)
    eps = rng.standard_normal(mean.shape).astype(np.float32)
    for offset in (1.0, f.weight_offset):  # latents: exp(u) - 1; weights: exp(u) - (1 - s)
        sample, std = f.sample(_tensor(mean), _tensor(u), _tensor(eps), offset)
        expected_std = np.maximum(np.exp(u.astype(np.float64)) - offset, 1e-10)
        assert (expected_std == 1e-10).any()
        np.testing.assert_allclose(std.asnumpy(), expected_std, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sample.asnumpy(), mean + expected_std * eps, rtol=1e-5, atol=1e-5)
    # Decoding samples W = mean + max(exp(u) - (1 - s), 1e-10) * eps from z @ decoder.
    params = init_parameters(cfg, seed=1)
    z = 0.5 * rng.standard_normal((2, 5, 5, cfg.num_latents)).astype(np.float32)
    eps = rng.standard_normal((2, 5, 5, D)).astype(np.float32)
    dec = f.split_decoder(_tensor(params["decoder/w"]))
    w, dw_du, w_u = (t.asnumpy() for t in f.decode(_tensor(z), dec, _tensor(eps)))
    w_mean = f.decode(_tensor(z), dec, None)[0].asnumpy()
    out = z.astype(np.float64) @ params["decoder/w"]
    np.testing.assert_allclose(w_mean, out[..., :D], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w_u, out[..., D:], rtol=1e-4, atol=1e-6)
    unclamped = np.exp(out[..., D:]) - (1 - s) > 1e-10
    np.testing.assert_allclose(dw_du, eps * np.exp(out[..., D:]) * unclamped, rtol=1e-4, atol=1e-5)
    std = np.maximum(np.exp(out[..., D:]) - (1 - s), 1e-10)
    np.testing.assert_allclose(w, out[..., :D] + std * eps, rtol=1e-4, atol=1e-5)


def test_noise_layout():
    cfg = load_experiment("mini_5shot")
    noise = sample_noise(cfg, seed=0, step=0, tasks=range(2, 5), num_queries=6)
    assert noise.latent_eps.shape == (3, 5, 5, 64)
    assert noise.weight_eps.shape == (cfg.inner_unroll_length + 1, 3, 5, 5, D)
    assert num_support_masks(cfg) == 1 + (cfg.inner_unroll_length + 1) + (cfg.finetuning_unroll_length - 1)
    assert noise.tr_masks.shape == (num_support_masks(cfg), 3, 25, D)
    assert noise.val_mask.shape == (3, 30, D)
    assert set(np.unique(noise.tr_masks)) == {0.0, np.float32(1 / (1 - cfg.dropout_rate))}
    # A task's numbers do not depend on which other tasks share the call.
    alone = sample_noise(cfg, seed=0, step=0, tasks=range(3, 4), num_queries=6)
    np.testing.assert_array_equal(alone.weight_eps[:, 0], noise.weight_eps[:, 1])


def test_dropout_masks_keep_each_element_with_the_configured_probability():
    """16-bit draws compared with round(keep * 2**16): the realised keep rate is within
    2**-17 of 1 - dropout_rate; over ~4.6M elements the sampling error is ~2e-4 (1 sigma)."""
    cfg = load_experiment("mini_5shot")
    noise = sample_noise(cfg, seed=1, step=7, tasks=range(12), num_queries=15)
    kept = np.concatenate([(noise.tr_masks > 0).ravel(), (noise.val_mask > 0).ravel()])
    keep = 1 - cfg.dropout_rate
    sigma = math.sqrt(keep * (1 - keep) / kept.size)
    assert abs(kept.mean() - keep) < 5 * sigma + 2**-17, (kept.mean(), keep)
    # Masks of one task and step are independent draws: two uses differ.
    assert (noise.tr_masks[0, 0] != noise.tr_masks[1, 0]).mean() > 0.3
    none = sample_noise(cfg.with_overrides({"dropout_rate": 0.0}), seed=1, step=7, tasks=range(2),
                        num_queries=15)
    assert (none.tr_masks == 1).all() and (none.val_mask == 1).all()


def test_parameter_names_shapes_and_loading():
    cfg = load_experiment("mini_1shot")
    model = LEO(cfg, seed=2)
    params = model.parameters_as_numpy()
    assert {name: v.shape for name, v in params.items()} == {
        "encoder/w": (640, 64),
        "relation/w_0": (128, 128),
        "relation/w_1": (128, 128),
        "relation/w_2": (128, 128),
        "decoder/w": (64, 1280),
        "inner_lr": (64,),
        "finetuning_lr": (640,),
    }
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_array_equal(params["inner_lr"], 1.0)
    np.testing.assert_allclose(params["finetuning_lr"], 0.001)
    limit = math.sqrt(6.0 / (640 + 64))  # Glorot uniform
    assert np.abs(params["encoder/w"]).max() <= limit
    params["encoder/w"] = params["encoder/w"] + 1.0
    model.load_numpy(params)
    np.testing.assert_array_equal(model.parameters_as_numpy()["encoder/w"], params["encoder/w"])
    params["encoder/w"][0, 0] = 99.0  # the model keeps its own copy
    assert model.parameters_as_numpy()["encoder/w"][0, 0] != 99.0
    bad = dict(params, **{"decoder/w": np.zeros((1280, 64), np.float32)})
    with pytest.raises(ValueError, match="decoder/w"):
        model.load_numpy(bad)
    with pytest.raises(ValueError, match="inner_lr"):
        model.load_numpy(dict(params, inner_lr=np.ones((1, 64), np.float32)))
    missing = {k: v for k, v in params.items() if k != "finetuning_lr"}
    with pytest.raises(ValueError, match="finetuning_lr"):
        model.load_numpy(missing)


@pytest.mark.parametrize("k", [1, 5])
def test_evaluate_episodes_equals_evaluate_batch(k):
    """The meta-test path (adapt in MindSpore, query logits per class block without
    gathering the queries) gives evaluate_batch's numbers on the same episodes."""
    from leo_core.data import EpisodeSampler, Split, l2_normalize, make_rng

    cfg = load_experiment(EXPERIMENTS[k], ["total_examples_per_class=40"])
    model = LEO(cfg)
    model.load_numpy(_test_parameters(cfg))
    rng = np.random.default_rng(k)
    pool = np.abs(rng.standard_normal((7 * 45, D))).astype(np.float32)
    l2_normalize(pool, out=pool)
    split = Split("t", tuple(f"c{i}" for i in range(7)), tuple(pool[i * 45:(i + 1) * 45] for i in range(7)))
    sampler = EpisodeSampler(split, cfg.num_classes, k, cfg.eval_queries_per_class, make_rng(3))
    rows = sampler.sample_indices(6)
    batch = sampler.gather(rows)
    ce, acc = model.evaluate_batch(batch.tr_x, batch.tr_y, batch.val_x, batch.val_y)
    ce2, acc2 = model.evaluate_episodes(sampler, rows)
    np.testing.assert_allclose(ce2, ce, rtol=1e-5)
    np.testing.assert_allclose(acc2, acc, atol=1e-6)
    assert len(set(acc.tolist())) > 1  # tasks differ, so the check has teeth
