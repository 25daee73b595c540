"""Property-based tests (Hypothesis) of the CLI on hostile values (issue 12): `render`
exits 0, or 2 with one line on stderr and nothing on stdout; never a traceback."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from launcher.cli import main as cli
from tests.launcher.properties import SETTINGS, hostile_text

FLAGS = ["--data-url", "--train-url", "--storage-endpoint", "--name", "--set", "--toleration",
         "--node-selector", "--cards", "--nodes", "--steps", "--max-restarts", "--cpu", "--memory",
         "--image", "--queue", "--priority-class", "--cluster-timeout", "--master-port", "--profile-steps"]
numbers = st.sampled_from(["0", "1", "-1", "99999999999999999999999", "1e3", "", "two", " 2"])


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(FLAGS), hostile_text | numbers), min_size=1, max_size=3))
def test_render_answers_exit_0_or_exit_2_with_one_line(capsys, flags):
    args = ["render", "--exp", "mini_5shot", "--accel", "cpu", "--cards", "1"]
    for flag, value in flags:
        args.append(f"{flag}={value}")
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code in (0, 2), err
    if code == 2:
        assert out == "" and len(err.strip().splitlines()) == 1, err
