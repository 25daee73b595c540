"""LEO's element-wise chains as single MindSpore CPU operators (`native/fused_ops.cc`).

MindSpore's CPU runtime pays ~25 us of host time per operator launch, whatever the tensor
size, and a LEO step is a few hundred launches on tiny tensors (tests/benchmarks/README.md).
Each operator here replaces a chain of built-in ones with one "aot" Custom operator that
computes the same values, and its gradient with another: the support gradient
(softmax minus labels and both batched products); an inner-loop decode (weight sampling,
the support gradient at the sampled weights and the chain rule's product, for K = 1 and
K > 1); a fine-tuning step with the next support gradient; the latent updates with their
rate gradient; the latent sampling with its KL term; the relation network's pair sums with
their ReLU; the query cross-entropy and accuracy; the decoder's orthogonality penalty; the
encoder penalty; the meta-loss's sum of its terms. `leo_core.model` uses them on the CPU
when they compile (`active_library`); elsewhere, or with LEO_FUSED_OPS=0, it builds the same
functions from built-in operators. tests/leo_core/test_fused_ops.py checks each operator and
gradient against the built-in chain, and test_model.py the whole model both ways.

The shared library is compiled once per source version and CPU with the C++ compiler (`CXX`,
default g++) into the user's cache ($XDG_CACHE_HOME or ~/.cache, `leo-launch/fused-ops/`)
and reused; without a compiler the model falls back to the built-in operators and says so
once on stderr. A prebuilt library named by LEO_FUSED_OPS_LIBRARY (the CPU image's, built
with `python -m leo_core.fused_ops --build-portable OUT`) is used instead, never compiled.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ENV = "LEO_FUSED_OPS"
LIBRARY_ENV = "LEO_FUSED_OPS_LIBRARY"
SOURCE = Path(__file__).with_name("native") / "fused_ops.cc"
# -fno-trapping-math lets the compiler turn the clamps into vector min/max (loops with
# them vectorise); no result depends on floating-point exceptions.
_FLAGS = ("-O3", "-fno-trapping-math", "-shared", "-fPIC", "-std=c++17")
# A library built on one machine for others (the CPU image) cannot know their CPU, and an
# instruction a CPU lacks kills the process (SIGILL) where no fallback can help. x86-64-v2
# (SSE4.2, POPCNT; Intel since 2008, AMD since 2011, RHEL 9's baseline) is on any x86-64
# server still in service; AVX2 (v3) is not (low-power CPUs, some virtual CPU models). The
# price, measured on this project's AVX-512 machine: a `-march=native` build's 1-shot step
# about a tenth faster (images/README.md), which is why builds for the machine that runs
# them (`start_compile`) keep -march=native.
# Elsewhere the compiler's default (aarch64: armv8-a) is the portable baseline.
PORTABLE_FLAGS = {"x86_64": ("-march=x86-64-v2",)}
# What x86-64-v2 needs, as /proc/cpuinfo names it: checked before a prebuilt library loads.
_PORTABLE_CPU = {"x86_64": {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}}
_LIBRARY: list = []  # [path or None] once decided
_PENDING: list = []  # [(process, compiler, partial file, target)] while compiling


def _switched_off() -> bool:
    return os.environ.get(ENV, "").strip() == "0"


def wanted() -> bool:
    """Whether the fused operators are to be used: on MindSpore's CPU target, unless
    LEO_FUSED_OPS=0."""
    if _switched_off():
        return False
    import mindspore as ms

    return ms.get_context("device_target") == "CPU"


def active_library() -> Path | None:
    """The library the model is to use: `library()` where `wanted()`, else None. The one
    decision `leo_core.model` and the compile cache's key both read."""
    return library() if wanted() else None


def _cache_root() -> Path:
    """The machine's user cache ($XDG_CACHE_HOME or ~/.cache): the library depends on the
    source and the CPU only, so every job on the machine shares it (a job's own cache dir,
    LEO_CACHE_DIR, would compile it once per job)."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "leo-launch" / "fused-ops"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "").strip() or "g++")


def start_compile() -> None:
    """Begin compiling the library in the background when it is not cached yet (a fresh
    pod: ~0.6 s of g++), so that it overlaps the interpreter's imports; `library()` waits
    for it. Does nothing with LEO_FUSED_OPS=0 or a prebuilt library (LEO_FUSED_OPS_LIBRARY)."""
    if _LIBRARY or _PENDING or _switched_off() or _prebuilt_path():
        return
    compiler = _compiler()
    if compiler is None:
        return
    flags = (*_FLAGS, *_cpu_flags())
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *flags, platform.machine(), _cpu())).encode())
    target = _cache_root() / key.hexdigest()[:16] / "fused_ops.so"
    if target.exists():
        _LIBRARY.append(target)
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Compile beside the target and rename: concurrent ranks never load a partial file.
        fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        process = subprocess.Popen([compiler, *flags, "-o", partial, str(SOURCE)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as err:
        _warn(f"cannot compile into {target.parent}: {err}")
        _LIBRARY.append(None)
        return
    _PENDING.append((process, compiler, partial, target))
    atexit.register(_abandon)


def _abandon() -> None:
    """At exit with the compile still pending (the run ended before its first graph, e.g. a
    bad config): stop the compiler and remove its partial file."""
    for process, _, partial, _ in _PENDING:
        process.kill()
        process.wait()
        Path(partial).unlink(missing_ok=True)
    _PENDING.clear()


def library() -> Path | None:
    """The compiled operators' shared library (compiled on first use, or waiting for
    `start_compile`'s compile), or None when no compiler is available or the compile fails
    (one line on stderr says why). With LEO_FUSED_OPS_LIBRARY set, that file, unless it
    is missing or does not load (then None, with one line on stderr)."""
    prebuilt = _prebuilt_path()
    if prebuilt and not _LIBRARY:
        _LIBRARY.append(_load_prebuilt(Path(prebuilt)))
    if not _LIBRARY and not _PENDING:
        start_compile()
        if not _LIBRARY and not _PENDING:
            _warn("no C++ compiler (set CXX or install g++)")
            _LIBRARY.append(None)
    if _PENDING:
        process, compiler, partial, target = _PENDING.pop()
        _, err = process.communicate()
        if process.returncode == 0:
            os.replace(partial, target)
            _LIBRARY.append(target)
        else:
            Path(partial).unlink(missing_ok=True)
            _warn(f"{compiler} failed: {(err.strip().splitlines() or ['?'])[0]}")
            _LIBRARY.append(None)
    return _LIBRARY[0]


def _prebuilt_path() -> str:
    return os.environ.get(LIBRARY_ENV, "").strip()


def _load_prebuilt(path: Path) -> Path | None:
    """`path` when this CPU has the portable build's instructions (`_PORTABLE_CPU`) and the
    dynamic loader accepts it (architecture, libraries), so that a broken image or an old
    node falls back instead of failing in MindSpore's first graph or dying of SIGILL."""
    import ctypes

    if not path.is_file():
        _warn(f"{LIBRARY_ENV}={path} does not exist")
        return None
    cpu = _cpu()
    missing = _PORTABLE_CPU.get(platform.machine(), set()) - set(cpu.split())
    if cpu and missing:
        _warn(f"this CPU lacks {', '.join(sorted(missing))}, which {path} needs")
        return None
    try:
        ctypes.CDLL(str(path))
    except OSError as err:
        _warn(f"{LIBRARY_ENV}={path} does not load: {err}")
        return None
    return path


def build_portable(out: Path) -> None:
    """Compile the library into `out` for any CPU of this architecture (`PORTABLE_FLAGS`),
    in the foreground: the CPU image's builder stage runs this."""
    compiler = _compiler()
    if compiler is None:
        raise SystemExit("no C++ compiler (set CXX or install g++)")
    flags = (*_FLAGS, *PORTABLE_FLAGS.get(platform.machine(), ()))
    subprocess.run([compiler, *flags, "-o", str(out), str(SOURCE)], check=True)


@functools.cache
def _cpu() -> str:
    """This CPU's model and feature flags (Linux), part of the library's cache key: a library
    compiled for one CPU's instructions is never loaded on another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _cpu_flags() -> tuple[str, ...]:
    # The host's vector instructions (AVX2/AVX-512 where present) make the exp and the
    # products 2-5x faster than the x86-64 baseline; the cache key carries the CPU (`_cpu`).
    return ("-march=native",) if _cpu() and platform.machine() in ("x86_64", "aarch64") else ()


def _warn(reason: str) -> None:
    print(f"leo_core: fused CPU operators unavailable ({reason}); using MindSpore's built-in "
          "operators (slower steps, same results)", file=sys.stderr, flush=True)


def make_ops(path: Path) -> SimpleNamespace:
    """Custom operators from the library at `path`, each with its gradient."""
    import mindspore as ms
    from mindspore import ops

    def custom(name, out_shape, outputs=1, bprop=None):
        """Operator `name` of the library; every input and output is float32."""
        def out_dtype(*dtypes):
            return dtypes[0] if outputs == 1 else (dtypes[0],) * outputs

        return ops.Custom(f"{path}:{name}", out_shape=out_shape, out_dtype=out_dtype,
                          func_type="aot", bprop=bprop)

    zeros = ops.zeros_like

    # The support gradient (softmax(x w^T) - y)^T x and its gradient with respect to w.
    class_grad_vjp = custom("ClassGradVjp", lambda x, y, w, g: w)

    def class_grad_bprop(x, y, w, out, dout):  # noqa: ARG001 - MindSpore's bprop signature
        return zeros(x), zeros(y), class_grad_vjp(x, y, w, dout)

    class_grad = custom("ClassGrad", lambda x, y, w: w, bprop=class_grad_bprop)

    # x + rate * g with a per-feature rate.
    descend_vjp = custom("DescendVjp", lambda rate, g, dout: (rate, g), outputs=2)

    def descend_bprop(x, rate, g, out, dout):  # noqa: ARG001
        d_rate, d_g = descend_vjp(rate, g, dout)
        return dout, d_rate, d_g

    descend = custom("Descend", lambda x, rate, g: x, bprop=descend_bprop)

    # The relation network's first layer over all pairs, relu(left_i + right_j).
    pair_relu_vjp = custom("PairReluVjp", lambda h, dout: ([h[0], h[1], h[3]],) * 2, outputs=2)

    def pair_relu_bprop(left, right, out, dout):  # noqa: ARG001
        return pair_relu_vjp(out, dout)

    pair_relu = custom("PairRelu", lambda left, right: [left[0], left[1], left[1], left[2]],
                       bprop=pair_relu_bprop)

    # The latent update for K samples per class: z + rate * (gz + h), gz the class part.
    descend_copies_vjp = custom("DescendCopiesVjp", lambda rate, gz, h, dout: (rate, gz, h), outputs=3)

    def descend_copies_bprop(z, rate, gz, h, out, dout):  # noqa: ARG001
        d_rate, d_gz, d_h = descend_copies_vjp(rate, gz, h, dout)
        return dout, d_rate, d_gz, d_h

    descend_copies = custom("DescendCopies", lambda z, rate, gz, h: z, bprop=descend_copies_bprop)

    # The K latent samples of each class and the one-sample KL estimate per task.
    latent_sample_vjp = custom("LatentSampleVjp", lambda u, eps, z, dz, dkl: (u, u), outputs=2)

    def latent_sample_bprop(mean, u, eps, out, dout):  # noqa: ARG001
        d_mean, d_u = latent_sample_vjp(u, eps, out[0], dout[0], dout[1])
        return d_mean, d_u, zeros(eps)

    latent_sample = custom("LatentSample", lambda mean, u, eps: (eps, eps[:1]), outputs=2,
                           bprop=latent_sample_bprop)

    # The query set's mean cross-entropy and accuracy per task, and the cross-entropy's
    # gradient with respect to w (a third output, summed in the same pass over the queries).
    def query_ce_bprop(x, y, w, out, dout):  # noqa: ARG001
        return zeros(x), zeros(y), dout[0].reshape(-1, 1, 1) * out[2]

    query_ce = custom("QueryCe", lambda x, y, w: (x[:1], x[:1], w), outputs=3, bprop=query_ce_bprop)

    # The decoder's orthogonality penalty with its closed-form gradient as a second output.
    def orthogonality_bprop(w, out, dout):  # noqa: ARG001
        return (dout[0] * out[1],)

    orthogonality = custom("Orthogonality", lambda w: ([], w), outputs=2, bprop=orthogonality_bprop)

    # The encoder penalty per task, its second argument under stop-gradient.
    encoder_penalty_vjp = custom("EncoderPenaltyVjp", lambda z0, z, dout: z0)

    def encoder_penalty_bprop(z0, z, out, dout):  # noqa: ARG001
        return encoder_penalty_vjp(z0, z, dout), zeros(z)

    encoder_penalty = custom("EncoderPenalty", lambda z0, z: z0[:1], bprop=encoder_penalty_bprop)

    # The meta-loss from its terms; `weights` holds (kl, encoder penalty, orthogonality) weights.
    total_vjp = custom("TotalVjp", lambda ce, task_weight, reg_weight, weights, dt: (ce, ce, ce, []),
                       outputs=4)

    def total_bprop(ce, kl, penalty, orth, task_weight, reg_weight, weights, out, dout):  # noqa: ARG001
        d_ce, d_kl, d_penalty, d_orth = total_vjp(ce, task_weight, reg_weight, weights, dout)
        return d_ce, d_kl, d_penalty, d_orth, zeros(task_weight), zeros(reg_weight), zeros(weights)

    total = custom("Total", lambda ce, kl, penalty, orth, task_weight, reg_weight, weights: [],
                   bprop=total_bprop)

    # Inner-loop decodes: the weight sampling, the support gradient at the sampled weights
    # and the chain rule's product in one operator (K = 1; K > 1 with the class mean of
    # the K samples), each gradient likewise in one.
    decode_one_vjp = custom("DecodeOneVjp", lambda x, y, w, dw_du, grad, *cot: cot[-1])

    def decode_one_bprop(o, eps, offset, x, y, out, dout):  # noqa: ARG001
        w, dw_du, grad, _ = out
        d_o = decode_one_vjp(x, y, w, dw_du, grad, *dout)
        return d_o, zeros(eps), zeros(offset), zeros(x), zeros(y)

    def class_weights(y, eps):  # [B, N, D]
        return [y[0], eps[1], eps[3]]

    decode_one = custom("DecodeOne", lambda o, eps, offset, x, y: (class_weights(y, eps), eps,
                                                                  class_weights(y, eps), o),
                        outputs=4, bprop=decode_one_bprop)

    decode_copies_vjp = custom("DecodeCopiesVjp", lambda x, y, w, dw_du, grad, *cot: (w, dw_du), outputs=2)

    def decode_copies_bprop(m, u, eps, offset, x, y, out, dout):  # noqa: ARG001
        w, dw_du, grad, _ = out
        d_m, d_u = decode_copies_vjp(x, y, w, dw_du, grad, *dout)
        return d_m, d_u, zeros(eps), zeros(offset), zeros(x), zeros(y)

    decode_copies = custom("DecodeCopies", lambda m, u, eps, offset, x, y: (m, u, m, u), outputs=4,
                           bprop=decode_copies_bprop)

    # A fine-tuning step merged with the next support gradient.
    finetune_step_vjp = custom("FinetuneStepVjp", lambda rate, g, x, y, w2, d_w2, d_g2: (g, rate, g),
                               outputs=3)

    def finetune_step_bprop(w, rate, g, x, y, out, dout):  # noqa: ARG001
        d_w, d_rate, d_g = finetune_step_vjp(rate, g, x, y, out[0], dout[0], dout[1])
        return d_w, d_rate, d_g, zeros(x), zeros(y)

    finetune_step = custom("FinetuneStep", lambda w, rate, g, x, y: (w, w), outputs=2,
                           bprop=finetune_step_bprop)

    def constants(*values: float):
        return ms.Tensor(list(values), ms.float32)

    # The gradient operators are reached through the forward operators' bprop only.
    return SimpleNamespace(
        class_grad=class_grad, descend=descend, pair_relu=pair_relu, descend_copies=descend_copies,
        latent_sample=latent_sample, query_ce=query_ce, orthogonality=orthogonality,
        encoder_penalty=encoder_penalty, total=total, decode_one=decode_one, decode_copies=decode_copies,
        finetune_step=finetune_step, constants=constants,
    )


if __name__ == "__main__":  # the CPU image's builder stage: python -m leo_core.fused_ops --build-portable OUT
    import argparse

    parser = argparse.ArgumentParser(prog="python -m leo_core.fused_ops")
    parser.add_argument("--build-portable", metavar="OUT", type=Path, required=True,
                        help="compile the library for any CPU of this architecture into OUT")
    build_portable(parser.parse_args().build_portable)
