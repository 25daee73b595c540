"""The original's outer-loop update on the host: NaN guard, clipping, Adam (TF1 semantics).

NumPy float32 on ~170k numbers costs well under a millisecond, keeps the optimizer
state trivially checkpointable and makes every data-parallel rank apply the same
update to the same reduced gradient.
"""

from __future__ import annotations

import numpy as np


def has_nan(loss: float, grads: dict[str, np.ndarray]) -> bool:
    return bool(np.isnan(loss)) or any(np.isnan(g).any() for g in grads.values())


def nan_guard_gradients(params: dict[str, np.ndarray], weight_names) -> dict[str, np.ndarray]:
    """The original's fallback: the gradient of 1e-4 * Σ ½‖w‖² (pull weights toward
    zero) for the weights and zero for everything else (the learning rates)."""
    return {
        name: (np.float32(1e-4) * value if name in weight_names else np.zeros_like(value))
        for name, value in params.items()
    }


def clip_gradients(grads: dict[str, np.ndarray], value: float, norm: float) -> dict[str, np.ndarray]:
    """Clip by value to ±value, then each tensor separately by L2 norm (tf.clip_by_norm)."""
    clipped = {}
    for name, g in grads.items():
        if value > 0:
            g = np.clip(g, -value, value)
        if norm > 0:
            g_norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
            if g_norm > norm:
                g = g * np.float32(norm / g_norm)
        clipped[name] = g.astype(np.float32)
    return clipped


class Adam:
    """tf.train.AdamOptimizer: beta1 0.9, beta2 0.999, epsilon 1e-8 ("epsilon hat")."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.t = 0

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        lr_t = self.lr * np.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        for name, g in grads.items():
            m = self.m.get(name, np.zeros_like(g))
            v = self.v.get(name, np.zeros_like(g))
            m = (self.beta1 * m + (1 - self.beta1) * g).astype(np.float32)
            v = (self.beta2 * v + (1 - self.beta2) * np.square(g)).astype(np.float32)
            self.m[name], self.v[name] = m, v
            params[name] = (params[name] - np.float32(lr_t) * m / (np.sqrt(v) + np.float32(self.eps))).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        state = {"t": np.array(self.t, np.int64)}
        state.update({f"m/{k}": v for k, v in self.m.items()})
        state.update({f"v/{k}": v for k, v in self.v.items()})
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.m = {k[2:]: np.asarray(v, np.float32) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, np.float32) for k, v in state.items() if k.startswith("v/")}
