"""Issue 21 item 5: `--keep-checkpoints N` prunes published steps: the N newest complete
ones stay, and so does whatever latest.json/best.json point at; nothing newer than the
oldest kept step, and nothing before N newer steps are complete, is deleted."""

from __future__ import annotations

import json

import pytest

from launcher.errors import FieldError
from launcher.outputs.publish import Publisher
from launcher.spec.jobspec import JobSpec, build_job_spec
from launcher.storage import StorageOptions
from tests.launcher.outputs.test_checkpoints import write_checkpoint


def published(remote):
    """Step folders holding files (a local store may leave an emptied folder behind)."""
    return sorted(p.name for p in (remote / "checkpoints").glob("step-*") if any(p.iterdir()))


def test_the_newest_complete_steps_and_the_pointed_at_ones_stay(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "remote"
    with Publisher(out, str(remote), keep=2) as publisher:
        write_checkpoint(out, 100, accuracy=0.9)  # best from here on
        publisher.poll()
        for step in (200, 300):
            write_checkpoint(out, step, accuracy=0.1)
            publisher.poll()
        assert published(remote) == ["step-100", "step-200", "step-300"]  # 100 is best
        write_checkpoint(out, 400, accuracy=0.1)
        report = publisher.poll()
        assert report.pruned == ["step-200"]
        assert published(remote) == ["step-100", "step-300", "step-400"]
        best = json.loads((remote / "checkpoints" / "best.json").read_text())
        assert best["path"] == "step-100"


def test_nothing_goes_before_newer_steps_are_complete(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "remote"
    with Publisher(out, str(remote), keep=1) as publisher:
        write_checkpoint(out, 100)
        publisher.poll()
        # an upload cut off before its manifest (another attempt's): not complete, so step-100 stays
        (remote / "checkpoints" / "step-900").mkdir()
        (remote / "checkpoints" / "step-900" / "weights.npz").write_bytes(b"partial")
        assert publisher.prune() == []
        assert published(remote) == ["step-100", "step-900"]
        write_checkpoint(out, 200)
        assert publisher.poll().pruned == ["step-100"]
        assert published(remote) == ["step-200", "step-900"]  # newer than the kept one: left alone


def test_without_keep_everything_stays(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "remote"
    with Publisher(out, str(remote), options=StorageOptions()) as publisher:
        for step in (100, 200, 300):
            write_checkpoint(out, step)
            assert publisher.poll().pruned == []
    assert published(remote) == ["step-100", "step-200", "step-300"]


def test_the_job_option():
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, keep_checkpoints=3)
    assert JobSpec.from_yaml(spec.to_yaml()).keep_checkpoints == 3
    assert "keep_checkpoints" not in build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2).to_dict()
    with pytest.raises(FieldError, match="keep_checkpoints must be at least 1") as raised:
        build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, keep_checkpoints=0)
    assert raised.value.fields == ("keep_checkpoints",)
