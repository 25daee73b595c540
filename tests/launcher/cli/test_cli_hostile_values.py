"""Values a hostile or careless user types (issue 22 items 5, 6 and the low list): render and
submit --dry-run accept valid quantities and refuse unbounded experiment values with one
line and exit 2; leo_core.train refuses the same values."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.launcher.render_helpers import run_cli

BASE = ["--exp", "mini_5shot", "--accel", "ascend", "--cards", "8"]


@pytest.mark.parametrize("flag", ["--memory", "--shm-size", "--cpu"])
@pytest.mark.parametrize("value", ["1Ei", "2Ei"])
def test_exa_binary_quantities_are_quantities(capsys, flag, value):
    code, out, err = run_cli(capsys, ["render", *BASE, flag, value])
    assert "ConversionSyntax" not in err
    if code == 0:
        assert value in out
    else:  # too large for the node is fine, but said as bad input in one line
        assert code == 2 and len(err.splitlines()) == 1, err


BOUNDED = [
    ("metatrain_batch_size=99999999999999999999", "metatrain_batch_size must be at most"),
    ("num_latents=100000", "num_latents must be at most"),
    ("num_steps_limit=10000000000", "num_steps_limit must be at most"),
    ("outer_lr=1e9", "outer_lr must be at most"),
    ("kl_weight=1e300", "kl_weight must be at most"),
]


@pytest.mark.parametrize("command", ["render", "submit --dry-run"])
@pytest.mark.parametrize(("override", "message"), BOUNDED)
def test_unbounded_experiment_values_are_refused_at_submit(tmp_path, capsys, command, override,
                                                           message):
    code, out, err = run_cli(capsys, [*command.split(), *BASE, "--set", override,
                                      "--out-dir", str(tmp_path / "out")])
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "message"), BOUNDED[:2])
def test_train_refuses_the_same_values(tmp_path, override, message):
    proc = subprocess.run([sys.executable, "-m", "leo_core.train", "--experiment", "mini_5shot",
                           "--set", override, "--data-root", str(tmp_path),
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_set_name_does_not_suggest_name(capsys):
    code, _, err = run_cli(capsys, ["render", *BASE, "--set", "name=evil"])
    assert code == 2 and "did you mean name" not in err and "--experiment" in err, err


def test_conflicting_node_selectors_are_refused(capsys):
    code, _, err = run_cli(capsys, ["render", *BASE, "--node-selector", "a=b",
                                    "--node-selector", "a=c"])
    assert code == 2 and "a=b" in err and "a=c" in err and len(err.splitlines()) == 1, err
    code, out, _ = run_cli(capsys, ["render", *BASE, "--node-selector", "a=b",
                                    "--node-selector", "a=b"])
    assert code == 0
    pod = list(yaml.safe_load_all(out))[-1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["a"] == "b"
