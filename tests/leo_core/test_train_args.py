"""`python -m leo_core.train`'s arguments, parsed without training."""

import pytest

from leo_core import profiling
from leo_core.train import parse_args

BASE = ["--experiment", "mini_5shot", "--data-root", "/nowhere", "--out", "/nowhere/out"]


def test_profile_steps_default_and_bounds():
    assert parse_args(BASE).profile_steps == profiling.DEFAULT_STEPS == 5
    assert parse_args([*BASE, "--profile-steps", "1"]).profile_steps == 1
    assert parse_args([*BASE, "--profile-steps", "100"]).profile_steps == profiling.MAX_STEPS == 100


@pytest.mark.parametrize("value, message", [
    ("0", "error: --profile-steps must be at least 1, got 0\n"),
    ("-3", "error: --profile-steps must be at least 1, got -3\n"),
    ("101", "error: --profile-steps must be at most 100, got 101\n"),
])
def test_profile_steps_out_of_bounds_is_one_line_and_exit_2(capsys, value, message):
    with pytest.raises(SystemExit) as done:
        parse_args([*BASE, "--profile", "/nowhere/profile", "--profile-steps", value])
    assert done.value.code == 2
    assert capsys.readouterr().err == message
