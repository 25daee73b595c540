"""A literal float64 PyTorch transcription of the original LEO forward pass.

This is the yardstick for `leo_core.model`: it follows the original DeepMind
`model.py` (TensorFlow 1 + Sonnet) line by line rather than efficiently, one task
at a time, so that a mistake in the fast MindSpore version cannot be mirrored here:

- latents and decoded classifier weights carry K copies per class (`[N, K, L]`,
  `[N, K, D]`); predictions are `einsum("ijk,lmk->ijlm")` averaged over m;
- the inner-loop gradients are true nested autodiff
  (`torch.autograd.grad(..., create_graph=True)` of the per-example support
  cross-entropy summed, as `tf.gradients` of a vector sums it), not closed forms;
- the relation network runs on all (N*K)^2 pairs built by explicit tiling and
  concatenation;
- sampling is `exp(u) - 1 + offset` clamped at 1e-10, with `Normal.log_prob` KL.

It consumes exactly the random numbers of `leo_core.model.sample_noise`
(a `Noise`): `latent_eps [B, N, K, L]`, `weight_eps [S, B, N, K, D]` (one per
decode), `tr_masks [T, B, N*K, D]` (encoder input, then the prediction of each of
the inner_unroll + 1 decodes, then fine-tuning steps 2..F: the first fine-tuning
step differentiates the inner loop's last loss and the loss after the last step is
never used), `val_mask [B, N*Q, D]`. Without noise it runs in evaluation mode: no
dropout, distribution means, no sampling, KL and encoder penalty 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.distributions import Normal

PARAM_NAMES = (
    "encoder/w", "relation/w_0", "relation/w_1", "relation/w_2", "decoder/w",
    "inner_lr", "finetuning_lr",
)
WEIGHT_NAMES = PARAM_NAMES[:5]
DTYPE = torch.float64


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=DTYPE)


class ReferenceLEO:
    """One LEO model in float64; `params` maps the model's names to NumPy arrays."""

    # tf.stop_gradient (a class attribute so that a test can show it matters).
    stop_gradient = staticmethod(torch.Tensor.detach)

    def __init__(self, cfg, params: dict[str, np.ndarray]):
        self.cfg = cfg
        self.params = {name: _t(params[name]).clone().requires_grad_(True) for name in PARAM_NAMES}
        self.num_latents = cfg.num_latents
        self.training = False
        self._tr_masks: list[torch.Tensor] = []
        self._val_mask: torch.Tensor | None = None
        self._weight_eps: list[torch.Tensor] = []
        self._latent_eps: torch.Tensor | None = None
        self._tr_input: torch.Tensor | None = None

    # ------------------------------------------------------------ noise plumbing
    def _next_tr_mask(self) -> torch.Tensor | None:
        return self._tr_masks.pop(0) if self.training else None

    @staticmethod
    def _dropout(inputs, mask):
        # The masks already hold 0 or 1 / (1 - rate): tf.nn.dropout's inverted dropout.
        return inputs if mask is None else inputs * mask

    # ------------------------------------------------------------ the original model
    def encoder(self, inputs):
        after_dropout = self._dropout(inputs, self._next_tr_mask())
        return torch.einsum("nkd,dl->nkl", after_dropout, self.params["encoder/w"])

    def relation_network(self, inputs, num_classes, num_examples):
        total = num_classes * num_examples
        inputs = inputs.reshape(total, self.num_latents)
        left = inputs.unsqueeze(1).repeat(1, total, 1)  # left[i, j] = code i
        right = inputs.unsqueeze(0).repeat(total, 1, 1)  # right[i, j] = code j
        concat_codes = torch.cat([left, right], dim=-1)  # [NK, NK, 2L]
        h = concat_codes
        layers = [self.params[f"relation/w_{i}"] for i in range(3)]
        for i, w in enumerate(layers):  # snt.nets.MLP: activation between layers only
            h = h @ w
            if i < len(layers) - 1:
                h = torch.relu(h)
        outputs = h.mean(dim=1)  # over the second element of the pair
        return outputs.reshape(num_classes, num_examples, 2 * self.num_latents)

    def decoder(self, inputs):
        return torch.einsum("nkl,lo->nko", inputs, self.params["decoder/w"])

    @staticmethod
    def average_codes_per_class(codes):
        num_examples = codes.shape[1]
        codes = codes.mean(dim=1, keepdim=True)
        return codes.repeat(1, num_examples, 1)

    def possibly_sample(self, distribution_params, eps, stddev_offset=0.0):
        means, unnormalized_stddev = torch.chunk(distribution_params, 2, dim=-1)
        stddev = torch.exp(unnormalized_stddev)
        stddev = stddev - (1.0 - stddev_offset)
        stddev = torch.clamp(stddev, min=1e-10)
        distribution = Normal(loc=means, scale=stddev, validate_args=False)
        if not self.training:
            return means, torch.zeros((), dtype=DTYPE)
        samples = means + stddev * eps  # tfp's reparameterised sample
        return samples, self.kl_divergence(samples, distribution)

    @staticmethod
    def kl_divergence(samples, normal_distribution):
        prior = Normal(torch.zeros_like(samples), torch.ones_like(samples), validate_args=False)
        return (normal_distribution.log_prob(samples) - prior.log_prob(samples)).mean()

    def predict(self, inputs, weights):
        if not self.training:
            mask = None
        elif inputs is self._tr_input:  # support set: the next fresh mask
            mask = self._next_tr_mask()
        else:  # query set
            mask = self._val_mask
        after_dropout = self._dropout(inputs, mask)
        per_image_predictions = torch.einsum("ijk,lmk->ijlm", after_dropout, weights)
        return per_image_predictions.mean(dim=3)  # [N, K, N]

    def calculate_inner_loss(self, inputs, labels, weights):
        outputs = self.predict(inputs, weights)
        accuracy = (outputs.argmax(dim=-1) == labels).to(DTYPE).mean()
        return self.loss_fn(outputs, labels), accuracy

    def loss_fn(self, outputs, labels):
        one_hot = torch.nn.functional.one_hot(labels, outputs.shape[-1]).to(DTYPE)
        return -(one_hot * torch.log_softmax(outputs, dim=-1)).sum(dim=-1)  # per example

    def forward_encoder(self, tr_input):
        num_classes, num_examples = tr_input.shape[:2]
        encoder_outputs = self.encoder(tr_input)
        relation_outputs = self.relation_network(encoder_outputs, num_classes, num_examples)
        latent_dist_params = self.average_codes_per_class(relation_outputs)
        return self.possibly_sample(latent_dist_params, self._latent_eps)

    def forward_decoder(self, tr_input, tr_output, latents):
        weights_dist_params = self.decoder(latents)
        fan_in, fan_out = tr_input.shape[-1], tr_input.shape[0]
        stddev_offset = math.sqrt(2.0 / (fan_out + fan_in))
        eps = self._weight_eps.pop(0) if self.training else None
        classifier_weights, _ = self.possibly_sample(weights_dist_params, eps, stddev_offset)
        tr_loss, _ = self.calculate_inner_loss(tr_input, tr_output, classifier_weights)
        return tr_loss, classifier_weights

    def leo_inner_loop(self, tr_input, tr_output, latents):
        inner_lr = self.params["inner_lr"]
        starting_latents = latents
        loss, classifier_weights = self.forward_decoder(tr_input, tr_output, latents)
        for _ in range(self.cfg.inner_unroll_length):
            (loss_grad,) = torch.autograd.grad(loss.sum(), latents, create_graph=True)
            latents = latents - inner_lr * loss_grad
            loss, classifier_weights = self.forward_decoder(tr_input, tr_output, latents)
        if self.training:
            encoder_penalty = ((starting_latents - self.stop_gradient(latents)) ** 2).mean()
        else:
            encoder_penalty = torch.zeros((), dtype=DTYPE)
        return loss, classifier_weights, encoder_penalty

    def finetuning_inner_loop(self, tr_input, tr_output, val_input, val_output, leo_loss,
                              classifier_weights):
        finetuning_lr = self.params["finetuning_lr"]
        tr_loss = leo_loss
        steps = self.cfg.finetuning_unroll_length
        for step in range(steps):
            (loss_grad,) = torch.autograd.grad(tr_loss.sum(), classifier_weights, create_graph=True)
            classifier_weights = classifier_weights - finetuning_lr * loss_grad
            if step + 1 < steps:  # the original's last support loss is computed but unused
                tr_loss, _ = self.calculate_inner_loss(tr_input, tr_output, classifier_weights)
        return self.calculate_inner_loss(val_input, val_output, classifier_weights)

    def regularisation(self):
        l2 = sum(0.5 * (self.params[name] ** 2).sum() for name in WEIGHT_NAMES)
        weight = self.params["decoder/w"]  # [L, 2D]
        w2 = weight @ weight.T
        wn = torch.linalg.norm(weight, dim=1, keepdim=True) + 1e-32
        correlation = w2 / (wn @ wn.T)
        identity = torch.eye(correlation.shape[0], dtype=DTYPE)
        orth = ((correlation - identity) ** 2).mean()
        return l2, orth

    def task(self, tr_x, tr_y, val_x, val_y, noise=None):
        """One task's objective (without the regularisers), query CE and accuracy."""
        self.training = noise is not None
        self._tr_input = tr_x
        if self.training:
            self._latent_eps, self._weight_eps, tr_masks, self._val_mask = noise
            self._tr_masks = list(tr_masks)
            self._weight_eps = list(self._weight_eps)
        latents, kl = self.forward_encoder(tr_x)
        tr_loss, weights, encoder_penalty = self.leo_inner_loop(tr_x, tr_y, latents)
        val_loss, val_accuracy = self.finetuning_inner_loop(
            tr_x, tr_y, val_x, val_y, tr_loss, weights)
        if self.training:
            assert not self._tr_masks and not self._weight_eps, "noise not fully consumed"
        ce = val_loss.mean()
        objective = ce + self.cfg.kl_weight * kl + self.cfg.encoder_penalty_weight * encoder_penalty
        return objective, ce, val_accuracy


def _task_noise(noise, task, n, k, q):
    d = noise.tr_masks.shape[-1]
    return (
        _t(noise.latent_eps[task]),
        [_t(eps) for eps in noise.weight_eps[:, task]],
        [_t(mask).reshape(n, k, d) for mask in noise.tr_masks[:, task]],
        _t(noise.val_mask[task]).reshape(n, q, d),
    )


def meta_loss_and_grads(cfg, params, tr_x, tr_y, val_x, val_y, noise):
    """The original's meta-batch objective on B tasks, and its gradients.

    objective = mean over tasks (mean query CE + kl_weight KL + encoder_penalty_weight
    penalty) + l2_penalty_weight Σ ½‖w‖² + orthogonality_penalty_weight orth.
    Returns (loss, per-task CE [B], per-task accuracy [B], grads dict), NumPy.
    """
    ref = ReferenceLEO(cfg, params)
    b, n, k = tr_y.shape
    q = val_y.shape[2]
    objectives, ces, accs = [], [], []
    for task in range(b):
        objective, ce, acc = ref.task(
            _t(tr_x[task]), torch.as_tensor(tr_y[task]).long(),
            _t(val_x[task]), torch.as_tensor(val_y[task]).long(),
            _task_noise(noise, task, n, k, q))
        objectives.append(objective)
        ces.append(ce.item())
        accs.append(acc.item())
    l2, orth = ref.regularisation()
    total = (torch.stack(objectives).mean() + cfg.l2_penalty_weight * l2
             + cfg.orthogonality_penalty_weight * orth)
    grads = torch.autograd.grad(total, [ref.params[name] for name in PARAM_NAMES])
    return (total.item(), np.array(ces), np.array(accs),
            {name: g.numpy() for name, g in zip(PARAM_NAMES, grads, strict=True)})


def evaluate(cfg, params, tr_x, tr_y, val_x, val_y):
    """Per-task query CE and accuracy in evaluation mode, NumPy [B] each."""
    ref = ReferenceLEO(cfg, params)
    ces, accs = [], []
    for task in range(tr_y.shape[0]):
        _, ce, acc = ref.task(_t(tr_x[task]), torch.as_tensor(tr_y[task]).long(),
                              _t(val_x[task]), torch.as_tensor(val_y[task]).long())
        ces.append(ce.item())
        accs.append(acc.item())
    return np.array(ces), np.array(accs)


def encode(cfg, params, tr_x):
    """Evaluation-mode latent distribution parameters [N, K, 2L] of one task (tests)."""
    ref = ReferenceLEO(cfg, params)
    n, k = tr_x.shape[:2]
    with torch.no_grad():
        codes = ref.encoder(_t(tr_x))
        out = ref.average_codes_per_class(ref.relation_network(codes, n, k))
    return out.numpy()
