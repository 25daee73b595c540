"""LEO (Rusu et al., ICLR 2019) in MindSpore, following the original DeepMind `model.py`.

The model is a pure function of its parameters, a batch of tasks and, in
meta-training, the random numbers it consumes (dropout masks and Gaussian noise).
The random numbers are drawn on the host from per-task NumPy streams
(`sample_noise`): a step is then reproducible, resumable and identical whether its
tasks run in one process or are split across data-parallel ranks.

The two inner loops use closed-form gradients of the summed support cross-entropy
(MindSpore 2.10 cannot compile nested autodiff in graph mode). They are written
with differentiable operations, so the outer gradient, taken by autodiff, is the
full second-order gradient through both loops, as in the original. The test suite
checks the closed forms against autodiff.

Shapes (per batch of B tasks): N classes, K shots, Q queries, D = 640, L latents.
Following the original, latents and decoded weights keep K copies per class
(`[B, N, K, L]`, `[B, N, K, D]`) and logits average over the K weight samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from leo_core import fused_ops
from leo_core.config import ExperimentConfig

EMBEDDING_DIM = 640

# Trainable tensors: name -> shape function of (D, L). Sonnet layout [in, out].
PARAM_SHAPES = {
    "encoder/w": lambda d, z: (d, z),
    "relation/w_0": lambda d, z: (2 * z, 2 * z),
    "relation/w_1": lambda d, z: (2 * z, 2 * z),
    "relation/w_2": lambda d, z: (2 * z, 2 * z),
    "decoder/w": lambda d, z: (z, 2 * d),
    "inner_lr": lambda d, z: (z,),
    "finetuning_lr": lambda d, z: (d,),
}
PARAM_NAMES = tuple(PARAM_SHAPES)
# Tensors under the L2 penalty (not the learning rates).
WEIGHT_NAMES = PARAM_NAMES[:5]


def init_parameters(cfg: ExperimentConfig, seed: int, dim: int = EMBEDDING_DIM) -> dict[str, np.ndarray]:
    """Glorot-uniform weights (no biases) and the learning rates' initial values."""
    rng = np.random.default_rng(seed)
    params = {}
    for name in WEIGHT_NAMES:
        fan_in, fan_out = PARAM_SHAPES[name](dim, cfg.num_latents)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        params[name] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
    params["inner_lr"] = np.full((cfg.num_latents,), cfg.inner_lr_init, np.float32)
    params["finetuning_lr"] = np.full((dim,), cfg.finetuning_lr_init, np.float32)
    return params


# ---------------------------------------------------------------- random numbers


@dataclass
class Noise:
    """The random numbers one meta-training step consumes, for B tasks.

    Dropout masks already hold 0 or 1/(1 - rate) (inverted dropout, as tf.nn.dropout).
    """

    latent_eps: np.ndarray  # [B, N, K, L]     sampling of the latents
    weight_eps: np.ndarray  # [S, B, N, K, D]  one per decode (S = inner_unroll + 1)
    tr_masks: np.ndarray  # [T, B, N*K, D]   encoder, each decode's prediction, fine-tuning
    val_mask: np.ndarray  # [B, N*Q, D]      query prediction

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return (self.latent_eps, self.weight_eps, self.tr_masks, self.val_mask)


def num_support_masks(cfg: ExperimentConfig) -> int:
    # Encoder input, the inner loop's inner_unroll + 1 predictions, and the
    # fine-tuning predictions whose gradients are used (its first step reuses the
    # inner loop's last loss; the loss after its last step is never used).
    return 1 + (cfg.inner_unroll_length + 1) + max(cfg.finetuning_unroll_length - 1, 0)


def task_rng(seed: int, step: int, task: int) -> np.random.Generator:
    """The stream of task `task` (global index in the meta-batch) at `step`."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 7, step, task])))


def sample_task_noise(
    cfg: ExperimentConfig, seed: int, step: int, task: int, num_queries: int,
    out: tuple[np.ndarray, ...], index: int, dim: int = EMBEDDING_DIM,
) -> None:
    """Draw task `task`'s noise of step `step` into slot `index` of `out`
    (latent_eps, weight_eps, tr_masks, val_mask, laid out as in `Noise`)."""
    n, k, latents = cfg.num_classes, cfg.num_tr_examples_per_class, cfg.num_latents
    latent, weight, tr, val = out
    decodes, masks = weight.shape[0], tr.shape[0]
    keep = 1.0 - cfg.dropout_rate
    scale = np.float32(1.0 / keep)
    rng = task_rng(seed, step, task)
    rng.standard_normal((n, k, latents), np.float32, out=latent[index])
    for s in range(decodes):
        rng.standard_normal((n, k, dim), np.float32, out=weight[s, index])
    # An element is kept when its uniform draw is below the keep probability, as
    # tf.nn.dropout. The draws are 16-bit integers, four per raw 64-bit output of the
    # generator (a third of the cost of float32 uniforms; the prefetch thread's CPU competes
    # with MindSpore's runtime on small machines); the realised keep probability
    # threshold / 2**16 is within 2**-17 (7.6e-6) of 1 - dropout_rate.
    tr_size, val_size = masks * n * k * dim, n * num_queries * dim
    draws = rng.bit_generator.random_raw(-(-(tr_size + val_size) // 4)).view(np.uint16)
    threshold = round(keep * 2**16)
    if threshold >= 2**16:  # no dropout
        keep_all = np.ones(tr_size + val_size, bool)
    else:
        keep_all = draws[:tr_size + val_size] < np.uint16(threshold)
    keep_tr = keep_all[:tr_size].reshape(masks, n * k, dim)
    keep_val = keep_all[tr_size:].reshape(n * num_queries, dim)
    np.multiply(keep_tr.view(np.uint8), scale, out=tr[:, index], dtype=np.float32)
    np.multiply(keep_val.view(np.uint8), scale, out=val[index], dtype=np.float32)


def empty_noise(cfg: ExperimentConfig, batch: int, num_queries: int, dim: int = EMBEDDING_DIM) -> Noise:
    n, k = cfg.num_classes, cfg.num_tr_examples_per_class
    return Noise(
        latent_eps=np.empty((batch, n, k, cfg.num_latents), np.float32),
        weight_eps=np.empty((cfg.inner_unroll_length + 1, batch, n, k, dim), np.float32),
        tr_masks=np.empty((num_support_masks(cfg), batch, n * k, dim), np.float32),
        val_mask=np.empty((batch, n * num_queries, dim), np.float32),
    )


def sample_noise(
    cfg: ExperimentConfig, seed: int, step: int, tasks: range, num_queries: int,
    dim: int = EMBEDDING_DIM,
) -> Noise:
    """Noise for the global tasks `tasks` of meta-training step `step`.

    Each task's numbers come from its own stream `task_rng(seed, step, task)`, so they
    do not depend on which other tasks (or ranks) share the call.
    """
    noise = empty_noise(cfg, len(tasks), num_queries, dim)
    out = noise.as_tuple()
    for index, task in enumerate(tasks):
        sample_task_noise(cfg, seed, step, task, num_queries, out, index, dim)
    return noise


# ---------------------------------------------------------------- the graph

_GRAPHS: dict[tuple, object] = {}
_RUNTIME_CONFIGURED = False


def configure_runtime() -> None:
    """Apply `LEO_MS_THREADS` (MindSpore's CPU kernel thread pool size) once per process.

    Unset: MindSpore's default. See tests/benchmarks/README.md for what was
    measured; the setting must come before the first graph runs."""
    global _RUNTIME_CONFIGURED
    if _RUNTIME_CONFIGURED:
        return
    _RUNTIME_CONFIGURED = True
    threads = os.environ.get("LEO_MS_THREADS", "").strip()
    if threads:
        import mindspore as ms

        ms.device_context.cpu.op_tuning.threads_num(int(threads))


def _ms():
    import mindspore as ms

    return ms


def _pair_sum_cell():
    """A Cell computing out[b, i, j] = left[b, i] + right[b, j] whose gradient sums over
    j and over i with batched products against a ones row: autodiff's ReduceSum over a
    middle axis was the largest 5-shot operator (16% of the step) on MindSpore's CPU."""
    import mindspore as ms
    from mindspore import nn, ops

    class PairSum(nn.Cell):
        def construct(self, left, right):  # [B, M, C] each -> [B, M, M, C]
            return ops.expand_dims(left, 2) + ops.expand_dims(right, 1)

        def bprop(self, left, right, out, dout):  # noqa: ARG002 - MindSpore's bprop signature
            b, m, c = left.shape
            ones_rows = ops.ones((b * m, 1, m), ms.float32)
            ones_cols = ops.ones((b, 1, m), ms.float32)
            d_left = ops.bmm(ones_rows, dout.reshape(b * m, m, c)).reshape(b, m, c)
            d_right = ops.bmm(ones_cols, dout.reshape(b, m, m * c)).reshape(b, m, c)
            return d_left, d_right

    return PairSum()


def _weight_sample_cell(offset: float):
    """A Cell computing, from the decoder's `u` output and the noise eps, (std * eps,
    d(std * eps)/du) with std = max(exp(u) - offset, 1e-10). Its gradient is written
    out: both outputs have the same derivative with respect to u (exp(u) * eps where
    the clamp is inactive, the second output itself), so the backward pass is one
    Add and one Mul instead of autodiff's ~10 operators through Maximum, Exp and the
    products (each decode of the inner loop pays it)."""
    from mindspore import nn, ops

    class WeightSample(nn.Cell):
        def construct(self, u, eps):
            exp_u = ops.exp(u)
            std = ops.maximum(exp_u - offset, 1e-10)
            # d(std)/du is exp(u) where the clamp is inactive, 0 where it holds.
            dw_du = ops.where(std > 1e-10, eps * exp_u, 0.0)
            return std * eps, dw_du

        def bprop(self, u, eps, out, dout):  # noqa: ARG002 - MindSpore's bprop signature
            return (dout[0] + dout[1]) * out[1], ops.zeros_like(eps)

    return WeightSample()


def _copies_cell(k: int):
    """A Cell broadcasting x [B, N, 1, C] to its K copies [B, N, K, C] whose gradient sums
    the copies with one batched product against a ones row: the implicit broadcast's
    gradient, a ReduceSum over that middle axis, was the slowest 5-shot operator type
    (~200 us per use on 640-wide rows) on MindSpore's CPU."""
    import mindspore as ms
    from mindspore import nn, ops

    class Copies(nn.Cell):
        def construct(self, x):
            b, n, _, c = x.shape
            return ops.broadcast_to(x, (b, n, k, c))

        def bprop(self, x, out, dout):  # noqa: ARG002 - MindSpore's bprop signature
            b, n, _, c = x.shape
            ones_row = ops.ones((b * n, 1, k), ms.float32)
            return (ops.bmm(ones_row, dout.reshape(b * n, k, c)).reshape(x.shape),)

    return Copies()


def _orthogonality_cell():
    """A Cell computing the orthogonality penalty of the decoder's rows, mean((C - I)^2)
    with C their 64x64 correlation matrix, and its gradient in closed form: with U the
    rows divided by their norms n, dF/dU = 4 (C - I) U / 64^2 and each row's gradient is
    that part of dF/dU orthogonal to the row, divided by its norm. About 16 operators
    instead of autodiff's ~30 through norm, division and the mean (the tests check the
    gradient against the float64 reference)."""
    import mindspore as ms
    from mindspore import nn, ops

    matmul_nt = ops.MatMul(transpose_b=True)

    class Orthogonality(nn.Cell):
        def construct(self, w):
            m = w.shape[0]
            norms = ops.sqrt((w * w).sum(axis=1, keepdims=True)) + 1e-32
            rows = w / norms
            excess = matmul_nt(rows, rows) - ops.eye(m, m, ms.float32)  # C - I
            penalty = ops.square(excess).mean()
            toward = ops.matmul(excess, rows) * (4.0 / (m * m))  # dF/dU
            along = (toward * rows).sum(axis=1, keepdims=True)
            return penalty, (toward - along * rows) / norms

        def bprop(self, w, out, dout):  # noqa: ARG002 - MindSpore's bprop signature
            return (dout[0] * out[1],)

    return Orthogonality()


def _step_cell():
    """A Cell computing x + rate * g for a per-feature rate [C] and x, g [..., C]: the
    inner loops' update with the negated learning rate. Its gradient with respect to the
    rate sums over all leading axes as one product with a ones row: autodiff's ReduceSum
    over leading axes was among the slowest operators of a step (~100 us each for the
    fine-tuning rate) on MindSpore's CPU."""
    import mindspore as ms
    from mindspore import nn, ops

    class Step(nn.Cell):
        def construct(self, x, rate, g):
            return x + rate * g

        def bprop(self, x, rate, g, out, dout):  # noqa: ARG002 - MindSpore's bprop signature
            c = g.shape[-1]
            rows = g.size // c
            ones_row = ops.ones((1, rows), ms.float32)
            d_rate = ops.matmul(ones_row, (dout * g).reshape(rows, c)).reshape(rate.shape)
            return dout, d_rate, dout * rate

    return Step()


def make_functions(cfg: ExperimentConfig, dim: int = EMBEDDING_DIM, fused: SimpleNamespace | None = None) -> SimpleNamespace:
    """The model's MindSpore functions for one configuration (uncompiled; tests call
    them in PyNative mode to check the closed-form gradients against autodiff).

    `fused`: `leo_core.fused_ops.make_ops`'s operators (CPU), which compute each chain
    between the matrix products (a decode with its support gradient, a loop's update, the
    latent sampling, the penalties, ...) in one launch and its gradient in one more; None
    builds the same functions from MindSpore's built-in operators.

    Written for few, large operators (MindSpore's CPU runtime pays a fixed cost per
    operator launch, which dominates a LEO step): noise tensors arrive one per use
    (no slicing copies), the decoder weight is split once, batched products use
    BatchMatMul's transpose flags, the inner loops carry the class-mean classifier weights `[B, N, D]`
    (logits only see the mean over the K weight samples, and every sample of a class
    receives the same update, so fine-tuning the mean is the same computation), and
    the relation network averages before its last (linear) layer.
    """
    import mindspore as ms
    from mindspore import ops

    n, k = cfg.num_classes, cfg.num_tr_examples_per_class
    latents = cfg.num_latents
    inner_steps, finetune_steps = cfg.inner_unroll_length, cfg.finetuning_unroll_length
    weight_offset = 1.0 - math.sqrt(2.0 / (dim + n))  # Glorot-style std offset of the decoder
    kl_weight, penalty_weight = cfg.kl_weight, cfg.encoder_penalty_weight
    orth_weight = cfg.orthogonality_penalty_weight
    # The MatMul primitive: its gradient is MatMul with transpose flags, where ops.matmul's
    # goes through Transpose operators (5% of a 5-shot step in the profile).
    matmul_nn = ops.MatMul()
    matmul_nt = ops.MatMul(transpose_b=True)  # a @ b.T without a Transpose operator
    bmm_nt = ops.BatchMatMul(transpose_b=True)
    bmm_tn = ops.BatchMatMul(transpose_a=True)

    def linear(x, w):
        """x [..., in] @ w [in, out]. MindSpore's CPU matmul of an N-d tensor by a
        matrix is ~10x slower than the same product on a 2-d view, so flatten."""
        out = matmul_nn(x.reshape(-1, x.shape[-1]), w)
        return out.reshape(x.shape[:-1] + (w.shape[-1],))

    def linear_t(x, w):
        """x [..., out] @ w.T for w [in, out]."""
        out = matmul_nt(x.reshape(-1, x.shape[-1]), w)
        return out.reshape(x.shape[:-1] + (w.shape[0],))

    def mean_axis(x, axis):
        """Mean over one axis as a batched product with a constant row: MindSpore's
        CPU reductions over a middle axis are several times slower than bmm."""
        size = x.shape[axis]
        if size == 1:
            return ops.squeeze(x, axis)
        outer = 1
        for extent in x.shape[:axis]:
            outer *= extent
        rows = x.reshape(outer, size, -1)
        weights = ops.full((outer, 1, size), 1.0 / size, dtype=ms.float32)
        return ops.bmm(weights, rows).reshape(x.shape[:axis] + x.shape[axis + 1:])

    pair_sum = _pair_sum_cell()
    weight_sample = _weight_sample_cell(weight_offset)
    descend = fused.descend if fused is not None else _step_cell()
    fused_offset = fused.constants(weight_offset) if fused is not None else None
    loss_weights = fused.constants(kl_weight, penalty_weight, orth_weight) if fused is not None else None
    copies = _copies_cell(k)
    orthogonality = _orthogonality_cell()

    def split_decoder(w_dec):
        """(the decoder weight [L, 2D], its mean part, its std part [L, D] each): decoding
        multiplies by the whole weight once and splits the output (its gradient is then
        one Concat and two products, not four products and a sum); the chain rule back to
        the latents uses the parts."""
        mean_part, u_part = ops.split(w_dec, dim, axis=1)
        return w_dec, mean_part, u_part

    def class_grad(x, y, w_mean):
        """Gradient of the summed support cross-entropy of x [B, M, D] with respect to
        the class-mean weights w_mean [B, N, D] (logits average over the K samples)."""
        if fused is not None:
            return fused.class_grad(x, y, w_mean)
        # softmax as exp(log_softmax): its gradient is one fused LogSoftmaxGrad and a Mul,
        # where Softmax's expands into four operators on MindSpore's CPU.
        delta = ops.exp(ops.log_softmax(bmm_nt(x, w_mean), axis=-1)) - y  # dloss/dlogits [B, M, N]
        return bmm_tn(delta, x)

    def support_grad(x, y, w_mean):
        """The gradient with respect to each of the K weight samples of a class, [B, N, D]:
        1/K of the class gradient. (The inner loops fold the 1/K into their rates.)"""
        grad = class_grad(x, y, w_mean)
        return grad if k == 1 else grad * (1.0 / k)

    def support_loss_and_grad(x, y, w):
        """Summed cross-entropy of x [B, M, D] with weights w [B, N, K, D] and its
        gradient per weight sample, [B, N, 1, D] (the same for the K samples)."""
        w_mean = mean_axis(w, 2)
        loss = -(y * ops.log_softmax(bmm_nt(x, w_mean), axis=-1)).sum(axis=(1, 2))  # [B]
        return loss, ops.expand_dims(support_grad(x, y, w_mean), 2)

    def query_ce_and_accuracy(x, y, labels, w_mean):
        logits = bmm_nt(x, w_mean)
        ce = -(y * ops.log_softmax(logits, axis=-1)).sum(axis=-1)  # [B, M]
        correct = (ops.argmax(logits, dim=-1) == labels).astype(ms.float32)
        return ce.mean(axis=1), correct.mean(axis=1)

    def sample(mean, u, eps, offset):
        std = ops.maximum(ops.exp(u) - offset, 1e-10)
        return mean + std * eps, std

    def encode(x, w_enc, w_r0, w_r1, w_r2):
        """Encoder and relation network -> latent distribution parameters of each
        class [B, N, 1, 2L] (the original tiles them over the K examples); x is the
        support set, its dropout already applied in meta-training."""
        codes = linear(x, w_enc)  # [B, NK, L]
        # The first relation layer on concat(left, right) of all (NK)^2 pairs equals
        # left @ W0[:L] + right @ W0[L:], computed per example and broadcast.
        w_left, w_right = ops.split(w_r0, latents, axis=0)
        left = linear(codes, w_left)  # [B, NK, 2L]
        right = linear(codes, w_right)
        h = fused.pair_relu(left, right) if fused is not None else ops.relu(pair_sum(left, right))  # [B, NK, NK, 2L]
        h = ops.relu(linear(h, w_r1))
        # The original averages the last (linear, no activation) layer's outputs over
        # the second element of each pair, then over the K examples of the class:
        # average first, then apply the layer once per class.
        batch = h.shape[0]
        h = mean_axis(h.reshape(batch, n, k * n * k, 2 * latents), 2)  # [B, N, 2L]
        return linear(h, w_r2).reshape(batch, n, 1, 2 * latents)

    def decode(z, dec, eps):
        """Classifier weights from latents z [B, N, K', L]: (samples or means
        [B, N, K', D], their derivative with respect to the decoder's `u` output
        times eps (None without sampling), and `u`)."""
        mean, u = ops.split(linear(z, dec[0]), dim, axis=-1)
        if eps is None:
            return mean, None, u
        spread, dw_du = weight_sample(u, eps)
        return mean + spread, dw_du, u

    def class_mean_weights_1(z, dec, eps):
        """The class means of the decoded weights [B, N, D] and their derivative with
        respect to `u` times eps (see `decode`)."""
        w, dw_du, _ = decode(z, dec, eps)
        return mean_axis(w, 2), dw_du

    def class_mean_weights_k(z, dec, eps):
        """`class_mean_weights` for K > 1 samples with noise: the mean over the samples
        commutes with the decoder's mean part, so the latents' class mean is decoded once
        instead of K latents (a third fewer multiply-adds in each 5-shot decode and its
        gradient)."""
        if eps is None:
            return class_mean_weights_1(z, dec, eps)
        _, w_mean_part, w_u_part = dec
        spread, dw_du = weight_sample(linear(z, w_u_part), eps)
        return linear(mean_axis(z, 2), w_mean_part) + mean_axis(spread, 2), dw_du

    class_mean_weights = class_mean_weights_k if k > 1 else class_mean_weights_1

    def latent_grad(grad_w, dw_du, dec):
        """Chain rule from dloss/dW [B, N, 1, D] through sampling and the decoder to
        dloss/dz [B, N, K', L]."""
        w_dec, w_mean_part, w_u_part = dec
        if dw_du is None:
            return linear_t(grad_w, w_mean_part)
        if k == 1:  # one product with the whole decoder weight
            return linear_t(ops.concat((grad_w, grad_w * dw_du), axis=-1), w_dec)
        grad_z = linear_t(grad_w, w_mean_part)  # [B, N, 1, L]: the same for the K copies
        return copies(grad_z) + linear_t(copies(grad_w) * dw_du, w_u_part)

    def sample_latents(mean, u, eps):
        """K latent samples per class, broadcast from the class's distribution [B, N, 1, L],
        and the one-sample KL estimate log q(z) - log N(z; 0, 1), mean per task."""
        if fused is not None:
            return fused.latent_sample(mean, u, eps)  # the same, in one operator
        z, std = sample(mean, u, eps, 1.0)
        # At the sample (z - mean) / std is eps, so log q(z) = -eps^2/2 - log std - log(2pi)/2.
        kl = (0.5 * (ops.square(z) - ops.square(eps))).mean(axis=(1, 2, 3)) - ops.log(std).mean(axis=(1, 2, 3))
        return z, kl

    # The latent loop's two halves: a decode returns (class-mean weights, their support
    # gradient, `chain`: what the update needs from the decode), the update steps the latents.
    # With the fused CPU operators in meta-training a decode's sampling, support gradient and
    # chain-rule product are one operator (DecodeOne, DecodeCopies) and `chain` that product;
    # otherwise `chain` is dw_du for `latent_grad`. Chosen here, in Python, and passed to
    # `adapt`: branching on it inside a nested graph function made MindSpore 2.10 mis-infer
    # the tuples it returns.
    def decode_plain(z, dec, eps, x, y):
        w_mean, dw_du = class_mean_weights(z, dec, eps)
        return w_mean, class_grad(x, y, w_mean), dw_du

    def update_plain(z, rate, grad, dw_du, dec):
        return descend(z, rate, latent_grad(ops.expand_dims(grad, 2), dw_du, dec))

    def decode_merged_one(z, dec, eps, x, y):
        w_mean, _, grad, chained = fused.decode_one(linear(z, dec[0]), eps, fused_offset, x, y)
        return w_mean, grad, chained

    def update_merged_one(z, rate, grad, chained, dec):  # noqa: ARG001
        return descend(z, rate, linear_t(chained, dec[0]))

    def decode_merged_k(z, dec, eps, x, y):
        w_mean, _, grad, scaled = fused.decode_copies(linear(mean_axis(z, 2), dec[1]), linear(z, dec[2]), eps,
                                                      fused_offset, x, y)
        return w_mean, grad, scaled

    def update_merged_k(z, rate, grad, scaled, dec):
        # latent_grad's two parts and the update in one operator (class part broadcast inside).
        return fused.descend_copies(z, rate, linear_t(ops.expand_dims(grad, 2), dec[1]), linear_t(scaled, dec[2]))

    plain_steps = (decode_plain, update_plain)
    if fused is None:
        training_steps = plain_steps
    else:
        training_steps = (decode_merged_one, update_merged_one) if k == 1 else (decode_merged_k, update_merged_k)

    def adapt(params, tr_x, tr_y, noise, loop_steps):
        """Latent inner loop, then fine-tuning; returns the adapted class-mean weights
        [B, N, D], KL and encoder penalty. `loop_steps`: (decode, update) of the latent loop."""
        w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr = params
        # The loops step along the class gradient (`class_grad`); each of the K weight
        # samples receives 1/K of it, folded into the (negated) rates once.
        inner_rate, finetuning_rate = inner_lr * (-1.0 / k), finetuning_lr * (-1.0 / k)
        training = noise is not None
        # In meta-training the support set arrives once per use, its dropout mask
        # already applied on the host (`train_inputs`): the inputs are data, so the
        # masking needs no gradient and costs the graph no operator.
        latent_eps, weight_eps, supports = noise if training else (None, None, None)
        dec = split_decoder(w_dec)

        def support(i):
            return supports[i] if training else tr_x

        dist = encode(support(0), w_enc, w_r0, w_r1, w_r2)
        mean, u = ops.split(dist, latents, axis=-1)  # [B, N, 1, L]
        if training:
            z, kl = sample_latents(mean, u, latent_eps)
        else:
            # Without sampling the K copies per class are identical: adapt one
            # (its update already carries the original's 1/K per copy).
            z, kl = mean, None
        z_start = z

        decode_step, update = loop_steps
        w_mean, grad, chain = decode_step(z, dec, weight_eps[0] if training else None, support(1), tr_y)
        for step in range(inner_steps):
            z = update(z, inner_rate, grad, chain, dec)
            w_mean, grad, chain = decode_step(z, dec, weight_eps[step + 1] if training else None,
                                              support(step + 2), tr_y)
        penalty = None
        if training and fused is not None:
            penalty = fused.encoder_penalty(z_start, z)  # z under stop-gradient, as below
        elif training:
            penalty = ops.square(z_start - ops.stop_gradient(z)).mean(axis=(1, 2, 3))
        for step in range(finetune_steps):
            if step + 1 < finetune_steps and fused is not None:  # the step and the next gradient
                w_mean, grad = fused.finetune_step(w_mean, finetuning_rate, grad,
                                                   support(inner_steps + 2 + step), tr_y)
            else:
                w_mean = descend(w_mean, finetuning_rate, grad)
                if step + 1 < finetune_steps:
                    grad = class_grad(support(inner_steps + 2 + step), tr_y, w_mean)
        return w_mean, kl, penalty

    def orthogonality_penalty(w_dec):
        """Orthogonality of the decoder's rows: over their 64x64 correlation matrix."""
        return (fused.orthogonality if fused is not None else orthogonality)(w_dec)[0]

    decodes = inner_steps + 1

    def meta_loss(w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr,
                  tr_y, val_x, val_y, val_labels, latent_eps, task_weight, reg_weight, *noise):
        """`val_x` with its dropout mask applied; `noise`: the weight eps of each decode,
        then the support set with each use's dropout mask applied, one tensor per use
        (slicing one stacked tensor costs a StridedSlice copy per use on the CPU);
        separate arguments, so no recompilation and no tuple inputs (see `train_inputs`)."""
        weight_eps, supports = noise[:decodes], noise[decodes:]
        params = (w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr)
        w, kl, penalty = adapt(params, None, tr_y, (latent_eps, weight_eps, supports), training_steps)
        # The L2 penalty is added on the host (`LEO.loss_and_grads`): its gradient is the
        # weights themselves, so the graph would spend 15 launches on a closed form.
        if fused is not None:  # the same terms, one operator each
            ce, acc, _ = fused.query_ce(val_x, val_y, w)  # the third: its gradient, for the backward
            total = fused.total(ce, kl, penalty, orthogonality_penalty(w_dec), task_weight, reg_weight,
                                loss_weights)
            return total, ce, acc
        ce, acc = query_ce_and_accuracy(val_x, val_y, val_labels, w)
        task_loss = ce + kl_weight * kl + penalty_weight * penalty
        total = task_loss.sum() * task_weight + orth_weight * orthogonality_penalty(w_dec) * reg_weight
        return total, ce, acc

    return SimpleNamespace(
        linear=linear, mean_axis=mean_axis, split_decoder=split_decoder,
        support_grad=support_grad, support_loss_and_grad=support_loss_and_grad,
        query_ce_and_accuracy=query_ce_and_accuracy, sample=sample, encode=encode,
        decode=decode, latent_grad=latent_grad, adapt=adapt, plain_steps=plain_steps, orthogonality_penalty=orthogonality_penalty,
        meta_loss=meta_loss, weight_offset=weight_offset,
    )


def _build_graphs(cfg: ExperimentConfig, dim: int, library):
    """Compile-once MindSpore functions for one configuration; `library`: the fused
    operators' (leo_core.fused_ops), None for MindSpore's built-in operators."""
    import mindspore as ms

    f = make_functions(cfg, dim, fused_ops.make_ops(library) if library is not None else None)
    grad_fn = ms.value_and_grad(f.meta_loss, grad_position=(0, 1, 2, 3, 4, 5, 6), has_aux=True)

    @ms.jit
    def train_step(*args):
        (total, ce, acc), grads = grad_fn(*args)
        return total, ce, acc, grads

    @ms.jit
    def evaluate(w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr,
                 tr_x, tr_y, val_x, val_y, val_labels):
        params = (w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr)
        w, _, _ = f.adapt(params, tr_x, tr_y, None, f.plain_steps)
        return f.query_ce_and_accuracy(val_x, val_y, val_labels, w)

    @ms.jit
    def orthogonality_value(w_dec):
        return f.orthogonality_penalty(w_dec)

    @ms.jit
    def adapted_weights(w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr, tr_x, tr_y):
        params = (w_enc, w_r0, w_r1, w_r2, w_dec, inner_lr, finetuning_lr)
        return f.adapt(params, tr_x, tr_y, None, f.plain_steps)[0]

    return train_step, evaluate, orthogonality_value, adapted_weights


def _tensor(array: np.ndarray):
    """A MindSpore tensor sharing the array's memory: ms.Tensor(ndarray) copies at a few
    hundred MB/s, which dominated evaluation with 600 - K queries per class."""
    return _ms().from_numpy(np.ascontiguousarray(array))


def _one_hot(labels: np.ndarray, depth: int) -> np.ndarray:
    return np.eye(depth, dtype=np.float32)[labels]


def _flat(x: np.ndarray) -> np.ndarray:
    """[B, N, K, D] -> [B, N*K, D] (examples of a task in class order)."""
    return np.ascontiguousarray(x.reshape(x.shape[0], -1, *x.shape[3:]), dtype=x.dtype)


@dataclass
class TrainInputs:
    """A meta-training step's host inputs in the training graph's layout, dropout applied.

    `train_inputs` builds them; `leo_core.prefetch` does so in its background thread, so
    the masking and layout copies are off the step's critical path."""

    arrays: tuple[np.ndarray, ...]


def train_inputs(cfg: ExperimentConfig, tr_x, tr_y, val_x, val_y, noise: Noise) -> TrainInputs:
    """`LEO.loss_and_grads`'s data arguments: labels one-hot and flat, the query set and
    each use of the support set multiplied by its dropout mask (inverted dropout, as the
    original's tf.nn.dropout on the embeddings)."""
    n = cfg.num_classes
    tr_flat = _flat(np.asarray(tr_x, np.float32))
    supports = np.multiply(noise.tr_masks, tr_flat[None])  # [T, B, NK, D], one per use
    return TrainInputs((
        _flat(_one_hot(tr_y, n)),
        np.multiply(_flat(np.asarray(val_x, np.float32)), noise.val_mask),
        _flat(_one_hot(val_y, n)),
        _flat(np.asarray(val_y, np.int32)[..., None])[..., 0],
        noise.latent_eps,
        *noise.weight_eps,
        *supports,
    ))


class LEO:
    """A LEO model for one experiment configuration; parameters live on the host."""

    def __init__(self, cfg: ExperimentConfig, seed: int = 0, dim: int = EMBEDDING_DIM):
        self.cfg = cfg
        self.dim = dim
        self.params = init_parameters(cfg, seed, dim)
        configure_runtime()
        # The fused CPU operators when they compile (leo_core.fused_ops), else built-in ones.
        library = fused_ops.active_library()
        self.fused = library is not None
        key = (cfg, dim, library)
        if key not in _GRAPHS:
            _GRAPHS[key] = _build_graphs(cfg, dim, library)
        self._train_step, self._evaluate, self._orthogonality, self._adapted = _GRAPHS[key]

    # -- parameters
    def parameters_as_numpy(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.params.items()}

    def load_numpy(self, params: dict[str, np.ndarray]) -> None:
        missing = set(PARAM_NAMES) - set(params)
        if missing:
            raise ValueError(f"parameters missing: {', '.join(sorted(missing))}")
        for name in PARAM_NAMES:
            expected = PARAM_SHAPES[name](self.dim, self.cfg.num_latents)
            value = np.asarray(params[name], np.float32)
            if value.shape != expected:
                raise ValueError(f"parameter {name} has shape {value.shape}, expected {expected}")
            self.params[name] = value.copy()

    def _param_tensors(self):
        return [_tensor(self.params[name]) for name in PARAM_NAMES]

    # -- meta-training
    def loss_and_grads(
        self, tr_x, tr_y, val_x, val_y, noise: Noise, task_weight: float, reg_weight: float = 1.0,
        inputs: TrainInputs | None = None,
    ):
        """Meta-loss part of these tasks and its gradients.

        The returned loss is `task_weight * sum(task losses) + reg_weight * penalties`:
        with task_weight = 1 / global batch and reg_weight = 1 / world size, the
        sum over data-parallel ranks is the original's meta-batch objective.
        Returns (loss, per-task query CE [B], per-task accuracy [B], grads dict).
        `inputs`: `train_inputs` of these arguments when already built (the prefetcher).
        """
        ms = _ms()
        if inputs is None:
            inputs = train_inputs(self.cfg, tr_x, tr_y, val_x, val_y, noise)
        data = [_tensor(array) for array in inputs.arrays]
        scalars = [ms.Tensor(np.float32(task_weight)), ms.Tensor(np.float32(reg_weight))]
        # Graph argument order: parameters, the five data tensors, the two weights, noise.
        args = [*self._param_tensors(), *data[:5], *scalars, *data[5:]]
        total, ce, acc, grads = self._train_step(*args)
        grads = {name: g.asnumpy() for name, g in zip(PARAM_NAMES, grads, strict=True)}
        # The L2 penalty l2_weight * reg_weight * sum(w^2) / 2 (not in the graph): its
        # gradient with respect to each weight is the weight times the same factor.
        factor = np.float32(self.cfg.l2_penalty_weight * reg_weight)
        for name in WEIGHT_NAMES:
            grads[name] += factor * self.params[name]
        return float(total.asnumpy()) + float(factor) * self._l2(), ce.asnumpy(), acc.asnumpy(), grads

    def _l2(self) -> float:
        """Σ ½‖w‖² over the weights (not the learning rates)."""
        return sum(0.5 * float(np.dot(self.params[n].ravel(), self.params[n].ravel())) for n in WEIGHT_NAMES)

    def regularisation(self) -> tuple[float, float]:
        """(Σ ½‖w‖², orthogonality penalty) at the current weights, without weights."""
        return self._l2(), float(self._orthogonality(_tensor(self.params["decoder/w"])).asnumpy())

    # -- evaluation
    def evaluate_batch(self, tr_x, tr_y, val_x, val_y) -> tuple[np.ndarray, np.ndarray]:
        """Per-task mean query cross-entropy and accuracy in evaluation mode.

        No dropout, latent and weight means, no sampling. Inputs are NumPy:
        tr_x [B, N, K, D] float32 (unit-normalised), tr_y [B, N, K] int,
        val_x [B, N, Q, D], val_y [B, N, Q].
        """
        n = self.cfg.num_classes
        ce, acc = self._evaluate(
            *self._param_tensors(),
            _tensor(_flat(np.asarray(tr_x, np.float32))),
            _tensor(_flat(_one_hot(tr_y, n))),
            _tensor(_flat(np.asarray(val_x, np.float32))),
            _tensor(_flat(_one_hot(val_y, n))),
            _tensor(_flat(np.asarray(val_y, np.int32)[..., None])[..., 0]),
        )
        return ce.asnumpy(), acc.asnumpy()

    def adapted_weights(self, tr_x, tr_y) -> np.ndarray:
        """Evaluation-mode adapted classifier weights [B, N, D] (mean over the K samples)."""
        n = self.cfg.num_classes
        w = self._adapted(*self._param_tensors(), _tensor(_flat(np.asarray(tr_x, np.float32))),
                          _tensor(_flat(_one_hot(tr_y, n))))
        return w.asnumpy()

    def evaluate_episodes(self, sampler, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`evaluate_batch` of the episodes `rows` of `sampler` (from `sample_indices`),
        without gathering the queries: MindSpore adapts on the support sets, then the
        query logits come from `sampler.query_logits` (one matrix product per class) and
        cross-entropy and accuracy from NumPy. Same numbers as `evaluate_batch` up to
        float32 rounding; several times faster with 600 - K queries per class."""
        support = sampler.support(rows)
        logits = sampler.query_logits(rows, self.episode_weights(*support))  # [B, N, Q, N]
        return self.episode_results(logits, support, sampler, rows)

    # The two halves of evaluate_episodes, so an evaluation of several models on the same
    # episodes (leo_core.evaluate) computes all their query logits in one pass.
    episode_weights = adapted_weights

    @staticmethod
    def episode_results(logits, support, sampler, rows) -> tuple[np.ndarray, np.ndarray]:
        """Per-task query cross-entropy and accuracy from query logits [B, N, Q, N]."""
        n = logits.shape[1]
        # Class-major [N, B, N, Q]: reductions over the N classes run along long contiguous
        # rows instead of N-element ones (several times faster).
        by_class = np.moveaxis(logits, -1, 0).copy()
        top = by_class.max(axis=0)  # [B, N, Q]
        if np.isnan(top).any():
            return _nan_safe_results(logits)
        own = np.stack([by_class[c, :, c] for c in range(n)], axis=1)  # the true class's logit
        # argmax == label under argmax's first-index rule: above every earlier class and
        # not below any later one.
        correct = np.empty(own.shape, bool)
        for c in range(n):
            block = by_class[:, :, c]
            correct[:, c] = np.all(block[:c] < own[:, c], axis=0) & np.all(block[c + 1:] <= own[:, c], axis=0)
        shifted = np.subtract(by_class, top, out=by_class)
        log_sum = np.log(np.exp(shifted, out=shifted).sum(axis=0)) + top
        ce = (log_sum - own).mean(axis=(1, 2))
        return ce.astype(np.float32), correct.mean(axis=(1, 2)).astype(np.float32)


def _nan_safe_results(logits) -> tuple[np.ndarray, np.ndarray]:
    """`LEO.episode_results` by NumPy's argmax, which counts a NaN as the largest logit."""
    n = logits.shape[1]
    labels = np.arange(n)[None, :, None]
    top = logits.max(axis=-1)
    log_sum = np.log(np.exp(logits - top[..., None]).sum(axis=-1)) + top
    own = np.take_along_axis(logits, np.broadcast_to(labels, logits.shape[:3])[..., None], -1)[..., 0]
    ce = (log_sum - own).mean(axis=(1, 2))
    acc = (logits.argmax(axis=-1) == labels).mean(axis=(1, 2))
    return ce.astype(np.float32), acc.astype(np.float32)
