"""`leo-launch sweep` end to end on the local backend with SeaweedFS: 2 experiments × 2
seeds of 4 steps each (one CPU worker per trial), the CLI killed between trials,
`sweep resume` submitting what is missing, the summary table, and the report read from
the published record by another machine (another state folder)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from launcher.backends import localjob, sweeps
from tests.launcher.backends.test_local import TINY, e2e, leo  # noqa: F401 - e2e is a fixture

NAME = "e2e-sweep"


def record(env):
    path = sweeps.record_path(NAME, env)
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.e2e
def test_a_sweep_survives_the_cli_killed_between_trials_and_prints_the_summary(e2e, tmp_path):  # noqa: F811
    env = e2e["env"]
    cli = subprocess.Popen(
        [sys.executable, "-m", "launcher", "sweep", "--backend", "local", "--exp", "mini_1shot,mini_5shot",
         "--seeds", "2", "--accel", "cpu", "--cards", "1", "--steps", "4", *TINY, "--name", NAME,
         "--parallel", "2", "--data-url", "s3://leo-e2e-data/tiny", "--train-url", "s3://leo-e2e-runs/sweeps"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (record(env) or {}).get("submitted", []) != [f"{NAME}-0", f"{NAME}-1"]:
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "the first two trials were not submitted in 120 s"
            time.sleep(0.2)
        cli.kill()  # between trials: two run, two wait for a free slot
        cli.wait()
        assert not localjob.job_dir(f"{NAME}-2", env).exists()

        resumed = leo(env, "sweep", "resume", NAME, timeout=600)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert record(env)["submitted"] == [f"{NAME}-{i}" for i in range(4)]
        # --parallel 2: when a trial was submitted, at most one other had not ended
        states = [json.loads((localjob.job_dir(f"{NAME}-{i}", env) / localjob.STATE_FILE).read_text())
                  for i in range(4)]
        assert all(s["phase"] == "Succeeded" for s in states)
        for state in states:
            running = [o for o in states if o is not state and o["created"] <= state["created"] < o["updated"]]
            assert len(running) <= 1, states
        summary = resumed.stdout.splitlines()[-3:]
        assert summary[0].split()[:2] == ["EXPERIMENT", "SEEDS"]
        assert summary[1].startswith("mini_1shot  2/2") and "61.76 ± 0.08" in summary[1]
        assert summary[2].startswith("mini_5shot  2/2") and "75.60 ± 0.10" in summary[2]
        assert sum(line.rstrip().endswith("*") for line in summary[1:]) == 1  # one best configuration

        status = leo(env, "sweep", "status", NAME)
        assert status.returncode == 0, status.stderr
        assert [line.split()[3] for line in status.stdout.splitlines()[1:5]] == ["Succeeded"] * 4

        elsewhere = {**env, "XDG_STATE_HOME": str(tmp_path / "another-machine")}
        csv = leo(elsewhere, "sweep", "report", f"s3://leo-e2e-runs/sweeps/{NAME}", "-o", "csv")
        assert csv.returncode == 0, csv.stderr
        table = [re.split(r"\s{2,}", line.strip()) for line in summary[1:]]
        assert [line.split(",")[:4] for line in csv.stdout.splitlines()[1:]] == [row[:4] for row in table]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        leo(env, "sweep", "cancel", NAME, timeout=120)
