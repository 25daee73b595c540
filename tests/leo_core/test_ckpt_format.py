"""MindSpore .ckpt checkpoints and the ModelZoo port's parameter names (leo_core.ckpt_format)."""

import json
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from leo_core import ckpt_format
from leo_core.ckpt_format import WeightsFileError, load_weights, map_names, to_modelzoo
from leo_core.config import load_experiment
from leo_core.model import PARAM_NAMES, init_parameters
from leo_core.synthetic import write_dataset

CFG = load_experiment("mini_5shot", [])
L, D = CFG.num_latents, 640


def trained_like(seed=3):
    """Parameters with per-dimension learning rates that are no longer all equal."""
    params = init_parameters(CFG, seed)
    rng = np.random.default_rng(seed)
    params["inner_lr"] = (1.0 + 0.1 * rng.standard_normal(L)).astype(np.float32)
    params["finetuning_lr"] = (1e-3 + 1e-4 * rng.standard_normal(D)).astype(np.float32)
    return params


def write_port_ckpt(path, params, prefix="leo.", **overrides):
    """A .ckpt as the port's train.py / resource/convert.py write it: its names, nn.Dense's
    [out, in] layout, scalar learning rates. Written here by hand, not by ckpt_format."""
    port = {
        f"{prefix}encoder.encoder.weight": params["encoder/w"].T,  # [L, D]
        f"{prefix}encoder.relation_network.0.weight": params["relation/w_0"].T,
        f"{prefix}encoder.relation_network.2.weight": params["relation/w_1"].T,
        f"{prefix}encoder.relation_network.4.weight": params["relation/w_2"].T,
        f"{prefix}decoder.decoder.weight": params["decoder/w"].T,  # [2D, L]
        f"{prefix}inner_lr": np.array([params["inner_lr"][0]], np.float32),
        f"{prefix}finetuning_lr": np.array([params["finetuning_lr"][0]], np.float32),
    }
    port.update(overrides)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(np.ascontiguousarray(v))} for k, v in port.items()
                        if v is not None], str(path))
    return path


# ---------------------------------------------------------------- the name mapping


@pytest.mark.parametrize("prefix", ["leo.", ""])  # saved from the port's OuterLoop / its LEO cell
def test_port_ckpt_loads_to_the_same_weights(tmp_path, prefix):
    params = init_parameters(CFG, 7)  # an initialisation: scalar rates are exact
    path = write_port_ckpt(tmp_path / "leo_ms_init.ckpt", params, prefix)
    shapes = {k: tuple(v.shape) for k, v in ms.load_checkpoint(str(path)).items()}
    assert shapes[f"{prefix}encoder.encoder.weight"] == (L, D)
    assert shapes[f"{prefix}decoder.decoder.weight"] == (2 * D, L)
    assert shapes[f"{prefix}inner_lr"] == (1,)
    weights = load_weights(path, CFG.num_latents)
    assert weights.naming == "modelzoo" and weights.step is None
    for name in PARAM_NAMES:
        assert weights.params[name].dtype == np.float32
        np.testing.assert_array_equal(weights.params[name], params[name], err_msg=name)


def test_written_in_port_names_reads_back(tmp_path):
    params = trained_like()
    notes = ckpt_format.save_ckpt(tmp_path / "port.ckpt", params, "modelzoo")
    stored = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(tmp_path / "port.ckpt")).items()}
    assert set(stored) == set(ckpt_format.OURS_TO_PORT.values())
    np.testing.assert_array_equal(stored["leo.encoder.encoder.weight"], params["encoder/w"].T)
    np.testing.assert_array_equal(stored["leo.decoder.decoder.weight"], params["decoder/w"].T)
    # Trained per-dimension rates: the port has one scalar, the mean, and we say so.
    assert stored["leo.inner_lr"].shape == (1,) and len(notes) == 2 and "mean" in notes[0]
    np.testing.assert_allclose(stored["leo.inner_lr"][0], params["inner_lr"].mean(), rtol=1e-6)
    back = load_weights(tmp_path / "port.ckpt", CFG.num_latents).params
    for name in PARAM_NAMES[:5]:
        np.testing.assert_array_equal(back[name], params[name], err_msg=name)
    assert np.all(back["inner_lr"] == stored["leo.inner_lr"][0])
    # An initialisation converts without loss or notes.
    assert to_modelzoo(init_parameters(CFG, 1))[1] == []


@pytest.mark.parametrize("suffix", [".ckpt", ".npz"])
def test_our_names_in_either_format(tmp_path, suffix):
    params = trained_like(5)
    path = tmp_path / f"w{suffix}"
    (ckpt_format.save_ckpt if suffix == ".ckpt" else ckpt_format.save_npz)(path, params)
    weights = load_weights(path, CFG.num_latents)
    assert weights.naming == "leo"
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(weights.params[name], params[name], err_msg=name)


def test_convert_names_default_by_extension(tmp_path):
    """`convert IN OUT.npz` writes this project's names, `OUT.ckpt` the port's (issue 29)."""
    src = tmp_path / "in.npz"
    ckpt_format.save_npz(src, trained_like(6))
    ckpt_format.convert(src, tmp_path / "out.npz")
    ckpt_format.convert(src, tmp_path / "out.ckpt")
    assert load_weights(tmp_path / "out.npz", CFG.num_latents).naming == "leo"
    assert load_weights(tmp_path / "out.ckpt", CFG.num_latents).naming == "modelzoo"
    ckpt_format.convert(src, tmp_path / "port.npz", names="modelzoo")  # an explicit choice wins
    assert load_weights(tmp_path / "port.npz", CFG.num_latents).naming == "modelzoo"


# ---------------------------------------------------------------- bad files


def port_arrays(**changes):
    arrays = to_modelzoo(init_parameters(CFG, 2))[0]
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("arrays, words", [
    (port_arrays(**{"leo.encoder.relation_network.2.weight": None}),
     ["leo.encoder.relation_network.2.weight", "missing"]),
    (port_arrays(**{"leo.encoder.extra.weight": np.zeros(3, np.float32)}), ["unexpected", "leo.encoder.extra.weight"]),
    # The port's Dense layers with this project's [in, out] layout.
    (port_arrays(**{"leo.encoder.encoder.weight": np.zeros((D, L), np.float32)}),
     ["leo.encoder.encoder.weight", "[640, 64]", "expected [64, 640]"]),
    # The paper's 1-D regression model (hidden 40, latents 16, output 2x1761) does not map.
    (port_arrays(**{"leo.decoder.decoder.weight": np.zeros((2 * 1761, 16), np.float32)}),
     ["leo.decoder.decoder.weight", "[3522, 16]"]),
    ({**port_arrays(), "encoder/w": np.zeros((D, L), np.float32)}, ["mixes", "encoder/w"]),
    ({**port_arrays(), "inner_lr": np.ones(1, np.float32)}, ["leo.inner_lr", "inner_lr", "both name"]),
    ({"fc.weight": np.zeros((2, 2), np.float32)}, ["not LEO weights", "fc.weight"]),
    ({**init_parameters(CFG, 0), "decoder/w": np.zeros((2 * D, L), np.float32)}, ["decoder/w", "[1280, 64]"]),
    ({**init_parameters(CFG, 0), "finetuning_lr": np.zeros(1, np.float32)}, ["finetuning_lr", "[1]"]),
    ({**init_parameters(CFG, 0), "encoder/w": np.zeros((D, L), np.int32)}, ["encoder/w", "dtype"]),
])
def test_bad_parameters_name_file_and_parameter(tmp_path, arrays, words):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(WeightsFileError) as err:
        load_weights(path, CFG.num_latents)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


def test_unreadable_or_unknown_files(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    (tmp_path / "model.pth").write_bytes(b"torch")
    for name, words in [("garbage.ckpt", "not a readable .ckpt"), ("garbage.npz", "not a readable .npz"),
                        ("model.pth", "unknown weights format .pth"), ("absent.ckpt", "no checkpoint")]:
        with pytest.raises(WeightsFileError, match=words):
            load_weights(tmp_path / name, CFG.num_latents)
    with pytest.raises(WeightsFileError, match="must end in .ckpt or .npz"):
        ckpt_format.convert(tmp_path / "garbage.ckpt", tmp_path / "out.pth")


def test_map_names_infers_latents_without_a_config():
    small = load_experiment("mini_5shot", ["num_latents=8"])
    params, naming = map_names(to_modelzoo(init_parameters(small, 0))[0], "x.ckpt")
    assert naming == "modelzoo" and params["encoder/w"].shape == (D, 8) and params["inner_lr"].shape == (8,)


# ---------------------------------------------------------------- as users run it

TINY = ["--set", "total_examples_per_class=20", "--set", "num_validation_batches=1",
        "--set", "metavalid_batch_size=4", "--set", "checkpoint_steps=3"]


def run(module, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    return root


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "out"
    run("leo_core.train", "--experiment", "mini_5shot", "--data-root", tiny_root, "--out", out,
        "--steps", 3, "--log-every", 1, *TINY)
    return out


def evaluate(root, checkpoint, result, *extra, check=True):
    proc = run("leo_core.evaluate", "--experiment", "mini_5shot", "--data-root", root,
               "--checkpoint", checkpoint, "--tasks", 24, "--json", result,
               "--set", "total_examples_per_class=20", *extra, check=check)
    return proc if not check else json.loads(result.read_text())


@pytest.mark.integration
def test_ckpt_round_trip_gives_the_same_accuracy(tiny_root, trained, tmp_path):
    step_dir = trained / "checkpoints/step-3"
    assert (step_dir / "leo.ckpt").is_file()
    # What a MindSpore user does: load_checkpoint the published file.
    loaded = ms.load_checkpoint(str(step_dir / "leo.ckpt"))
    with np.load(step_dir / "weights.npz") as npz:
        assert set(loaded) == set(npz.files) == set(PARAM_NAMES)
        for name in npz.files:
            np.testing.assert_array_equal(loaded[name].asnumpy(), npz[name], err_msg=name)
    alone = tmp_path / "alone" / "leo.ckpt"  # outside its step directory: no state.json
    alone.parent.mkdir()
    shutil.copy(step_dir / "leo.ckpt", alone)
    # the step directory itself: with validation at step 0, `best` may be the untrained model
    from_npz = evaluate(tiny_root, step_dir, tmp_path / "npz.json")
    from_ckpt = evaluate(tiny_root, alone, tmp_path / "ckpt.json")
    assert from_npz["step"] == 3 and from_ckpt["step"] is None
    assert from_ckpt["accuracy"] == from_npz["accuracy"] and from_ckpt["loss"] == from_npz["loss"]
    assert from_npz["checkpoint"].endswith("weights.npz") and from_ckpt["checkpoint"] == str(alone)


@pytest.mark.integration
def test_convert_cli_and_port_names_evaluate_alike(tiny_root, trained, tmp_path):
    port = tmp_path / "port.ckpt"
    proc = run("leo_core.checkpoint", "convert", trained / "checkpoints/step-3", port, "--names", "modelzoo")
    assert "wrote" in proc.stdout and "note: inner_lr" in proc.stderr  # trained rates -> their mean
    assert "leo.encoder.encoder.weight" in ms.load_checkpoint(str(port))
    back = tmp_path / "back.npz"
    run("leo_core.checkpoint", "convert", port, back, "--names", "leo")
    # The mapped weights evaluate exactly as the same weights written in our names.
    from_port = evaluate(tiny_root, port, tmp_path / "port.json")
    from_back = evaluate(tiny_root, back, tmp_path / "back.json")
    assert from_port["accuracy"] == from_back["accuracy"]
    bad = run("leo_core.checkpoint", "convert", tmp_path / "absent.ckpt", back, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no checkpoint")


@pytest.mark.integration
def test_train_init_from_a_port_ckpt(tiny_root, tmp_path):
    init = init_parameters(CFG, 11)
    path = write_port_ckpt(tmp_path / "leo_ms_init.ckpt", init)
    out = tmp_path / "out"
    # One step at a vanishing learning rate: the checkpoint holds the initial weights.
    proc = run("leo_core.train", "--experiment", "mini_5shot", "--data-root", tiny_root, "--out", out,
               "--steps", 1, "--init", path, *TINY, "--set", "outer_lr=1e-30")
    assert "initial weights from" in proc.stdout and "modelzoo names" in proc.stdout
    with np.load(out / "checkpoints/step-1/weights.npz") as saved:
        for name in PARAM_NAMES:
            np.testing.assert_array_equal(saved[name], init[name], err_msg=name)


@pytest.mark.integration
@pytest.mark.parametrize("module", ["leo_core.train", "leo_core.evaluate"])
def test_bad_weights_file_is_one_line_and_exit_2(tiny_root, tmp_path, module):
    path = write_port_ckpt(tmp_path / "regression.ckpt", init_parameters(CFG, 0),
                           **{"leo.decoder.decoder.weight": np.zeros((2 * 1761, 16), np.float32)})
    if module == "leo_core.train":
        proc = run(module, "--experiment", "mini_5shot", "--data-root", tiny_root, "--out", tmp_path / "out",
                   "--steps", 1, "--init", path, *TINY, check=False)
    else:
        proc = evaluate(tiny_root, path, tmp_path / "r.json", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "regression.ckpt" in errors[0] and "leo.decoder.decoder.weight" in errors[0]
    assert "Traceback" not in proc.stderr
