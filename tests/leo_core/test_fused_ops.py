"""leo_core.fused_ops: each fused CPU operator equals the chain of built-in MindSpore
operators it replaces, forward and backward.

Backward is checked by MindSpore's autodiff: for random cotangents c, the gradient of
sum(c * op(inputs)) with the fused operator (its hand-written gradient operator) equals the
gradient with the built-in chain (MindSpore's own derivative). The whole model is checked
against the float64 reference with and without the fused operators in test_model.py.
"""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import ops  # noqa: E402

from leo_core import fused_ops  # noqa: E402

B, N, K, D, L = 2, 5, 3, 640, 64
OFFSET = 1.0 - math.sqrt(2.0 / (D + N))


@pytest.fixture(scope="module")
def fused():
    path = fused_ops.library()
    assert path is not None, "the fused operators must compile here (g++ is installed)"
    return fused_ops.make_ops(path)


def _t(a):
    return ms.Tensor(np.asarray(a, np.float32))


def _rng(seed):
    return np.random.default_rng(seed)


def _check(fused_fn, builtin_fn, inputs, grad_positions, rtol=1e-5, atol=1e-6, seed=0):
    """Forward values and the gradients (with respect to `grad_positions`) of a random
    projection of the outputs agree between the fused operator and the built-in chain."""
    args = [_t(a) for a in inputs]
    got, want = fused_fn(*args), builtin_fn(*args)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=rtol, atol=atol)
    rng = _rng(seed)
    cotangents = [_t(rng.standard_normal(w.shape)) for w in want]

    def projected(fn):
        def f(*xs):
            outs = fn(*xs)
            outs = outs if isinstance(outs, tuple) else (outs,)
            return sum((o * c).sum() for o, c in zip(outs, cotangents, strict=True))
        return f

    grads_got = ms.grad(projected(fused_fn), grad_position=grad_positions)(*args)
    grads_want = ms.grad(projected(builtin_fn), grad_position=grad_positions)(*args)
    grads_got = grads_got if isinstance(grads_got, tuple) else (grads_got,)
    grads_want = grads_want if isinstance(grads_want, tuple) else (grads_want,)
    for g, w in zip(grads_got, grads_want, strict=True):
        scale = float(np.abs(w.asnumpy()).max())
        assert scale > 0
        np.testing.assert_allclose(g.asnumpy(), w.asnumpy(), rtol=rtol, atol=1e-5 * scale)


# MindSpore's CPU Exp is within ~4e-6 relative of exp (the library's within 1e-7, see
# test_exp_accuracy_over_the_float_range); exp(u) - offset cancels, so sampled weights
# differ by up to ~1e-5 absolute.
EXP_ATOL = 3e-5


def _weight_sample(u, eps):
    exp_u = ops.exp(u)
    std = ops.maximum(exp_u - OFFSET, 1e-10)
    return std * eps, ops.where(std > 1e-10, eps * exp_u, 0.0)


def _u(rng, shape):
    # Spread so that part of exp(u) - offset is clamped at 1e-10 and part is not.
    return rng.uniform(-1.0, 0.5, shape)


@pytest.mark.parametrize("m", [N * 1, N * 5, 7])
def test_class_grad(fused, m):
    rng = _rng(m)
    x = np.abs(rng.standard_normal((B, m, D))) / 20
    y = np.eye(N)[rng.integers(0, N, (B, m))]
    w = rng.standard_normal((B, N, D)) * 0.3
    bmm_nt, bmm_tn = ops.BatchMatMul(transpose_b=True), ops.BatchMatMul(transpose_a=True)

    def builtin(x, y, w):
        return bmm_tn(ops.softmax(bmm_nt(x, w), axis=-1) - y, x)

    _check(fused.class_grad, builtin, (x, y, w), grad_positions=(2,))


@pytest.mark.parametrize("shape", [(B, N, 1, L), (B, N, D)])
def test_descend(fused, shape):
    rng = _rng(1)
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    rate = rng.uniform(-1, 1, shape[-1:])
    _check(fused.descend, lambda x, r, g: x + r * g, (x, rate, g), grad_positions=(0, 1, 2))


@pytest.mark.parametrize("m", [N * 1, N * 5])
def test_pair_relu(fused, m):
    rng = _rng(6)
    left, right = rng.standard_normal((B, m, 2 * L)), rng.standard_normal((B, m, 2 * L))

    def builtin(left, right):
        return ops.relu(ops.expand_dims(left, 2) + ops.expand_dims(right, 1))

    _check(fused.pair_relu, builtin, (left, right), grad_positions=(0, 1))


def test_descend_copies(fused):
    rng = _rng(7)
    z, h = rng.standard_normal((B, N, K, L)), rng.standard_normal((B, N, K, L))
    gz, rate = rng.standard_normal((B, N, 1, L)), rng.uniform(-1, 1, (L,))
    _check(fused.descend_copies, lambda z, r, gz, h: z + r * (gz + h), (z, rate, gz, h),
           grad_positions=(0, 1, 2, 3))


@pytest.mark.parametrize("k", [1, K])
def test_latent_sample(fused, k):
    rng = _rng(8 + k)
    mean, eps = rng.standard_normal((B, N, 1, L)), rng.standard_normal((B, N, k, L))
    u = rng.uniform(-0.3, 0.5, (B, N, 1, L))  # part of exp(u) - 1 at the clamp

    def builtin(mean, u, eps):
        std = ops.maximum(ops.exp(u) - 1.0, 1e-10)
        z = mean + std * eps
        kl = (0.5 * (ops.square(z) - ops.square(eps))).mean(axis=(1, 2, 3)) - ops.log(std).mean(axis=(1, 2, 3))
        return z, kl

    assert (np.exp(u) - 1 < 1e-10).any()
    _check(fused.latent_sample, builtin, (mean, u, eps), grad_positions=(0, 1), rtol=1e-4, atol=EXP_ATOL)


def test_query_ce(fused):
    rng = _rng(9)
    m = N * 15
    x = np.abs(rng.standard_normal((B, m, D))) / 20
    labels = rng.integers(0, N, (B, m))
    w = rng.standard_normal((B, N, D)) * 0.3
    bmm_nt = ops.BatchMatMul(transpose_b=True)
    args = [_t(x), _t(np.eye(N)[labels]), _t(w)]

    def builtin(x, y, w):
        logits = bmm_nt(x, w)
        ce = -(y * ops.log_softmax(logits, axis=-1)).sum(axis=-1).mean(axis=1)
        correct = (ops.argmax(logits, dim=-1) == ms.Tensor(labels, ms.int32)).astype(ms.float32)
        return ce, correct.mean(axis=1)

    acc = fused.query_ce(*args)[1].asnumpy()
    assert 0 < acc.min() and acc.max() < 1  # some right, some wrong
    # Gradient with respect to w of the cross-entropy (accuracy has none).
    _check(lambda *a: fused.query_ce(*a)[0], lambda *a: builtin(*a)[0], (x, np.eye(N)[labels], w),
           grad_positions=(2,))
    np.testing.assert_array_equal(acc, builtin(*args)[1].asnumpy())


def test_orthogonality(fused):
    rng = _rng(10)
    w = rng.standard_normal((L, 2 * D)) * 0.05
    w[3] = w[5] * 2 + w[3] * 0.01  # two nearly parallel rows: a large penalty term

    def builtin(w):
        norms = ops.sqrt((w * w).sum(axis=1, keepdims=True)) + 1e-32
        rows = w / norms
        return ops.square(ops.matmul(rows, rows.T) - ops.eye(L, L, ms.float32)).mean()

    penalty, _ = fused.orthogonality(_t(w))
    assert penalty.shape == ()
    _check(lambda w: fused.orthogonality(w)[0], builtin, (w,), grad_positions=(0,))


def test_encoder_penalty(fused):
    rng = _rng(11)
    z0, z = rng.standard_normal((B, N, K, L)), rng.standard_normal((B, N, K, L))

    def builtin(z0, z):
        return ops.square(z0 - ops.stop_gradient(z)).mean(axis=(1, 2, 3))

    _check(fused.encoder_penalty, builtin, (z0, z), grad_positions=(0,))
    d_z = ms.grad(lambda a, b: fused.encoder_penalty(a, b).sum(), grad_position=1)(_t(z0), _t(z))
    assert not d_z.asnumpy().any()  # the stop-gradient


def test_total(fused):
    rng = _rng(12)
    ce, kl, penalty = rng.uniform(0, 2, (3, B))
    orth, task_weight, reg_weight = np.float32(0.7), np.float32(0.25), np.float32(0.5)
    weights = np.array([0.01, 1e-3, 0.2])

    def builtin(ce, kl, penalty, orth, task_weight, reg_weight, weights):
        task_loss = ce + weights[0] * kl + weights[1] * penalty
        return task_loss.sum() * task_weight + weights[2] * orth * reg_weight

    _check(fused.total, builtin, (ce, kl, penalty, orth, task_weight, reg_weight, weights),
           grad_positions=(0, 1, 2, 3))


_BMM_NT, _BMM_TN = ops.BatchMatMul(transpose_b=True), ops.BatchMatMul(transpose_a=True)


def _class_grad(x, y, w):
    return _BMM_TN(ops.softmax(_BMM_NT(x, w), axis=-1) - y, x)


def _support(rng, m):
    return np.abs(rng.standard_normal((B, m, D))) / 20, np.eye(N)[rng.integers(0, N, (B, m))]


def test_decode_one(fused):
    """SampleWeights, ClassGrad and ChainOne merged: all four outputs and the gradient with
    respect to the decoder's output."""
    rng = _rng(13)
    o = np.concatenate([rng.standard_normal((B, N, 1, D)) * 0.3, _u(rng, (B, N, 1, D))], axis=-1)
    eps = rng.standard_normal((B, N, 1, D))
    x, y = _support(rng, N)

    def builtin(o, eps, offset, x, y):  # noqa: ARG001
        mean, u = ops.split(o, D, axis=-1)
        spread, dw_du = _weight_sample(u, eps)
        w = (mean + spread).squeeze(2)
        grad = _class_grad(x, y, w)
        grad_w = ops.expand_dims(grad, 2)
        return w, dw_du, grad, ops.concat((grad_w, grad_w * dw_du), axis=-1)

    _check(fused.decode_one, builtin, (o, eps, np.array([OFFSET]), x, y), grad_positions=(0,),
           rtol=1e-4, atol=EXP_ATOL)


def test_decode_copies(fused):
    rng = _rng(14)
    m, u, eps = rng.standard_normal((B, N, D)) * 0.3, _u(rng, (B, N, K, D)), rng.standard_normal((B, N, K, D))
    x, y = _support(rng, N * K)

    def builtin(m, u, eps, offset, x, y):  # noqa: ARG001
        spread, dw_du = _weight_sample(u, eps)
        w = m + spread.mean(axis=2)
        grad = _class_grad(x, y, w)
        return w, dw_du, grad, ops.expand_dims(grad, 2) * dw_du

    _check(fused.decode_copies, builtin, (m, u, eps, np.array([OFFSET]), x, y), grad_positions=(0, 1),
           rtol=1e-4, atol=EXP_ATOL)


def test_finetune_step(fused):
    rng = _rng(15)
    w, g = rng.standard_normal((B, N, D)) * 0.3, rng.standard_normal((B, N, D))
    rate = rng.uniform(-0.01, 0.01, (D,))
    x, y = _support(rng, N * K)

    def builtin(w, rate, g, x, y):
        w2 = w + rate * g
        return w2, _class_grad(x, y, w2)

    _check(fused.finetune_step, builtin, (w, rate, g, x, y), grad_positions=(0, 1, 2))


def test_exp_accuracy_over_the_float_range(fused):
    """The library's own exp (vectorisable) within 2.5e-7 relative of float64's, read through
    the weight sampling's dw_du = eps * exp(u) with eps = 1 and offset 0."""
    u = np.linspace(-20, 20, 4001).reshape(1, 1, 1, -1)
    o = np.concatenate([np.zeros_like(u), u], axis=-1)
    x, y = np.zeros((1, 1, u.size)), np.ones((1, 1, 1))
    _, dw_du, _, _ = fused.decode_one(_t(o), _t(np.ones_like(u)), _t(np.array([0.0])), _t(x), _t(y))
    want = np.exp(u.astype(np.float32).astype(np.float64))
    assert float(np.max(np.abs(dw_du.asnumpy() - want) / want)) < 2.5e-7


def _fresh(monkeypatch, tmp_path):
    """No library decided yet in this process, and an empty cache."""
    monkeypatch.setattr(fused_ops, "_LIBRARY", [])
    monkeypatch.setattr(fused_ops, "_PENDING", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def test_unavailable_compiler_falls_back_with_one_line(monkeypatch, capsys, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert fused_ops.library() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no C++ compiler" in err[0] and "same results" in err[0]


def test_failing_compile_falls_back_with_one_line_and_no_partial_file(monkeypatch, capsys, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", "false")
    fused_ops.start_compile()
    assert fused_ops.library() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "false failed" in err[0]
    assert not [p for p in (tmp_path / "leo-launch" / "fused-ops").rglob("*") if p.is_file()]


def test_compile_in_the_background_then_cached(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    fused_ops.start_compile()
    assert fused_ops._PENDING  # compiling while the caller goes on
    path = fused_ops.library()
    assert path is not None and path.is_relative_to(tmp_path / "leo-launch" / "fused-ops")
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(fused_ops, "_LIBRARY", [])
    fused_ops.start_compile()
    assert not fused_ops._PENDING  # found in the cache: nothing to compile
    assert fused_ops.library() == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == ["fused_ops.so"]  # no partial files left


def test_pending_compile_abandoned_at_exit_leaves_no_file(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    fused_ops.start_compile()
    fused_ops._abandon()
    assert not fused_ops._PENDING
    assert not [p for p in (tmp_path / "leo-launch" / "fused-ops").rglob("*") if p.is_file()]


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv(fused_ops.ENV, "0")
    assert fused_ops.active_library() is None


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """The library as the CPU image's builder stage builds it."""
    out = tmp_path_factory.mktemp("prebuilt") / "fused_ops.so"
    fused_ops.build_portable(out)
    return out


@pytest.mark.skipif(fused_ops.platform.machine() != "x86_64", reason="x86-64's portable flags")
def test_portable_build_uses_no_instruction_beyond_x86_64_v2(portable):
    # -march=native here (AVX-512 on the test machines) would use ymm/zmm registers; an
    # image's library must run on nodes without AVX
    disassembly = subprocess.run(["objdump", "-d", str(portable)], capture_output=True, text=True,
                                 check=True).stdout
    assert "DecodeOne" in disassembly and not re.search(r"%[yz]mm\d", disassembly)


def test_prebuilt_library_is_used_without_compiling(monkeypatch, capsys, tmp_path, portable, fused):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", "false")  # a compile would fail and say so
    monkeypatch.setenv(fused_ops.LIBRARY_ENV, str(portable))
    fused_ops.start_compile()
    assert not fused_ops._PENDING
    assert fused_ops.active_library() == portable and fused_ops.library() == portable
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "leo-launch").exists()
    # its operators compute what the locally compiled ones do
    rng = _rng(3)
    x, y = np.abs(rng.standard_normal((B, N, D))) / 20, np.eye(N)[rng.integers(0, N, (B, N))]
    w = rng.standard_normal((B, N, D)) * 0.3
    got = fused_ops.make_ops(portable).class_grad(_t(x), _t(y), _t(w)).asnumpy()
    np.testing.assert_allclose(got, fused.class_grad(_t(x), _t(y), _t(w)).asnumpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("content", [None, b"not a shared library"])
def test_missing_or_broken_prebuilt_library_falls_back_with_one_line(monkeypatch, capsys, tmp_path, content):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", "false")
    path = tmp_path / "fused_ops.so"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv(fused_ops.LIBRARY_ENV, str(path))
    fused_ops.start_compile()
    assert fused_ops.library() is None and fused_ops.active_library() is None
    assert not fused_ops._PENDING
    err = capsys.readouterr().err.strip().splitlines()
    reason = "does not exist" if content is None else "does not load"
    assert len(err) == 1 and f"LEO_FUSED_OPS_LIBRARY={path} {reason}" in err[0] and "same results" in err[0]


def test_prebuilt_library_refused_on_a_cpu_without_x86_64_v2(monkeypatch, capsys, tmp_path, portable):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(fused_ops.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(fused_ops, "_cpu", lambda: "flags\t\t: fpu sse sse2 cx16 lahf_lm pni")
    monkeypatch.setenv(fused_ops.LIBRARY_ENV, str(portable))
    assert fused_ops.library() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks popcnt, sse4_1, sse4_2, ssse3" in err[0]


def test_switched_off_with_a_prebuilt_library(monkeypatch, tmp_path, portable):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv(fused_ops.ENV, "0")
    monkeypatch.setenv(fused_ops.LIBRARY_ENV, str(portable))
    assert fused_ops.active_library() is None
