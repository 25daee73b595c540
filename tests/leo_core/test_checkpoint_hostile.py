"""Hostile or damaged checkpoints (issue 22 items 11, 12): refused with one line naming the
file, before inflating what the headers declare, and never with NaN weights accepted."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from leo_core import checkpoint, ckpt_format
from leo_core.ckpt_format import WeightsFileError, load_weights, save_npz
from leo_core.config import load_experiment
from leo_core.model import init_parameters

CFG = load_experiment("mini_5shot", [])


def bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose one member's header declares `shape` float32, with almost no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("encoder/w.npy", header.getvalue() + b"\0" * 1024)
    return path


def test_an_npz_declaring_4_gib_is_refused_from_its_header(tmp_path):
    path = bomb(tmp_path / "weights.npz", (2**30,))
    with pytest.raises(WeightsFileError, match=r"inflate to more than 2 GiB") as err:
        ckpt_format.read_arrays(path)
    assert str(path) in str(err.value) and "encoder/w" in str(err.value)


def test_the_header_check_counts_every_member(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_format, "MAX_NPZ_BYTES", 2**20)
    np.savez(tmp_path / "w.npz", a=np.zeros(2**18, np.float32), b=np.zeros(2**18, np.float32))
    with pytest.raises(WeightsFileError, match="inflate"):
        ckpt_format.read_arrays(tmp_path / "w.npz")


def test_a_ckpt_larger_than_a_checkpoint_can_be_is_refused_before_mindspore_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "leo.ckpt"
    with path.open("wb") as sparse:  # 2 GiB + 1 byte, no disk blocks
        sparse.truncate(ckpt_format.MAX_NPZ_BYTES + 1)

    def never(*_args, **_kwargs):
        raise AssertionError("MindSpore was asked to read it")

    import mindspore as ms

    monkeypatch.setattr(ms, "load_checkpoint", never)
    with pytest.raises(WeightsFileError, match=r"2\.0 GiB, more than a LEO checkpoint holds \(2 GiB\)") as err:
        ckpt_format.read_arrays(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, bad):
    params = init_parameters(CFG, 0)
    params["decoder/w"][3, 5] = bad
    save_npz(tmp_path / "w.npz", params)
    with pytest.raises(WeightsFileError, match="decoder/w holds NaN or infinite values") as err:
        load_weights(tmp_path / "w.npz", CFG.num_latents)
    assert "\n" not in str(err.value) and str(tmp_path / "w.npz") in str(err.value)


def saved(tmp_path: Path) -> Path:
    """A complete step-3 checkpoint of real-shaped parameters (no training needed)."""
    params = init_parameters(CFG, 0)
    optimizer = {"t": np.array(3, np.int64), **{f"m/{k}": np.zeros_like(v) for k, v in params.items()},
                 **{f"v/{k}": np.zeros_like(v) for k, v in params.items()}}
    rng = np.random.default_rng(0).bit_generator.state
    return checkpoint.save(tmp_path / "out", 3, params, optimizer, {"train_rng": rng})


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_state(step_dir: Path, **changes) -> None:
    state = json.loads((step_dir / "state.json").read_text())
    state.update(changes)
    state = {k: v for k, v in state.items() if v is not None}
    (step_dir / "state.json").write_text(json.dumps(state))


DAMAGE = {
    "truncated weights": (lambda d: truncate(d / "weights.npz"), "weights.npz"),
    "truncated optimizer": (lambda d: truncate(d / "optimizer.npz"), "optimizer.npz"),
    "no step": (lambda d: set_state(d, step=None), "state.json"),
    "step of a wrong type": (lambda d: set_state(d, step="three"), "state.json"),
    "NaN optimizer moment": (lambda d: np.savez(d / "optimizer.npz", t=np.array(3),
                                                **{"m/decoder/w": np.array([np.nan])}),
                             "optimizer.npz"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    step_dir = saved(tmp_path)
    spoil, file = DAMAGE[damage]
    spoil(step_dir)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(tmp_path / "out")
    assert "\n" not in str(err.value) and str(step_dir / file) in str(err.value), str(err.value)


def test_an_intact_checkpoint_loads(tmp_path):
    step_dir = saved(tmp_path)
    ckpt = checkpoint.load(tmp_path / "out")
    assert ckpt.step == 3 and ckpt.path == step_dir and int(ckpt.optimizer["t"]) == 3
