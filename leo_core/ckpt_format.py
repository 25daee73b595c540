"""LEO weights as MindSpore `.ckpt` or NumPy `.npz` files, in this project's parameter
names or in those of the MindSpore ModelZoo LEO port.

Every checkpoint step directory holds the weights twice: `weights.npz` (read for exact
resume, with `optimizer.npz` and `state.json`) and `leo.ckpt`, the same float32 arrays
written by `mindspore.save_checkpoint` under this project's names, so
`mindspore.load_checkpoint` opens it.

`load_weights` reads initial weights (`leo_core.train --init`) and weights to evaluate
(`leo_core.evaluate --checkpoint`) from a `.ckpt` or `.npz` file, a checkpoint step
directory, a training output directory or a `latest.json`/`best.json` pointer, in either
naming; `convert` (CLI: `python -m leo_core.checkpoint convert IN OUT [--names
modelzoo|leo]`) writes them in either naming (by default the port's for a `.ckpt`, this
project's for an `.npz`), so a checkpoint trained here opens in the port.

Names and layouts (D = 640 embedding size, L = num_latents). This project keeps Sonnet's
`[in, out]` linear weights; the port's `nn.Dense` layers store `[out, in]`. Its names are
those its `train.py` saves (`save_checkpoint(OuterLoop)`, cell attribute `leo`) and its
`resource/convert.py` writes into `leo_ms_init.ckpt`; the same names without the `leo.`
prefix (the port's `LEO` cell saved on its own) are accepted too.

    ModelZoo port                              shape       this project     shape
    leo.encoder.encoder.weight                 [L, D]      encoder/w        [D, L]  (transposed)
    leo.encoder.relation_network.0.weight      [2L, 2L]    relation/w_0     [2L, 2L] (transposed)
    leo.encoder.relation_network.2.weight      [2L, 2L]    relation/w_1     [2L, 2L] (transposed)
    leo.encoder.relation_network.4.weight      [2L, 2L]    relation/w_2     [2L, 2L] (transposed)
    leo.decoder.decoder.weight                 [2D, L]     decoder/w        [L, 2D] (transposed)
    leo.inner_lr                               [1]         inner_lr         [L]     (broadcast)
    leo.finetuning_lr                          [1]         finetuning_lr    [D]     (broadcast)

Only names and layouts are mapped. The port deviates from the original LEO (a ReLU after
the relation network's last layer, `mean + raw·ε` sampling, scalar learning rates, no
prediction dropout, ...; see the design notes): a port-trained checkpoint's weights are
loaded as they are into this faithful model, which then computes the original's function
of them, not the port's. In the other direction the port has one scalar per learning rate:
`to_modelzoo` writes the mean of each per-dimension vector and says so (exact only while
all entries are equal, e.g. for an initialisation).

Every problem with a file (unreadable, unknown format, both namings in one file, two
names for one parameter, a missing, unexpected or mis-shaped parameter) raises
`WeightsFileError`, a `CheckpointError` whose one-line message names the file and the
parameter; the command-line tools turn it into `error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leo_core.checkpoint_paths import CheckpointError, resolve
from leo_core.model import EMBEDDING_DIM, PARAM_NAMES, PARAM_SHAPES

CKPT_NAME = "leo.ckpt"  # the MindSpore checkpoint in every step directory
NPZ_NAME = "weights.npz"
NAMINGS = ("leo", "modelzoo")
PORT_PREFIX = "leo."

# The port's name (without the `leo.` prefix) -> (this project's name, how the layout maps).
PORT_NAMES = {
    "encoder.encoder.weight": ("encoder/w", "transpose"),
    "encoder.relation_network.0.weight": ("relation/w_0", "transpose"),
    "encoder.relation_network.2.weight": ("relation/w_1", "transpose"),
    "encoder.relation_network.4.weight": ("relation/w_2", "transpose"),
    "decoder.decoder.weight": ("decoder/w", "transpose"),
    "inner_lr": ("inner_lr", "scalar"),
    "finetuning_lr": ("finetuning_lr", "scalar"),
}
OURS_TO_PORT = {ours: PORT_PREFIX + port for port, (ours, _) in PORT_NAMES.items()}
# Names both namings use (the port's learning rates without the prefix): the others decide.
_SHARED = set(PORT_NAMES) & set(PARAM_NAMES)


class WeightsFileError(CheckpointError):
    """A weights file that cannot be read or mapped; the message is one line."""


@dataclass
class Weights:
    params: dict[str, np.ndarray]  # this project's names and layouts, float32
    naming: str  # "leo" or "modelzoo": the names the file used
    path: Path  # the file read
    step: int | None  # from state.json next to the file, when there is one
    state: dict = field(default_factory=dict)  # that state.json ({} without one)


# ---------------------------------------------------------------- reading


# A checkpoint of the largest configuration (num_latents 4096) holds well under this; the
# .npy headers are checked against it before any array is inflated (a 4.8 MB zip can
# declare a 4 GiB array), and a .ckpt's size before MindSpore reads it whole into memory.
MAX_NPZ_BYTES = 2 * 2**30


def read_npz(path: str | Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The numeric arrays of an .npz file, refusing (WeightsFileError) before inflating
    anything when its headers declare more than `max_bytes` or a non-numeric dtype."""
    import zipfile

    path, max_bytes = Path(path), max_bytes or MAX_NPZ_BYTES
    try:
        with zipfile.ZipFile(path) as archive:
            total = 0
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise WeightsFileError(f"{path}: {info.filename} has dtype {dtype}, not a "
                                           "numeric array")
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if total > max_bytes:
                    raise WeightsFileError(
                        f"{path}: {info.filename} declares shape {_shape(shape)}: the file would "
                        f"inflate to more than {max_bytes // 2**30} GiB (not a checkpoint)")
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except WeightsFileError:
        raise
    except Exception as err:  # noqa: BLE001 - zip, zlib and npy errors differ by version
        reason = " ".join(str(err).split()) or type(err).__name__
        raise WeightsFileError(f"{path}: not a readable .npz file: {reason}") from None


def check_finite(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """WeightsFileError naming the first array holding NaN or infinite values."""
    for name, value in arrays.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
            raise WeightsFileError(f"{path}: {name} holds NaN or infinite values")


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The named arrays of a `.ckpt` or `.npz` file, as stored."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"no weights file at {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            return read_npz(path)
        if suffix == ".ckpt":
            size = path.stat().st_size
            if size > MAX_NPZ_BYTES:  # MindSpore parses the whole protobuf in memory
                raise WeightsFileError(f"{path}: {size / 2**30:.1f} GiB, more than a LEO "
                                       f"checkpoint holds ({MAX_NPZ_BYTES // 2**30} GiB): not read")
            import mindspore as ms

            return {name: value.asnumpy() for name, value in ms.load_checkpoint(str(path)).items()}
    except WeightsFileError:
        raise
    except Exception as err:  # noqa: BLE001 - zip, pickle and protobuf errors differ by version
        reason = " ".join(str(err).split()) or type(err).__name__
        if suffix == ".ckpt" and "empty" in reason:  # MindSpore's word for unparsable bytes
            reason = "no parameters could be read (corrupt, or not a MindSpore checkpoint)"
        raise WeightsFileError(f"{path}: not a readable {suffix} file: {reason}") from None
    raise WeightsFileError(
        f"{path}: unknown weights format {suffix or '(no suffix)'}: expected a .ckpt or .npz file, "
        "a checkpoint step directory, a training output directory or a latest.json/best.json pointer")


def map_names(arrays: dict[str, np.ndarray], path: str | Path, dim: int = EMBEDDING_DIM,
              num_latents: int | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Arrays named in either naming -> (this project's parameters, the naming found).

    `num_latents` None takes L from the encoder weight (then only consistency is checked).
    """
    arrays = dict(arrays)
    if "step" in arrays and np.ndim(arrays["step"]) == 0:
        arrays.pop("step")  # written by the LEO_DUMP_PARAMS_DIR hook
    naming = _naming(arrays, path)
    sources: dict[str, str] = {}  # our name -> the file's name
    unexpected = []
    for name in arrays:
        if naming == "leo":
            target = name if name in PARAM_NAMES else None
        else:
            relative = name[len(PORT_PREFIX):] if name.startswith(PORT_PREFIX) else name
            target = PORT_NAMES[relative][0] if relative in PORT_NAMES else None
        if target is None:
            unexpected.append(name)
        elif target in sources:
            raise WeightsFileError(
                f"{path}: parameters {sources[target]} and {name} both name {target}")
        else:
            sources[target] = name
    label = "this project's" if naming == "leo" else "the ModelZoo port's"
    if unexpected:
        raise WeightsFileError(
            f"{path}: unexpected parameter {sorted(unexpected)[0]} among {label} LEO names"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    missing = [name for name in PARAM_NAMES if name not in sources]
    if missing:
        want = missing[0] if naming == "leo" else OURS_TO_PORT[missing[0]]
        raise WeightsFileError(f"{path}: parameter {want} is missing ({label} LEO names)")
    if num_latents is None:
        num_latents = _latents_from(arrays[sources["encoder/w"]], naming, path, sources["encoder/w"])
    params = {}
    for name in PARAM_NAMES:
        source = sources[name]
        value = arrays[source]
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsFileError(f"{path}: parameter {source} has dtype {value.dtype}, expected float")
        want = PARAM_SHAPES[name](dim, num_latents)
        if naming == "modelzoo" and len(want) == 2:
            if value.shape != want[::-1]:
                raise WeightsFileError(
                    f"{path}: parameter {source} has shape {_shape(value.shape)}, expected "
                    f"{_shape(want[::-1])} (the port's [out, in] layout of {name}, D={dim}, L={num_latents})")
            value = value.T
        elif naming == "modelzoo" and value.size == 1 and value.ndim <= 1:
            value = np.full(want, value.reshape(()), np.float32)  # the port's scalar rate
        elif value.shape != want:
            raise WeightsFileError(
                f"{path}: parameter {source} has shape {_shape(value.shape)}, expected {_shape(want)}"
                f" (D={dim}, L={num_latents})")
        params[name] = np.ascontiguousarray(value, dtype=np.float32)
    return params, naming


def _naming(arrays: dict[str, np.ndarray], path) -> str:
    ours = sorted(set(arrays) & (set(PARAM_NAMES) - _SHARED))
    port = sorted(name for name in arrays
                  if (name[len(PORT_PREFIX):] if name.startswith(PORT_PREFIX) else name) in PORT_NAMES
                  and name not in _SHARED)
    if ours and port:
        raise WeightsFileError(
            f"{path}: mixes this project's parameter names ({ours[0]}) with the ModelZoo port's ({port[0]})")
    if ours:
        return "leo"
    if port:
        return "modelzoo"
    found = ", ".join(sorted(arrays)[:4]) + (", ..." if len(arrays) > 4 else "") or "none"
    raise WeightsFileError(
        f"{path}: not LEO weights of this project or of the ModelZoo port (parameters: {found})")


def _latents_from(value: np.ndarray, naming: str, path, source: str) -> int:
    if value.ndim != 2:
        raise WeightsFileError(f"{path}: parameter {source} has shape {_shape(value.shape)}, expected 2-D")
    return int(value.shape[1] if naming == "leo" else value.shape[0])


def _shape(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def weights_file(path: str | Path, which: str = "latest") -> Path:
    """The file to read for `path`: itself when it is a file (not a pointer), else the
    step directory's `weights.npz`, or its `leo.ckpt` when only that was fetched."""
    path = Path(path)
    if not path.exists():
        raise WeightsFileError(f"no checkpoint or weights file at {path}")
    if path.is_file() and path.suffix != ".json":
        return path
    step_dir = resolve(path, which)
    return step_dir / NPZ_NAME if (step_dir / NPZ_NAME).exists() else step_dir / CKPT_NAME


def load_weights(path: str | Path, num_latents: int | None = None, which: str = "latest",
                 dim: int = EMBEDDING_DIM) -> Weights:
    """This project's parameters from any accepted file, directory or pointer (see module doc).

    `which` chooses the pointer followed in a training output directory; a file ignores it.
    """
    file = weights_file(path, which)
    params, naming = map_names(read_arrays(file), file, dim, num_latents)
    check_finite(params, file)
    state = _state_next_to(file)
    step = state.get("step")
    return Weights(params, naming, file, step if isinstance(step, int) else None, state)


def _state_next_to(file: Path) -> dict:
    try:
        state = json.loads((file.parent / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


# ---------------------------------------------------------------- writing


def to_modelzoo(params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """This project's parameters in the port's names and layouts, and notes on what is lossy
    (per-dimension learning rates become their mean: the port has one scalar each)."""
    out, notes = {}, []
    for name in PARAM_NAMES:
        value = np.asarray(params[name], np.float32)
        if value.ndim == 2:
            out[OURS_TO_PORT[name]] = np.ascontiguousarray(value.T)
        else:
            mean = np.float32(value.mean(dtype=np.float64))
            if not np.all(value == value.flat[0]):
                notes.append(f"{name}: {value.size} trained per-dimension rates written as their mean "
                             f"{float(mean):.6g} (the ModelZoo port has one scalar {OURS_TO_PORT[name]})")
            out[OURS_TO_PORT[name]] = np.array([mean], np.float32)
    return out, notes


def named_arrays(params: dict[str, np.ndarray], names: str = "leo") -> tuple[dict[str, np.ndarray], list[str]]:
    if names not in NAMINGS:
        raise ValueError(f"names must be one of {', '.join(NAMINGS)}, not {names!r}")
    if names == "modelzoo":
        return to_modelzoo(params)
    return {name: np.asarray(params[name], np.float32) for name in PARAM_NAMES}, []


def save_ckpt(path: str | Path, params: dict[str, np.ndarray], names: str = "leo") -> list[str]:
    """Write `params` (this project's) with `mindspore.save_checkpoint`; returns the notes
    of `to_modelzoo` when `names` is "modelzoo"."""
    import mindspore as ms

    arrays, notes = named_arrays(params, names)
    path = Path(path)
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in arrays.items()], str(path))
    os.chmod(path, 0o644)  # MindSpore leaves it read-only; the other checkpoint files are not
    return notes


def save_npz(path: str | Path, params: dict[str, np.ndarray], names: str = "leo") -> list[str]:
    arrays, notes = named_arrays(params, names)
    np.savez(path, **arrays)
    return notes


# The naming an output gets unless --names says otherwise: the port reads .ckpt files,
# and .npz is this project's own format.
DEFAULT_NAMES = {".ckpt": "modelzoo", ".npz": "leo"}


def convert(src: str | Path, dst: str | Path, names: str | None = None, which: str = "best",
            num_latents: int | None = None) -> tuple[Weights, list[str]]:
    """Read `src` (any accepted file or directory, either naming) and write `dst` (.ckpt or
    .npz by its suffix) in `names` (default: the port's for .ckpt, this project's for .npz).
    Returns what was read and notes on lossy steps."""
    dst = Path(dst)
    writer = {".ckpt": save_ckpt, ".npz": save_npz}.get(dst.suffix.lower())
    if writer is None:
        raise WeightsFileError(f"{dst}: the output must end in .ckpt or .npz")
    names = names or DEFAULT_NAMES[dst.suffix.lower()]
    if names not in NAMINGS:
        raise WeightsFileError(f"names must be one of {', '.join(NAMINGS)}, not {names!r}")
    weights = load_weights(src, num_latents, which)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return weights, writer(dst, weights.params, names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leo_core.checkpoint",
        description="Convert LEO weights between .ckpt/.npz and this project's/the ModelZoo port's names.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="write IN's weights to OUT (.ckpt or .npz) in the chosen naming")
    conv.add_argument("src", metavar="IN", help=".ckpt/.npz file, step directory, output directory or pointer")
    conv.add_argument("dst", metavar="OUT", type=Path, help="file to write, ending in .ckpt or .npz")
    conv.add_argument("--names", choices=NAMINGS, default=None,
                      help="parameter names and layouts to write (default: modelzoo for .ckpt, "
                           "leo for .npz)")
    conv.add_argument("--which", choices=("best", "latest"), default="best",
                      help="pointer to follow when IN is a training output directory (default best)")
    args = parser.parse_args(argv)
    try:
        weights, notes = convert(args.src, args.dst, args.names, args.which)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    names = args.names or DEFAULT_NAMES[args.dst.suffix.lower()]
    print(f"wrote {args.dst} ({names} names) from {weights.path} ({weights.naming} names"
          + (f", step {weights.step}" if weights.step is not None else "") + ")")
    return 0
