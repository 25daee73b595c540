"""Hostile published outputs (issue 22 item 9 and the low list): keys and pointers are
checked where they become local paths or resume steps."""

from __future__ import annotations

import json

import pytest

from launcher.outputs.checkpoints import _manifest_files, _parse_pointer, resume_from_remote
from launcher.outputs.publish import Publisher
from launcher.storage import StorageError
from tests.launcher.outputs.test_checkpoints import job, write_checkpoint  # noqa: F401 - fixture

SHA = "0" * 64


@pytest.mark.integration
# ("logs/../../x" itself: SeaweedFS refuses such keys; other servers may not.)
@pytest.mark.parametrize("key", ["logs/nested/rank-0.log", "logs/rank-0.log.bak"])
def test_resume_refuses_log_keys_that_are_not_rank_logs(job, tmp_path, key):  # noqa: F811
    out, logs = job["out"], job["logs"]
    logs.mkdir()
    (logs / "rank-0.log").write_text("first attempt\n")
    with Publisher(out, job["url"], logs_dir=logs, options=job["options"]) as publisher:
        write_checkpoint(out, 100, accuracy=0.8)
        publisher.final()
    job["server"].client().put_object(Bucket=job["bucket"], Key=f"train/job-1/{key}", Body=b"x")
    fresh_logs = tmp_path / "pod2" / "logs"
    with pytest.raises(StorageError, match="unexpected object"):
        resume_from_remote(job["url"], tmp_path / "pod2" / "out", logs_dir=fresh_logs,
                           options=job["options"])
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.log*"))
    assert all(str(p).startswith("logs/") or p.name == "rank-0.log" for p in written), written
    assert not (fresh_logs / "nested").exists()


@pytest.mark.parametrize("raw", [
    b'{"step": 100, "path": "step-100\\n"}',  # a trailing newline in the path
    b'{"step": 200, "path": "step-100"}',  # the step disagrees with the path
    b'{"step": true, "path": "step-1"}',
])
def test_malformed_pointers_are_refused(raw):
    with pytest.raises(StorageError, match="is not a checkpoint pointer"):
        _parse_pointer(raw, "latest.json")


def test_a_pointer_without_step_takes_it_from_the_path():
    assert _parse_pointer(b'{"path": "step-7"}', "p")["step"] == 7


def test_duplicate_manifest_entries_are_refused():
    entry = {"name": "weights.npz", "size": 1, "sha256": SHA}
    with pytest.raises(StorageError, match="malformed"):
        _manifest_files({"files": [entry, dict(entry)]}, "MANIFEST.json")
    assert len(_manifest_files({"files": [entry]}, "MANIFEST.json")) == 1


def test_pointer_json_round_trip_is_unchanged():
    assert _parse_pointer(json.dumps({"step": 3, "path": "step-3"}).encode(), "p") == \
        {"step": 3, "path": "step-3"}


def test_fetching_over_a_file_of_the_same_name_leaves_no_temporary(tmp_path):
    from launcher.outputs.checkpoints import _fetch_checkpoint
    from launcher.storage import StorageOptions, open_store

    out, remote = tmp_path / "out", tmp_path / "remote" / "job"
    with Publisher(out, str(remote), options=StorageOptions(progress=False)) as publisher:
        write_checkpoint(out, 100, accuracy=0.5)
        publisher.final()
    dest_root = tmp_path / "pulled"
    dest_root.mkdir()
    (dest_root / "step-100").write_text("a file where the checkpoint goes")
    with open_store(str(remote), StorageOptions(progress=False)) as store:
        dest, _ = _fetch_checkpoint(store, "step-100", dest_root)
    assert dest.is_dir() and sorted(p.name for p in dest_root.iterdir()) == ["step-100"]
