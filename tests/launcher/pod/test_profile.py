"""`--profile` in the pod: every rank of every node runs `leo_core.train --profile <the
node's work dir>/profile --profile-steps N`, and each node publishes its own ranks' folders
to `<train_url>/<job>/profile/rank-<r>/` (a failure there only a warning).
The whole path with MindSpore's real profiler is tests/launcher/backends/test_local.py."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from launcher.outputs.publish import PublishReport
from launcher.pod import bootstrap as bs
from tests.launcher.pod.test_bootstrap import write_config
from tests.launcher.pod.test_operator import FakeProcess


class ProfilingMsrun(FakeProcess):
    """The stand-in for msrun that, like the ranks of this node would, writes each local
    rank's profile folder where --profile says."""

    ranks: list[int] = []

    def __init__(self, cmd, **options):
        super().__init__(cmd, env=options.get("env") or {})
        if "--profile" in cmd:
            root = Path(cmd[cmd.index("--profile") + 1])
            for rank in self.ranks:
                (root / f"rank-{rank}" / "vm_1_2_ascend_ms").mkdir(parents=True)
                (root / f"rank-{rank}" / "vm_1_2_ascend_ms" / "trace_view.json").write_text("[]")
                (root / f"rank-{rank}" / "op_summary.txt").write_text(f"rank {rank}\n")


@pytest.fixture
def msrun(monkeypatch):
    ProfilingMsrun.started = []
    monkeypatch.setattr(bs.subprocess, "Popen", ProfilingMsrun)
    return ProfilingMsrun


def node_one_of_two(tmp_path, monkeypatch, **values):
    """Node 1 of a 2-node, 4-card job (ranks 2 and 3), training only (node 0 evaluates)."""
    write_config(tmp_path / "cfg", data_url=str(tmp_path / "data"), train_url=str(tmp_path / "runs"),
                 cards=4, nodes=2, **values)
    env = {"LEO_CONFIG_DIR": str(tmp_path / "cfg"), "LEO_CACHE_DIR": str(tmp_path / "cache"), "LEO_NODE_RANK": "1",
           "LEO_MASTER_ADDR": "127.0.0.1", "LEO_PUBLISH_INTERVAL": "3600", "PATH": os.environ.get("PATH", "")}
    out = io.StringIO()
    boot = bs.Bootstrap(env, out)
    monkeypatch.setattr(boot, "stage_data", lambda spec, config: tmp_path / "data")
    return boot, out


def test_every_rank_profiles_and_node_1_publishes_its_own_ranks(tmp_path, monkeypatch, msrun):
    msrun.ranks = [2, 3]
    boot, out = node_one_of_two(tmp_path, monkeypatch, profile=True, profile_steps=3)
    stale = tmp_path / "cache" / "job" / "profile" / "rank-9"  # an earlier attempt's
    stale.mkdir(parents=True)
    (stale / "op_summary.txt").write_text("old\n")
    assert boot.run() == 0
    ((cmd, _),) = msrun.started
    profile_dir = tmp_path / "cache" / "job" / "profile"
    assert cmd[cmd.index("--profile") + 1] == str(profile_dir) and cmd[cmd.index("--profile-steps") + 1] == "3"
    published = tmp_path / "runs" / "leo-b" / "profile"
    assert sorted(p.name for p in published.iterdir()) == ["rank-2", "rank-3"]
    assert (published / "rank-3" / "op_summary.txt").read_text() == "rank 3\n"
    assert sorted(p.name for p in (published / "rank-2").iterdir()) == ["op_summary.txt", "trace_view.json"]
    assert f"[node 1] profile of rank(s) 2, 3 published to {(published.parent).as_uri()}/profile/" in out.getvalue()


def test_without_profile_train_py_gets_no_profiler_and_nothing_is_published(tmp_path, monkeypatch, msrun):
    msrun.ranks = [2, 3]
    boot, out = node_one_of_two(tmp_path, monkeypatch)
    assert boot.run() == 0
    cmd = msrun.started[0][0]
    assert "--profile" not in cmd and "--profile-steps" not in cmd
    assert not (tmp_path / "runs" / "leo-b" / "profile").exists() and "profile" not in out.getvalue()


def test_profile_warnings_of_the_last_publication_are_printed_and_the_job_goes_on():
    class Done:
        url = "s3://bkt/runs/job"
        profile_ranks: set[int] = set()

        def final(self):
            return PublishReport(files=["metrics.jsonl"],
                                 warnings=["the profile was not published: s3://bkt/runs/job/profile/rank-0/"
                                           "trace_view.json: AccessDenied"])

        def close(self):
            pass

    stream = io.StringIO()
    boot = bs.Bootstrap({}, stream)
    boot.out.node_rank = 0
    boot.publisher = Done()
    boot.finish_publishing()
    assert stream.getvalue() == ("[node 0] warning: the profile was not published: "
                                 "s3://bkt/runs/job/profile/rank-0/trace_view.json: AccessDenied\n")
