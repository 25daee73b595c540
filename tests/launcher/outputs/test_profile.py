"""A job's profile (`submit --profile`): which profiler files each node publishes, when, and
that a failure there is a warning that leaves the training outputs published."""

from __future__ import annotations

import os

import pytest

from launcher.outputs import profile as prof
from launcher.outputs.publish import Publisher
from launcher.storage import NotFoundError, StorageError

SESSION = "vm_7947_20261201184545835_ascend_ms"  # what MindSpore 2.10 names a profiler session


def write_rank(root, rank, *, summary=True, session=SESSION):
    """A rank's folder as leo_core.train --profile leaves it on CPU (contents shortened)."""
    base = root / f"rank-{rank}"
    files = {f"{session}/ASCEND_PROFILER_OUTPUT/trace_view.json": "[]",
             f"{session}/FRAMEWORK/cpu_op_detail_info_{rank}.csv": "op_type,op_occurrences\n",
             f"{session}/FRAMEWORK/cpu_op_type_info_{rank}.csv": "op_type\n",
             f"{session}/FRAMEWORK/cpu_framework_{rank}.txt": "raw" * 100,
             f"{session}/FRAMEWORK/cpu_op_execute_timestamp_{rank}.txt": "raw",
             f"{session}/logs/profiler_20261201184545_7947.log": "log"}
    if summary:
        files["op_summary.txt"] = "2 steps; per step: 29.5 ms\n"
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    return base


def test_only_the_small_readable_files_are_chosen_flat_and_the_newest_of_a_name(tmp_path):
    write_rank(tmp_path, 0)
    base = write_rank(tmp_path, 1)
    newer = base / "vm_1_2_ascend_ms" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"
    newer.parent.mkdir(parents=True)
    newer.write_text('["newer"]')
    os.utime(newer, ns=(2**62, 2**62))
    (tmp_path / "rank-x").mkdir()
    (tmp_path / "rank-2").symlink_to(base)  # links are never followed
    found = prof.local_profiles(tmp_path)
    assert [p.rank for p in found] == [0, 1] and all(p.complete for p in found)
    assert sorted(found[1].files) == ["cpu_op_detail_info_1.csv", "cpu_op_type_info_1.csv", "op_summary.txt",
                                      "trace_view.json"]
    assert found[1].files["trace_view.json"] == newer
    assert prof.local_profiles(tmp_path / "missing") == []


def test_a_file_above_the_limit_is_not_chosen(tmp_path, monkeypatch):
    base = write_rank(tmp_path, 0)
    monkeypatch.setattr(prof, "MAX_FILE_BYTES", 10)
    (found,) = prof.local_profiles(tmp_path)
    assert sorted(p.name for p in found.too_large) == ["cpu_op_detail_info_0.csv", "op_summary.txt"]
    assert base / SESSION / "ASCEND_PROFILER_OUTPUT" / "trace_view.json" in found.files.values()


def publisher(tmp_path, remote):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    return Publisher(out, str(remote), profile_dir=tmp_path / "profile")


def test_each_rank_is_published_once_complete_and_final_takes_what_there_is(tmp_path):
    remote = tmp_path / "remote" / "job"
    write_rank(tmp_path / "profile", 2)
    write_rank(tmp_path / "profile", 3, summary=False)  # still profiling
    with publisher(tmp_path, remote) as pub:
        report = pub.poll()
        assert sorted(k for k in report.files if k.startswith("profile/")) == [
            "profile/rank-2/cpu_op_detail_info_2.csv", "profile/rank-2/cpu_op_type_info_2.csv",
            "profile/rank-2/op_summary.txt", "profile/rank-2/trace_view.json"]
        assert pub.poll().files == [] and pub.profile_ranks == {2}  # unchanged: nothing sent again
        report = pub.final()  # training is over: rank 3 never wrote its summary
        assert sorted(report.files) == ["profile/rank-3/cpu_op_detail_info_3.csv",
                                        "profile/rank-3/cpu_op_type_info_3.csv", "profile/rank-3/trace_view.json"]
        assert pub.profile_ranks == {2, 3} and report.warnings == []
    assert (remote / "profile" / "rank-2" / "op_summary.txt").read_text() == "2 steps; per step: 29.5 ms\n"
    assert sorted(p.name for p in (remote / "profile" / "rank-2").iterdir()) == [  # flat, no raw data
        "cpu_op_detail_info_2.csv", "cpu_op_type_info_2.csv", "op_summary.txt", "trace_view.json"]


def test_a_failed_profile_upload_is_a_warning_and_the_training_outputs_are_published(tmp_path, monkeypatch):
    remote = tmp_path / "remote" / "job"
    write_rank(tmp_path / "profile", 0)
    with publisher(tmp_path, remote) as pub:
        def refuse(local, key, progress=None):
            raise StorageError(f"s3://bkt/{key}: AccessDenied")

        monkeypatch.setattr(pub.store, "put_file", refuse)
        report = pub.final()
        assert report.files == ["metrics.jsonl"]
        assert report.warnings == ["the profile was not published: s3://bkt/profile/rank-0/cpu_op_detail_info_0.csv: "
                                   "AccessDenied"]
        assert pub.profile_ranks == set()
    assert (remote / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_without_profile_dir_nothing_of_it_is_looked_at(tmp_path):
    write_rank(tmp_path / "profile", 0)
    out = tmp_path / "out"
    out.mkdir()
    with Publisher(out, str(tmp_path / "remote")) as pub:
        assert pub.final().files == [] and not (tmp_path / "remote" / "profile").exists()


def test_pull_profile_downloads_every_rank_and_says_when_there_is_none(tmp_path):
    remote = tmp_path / "remote" / "job"
    write_rank(tmp_path / "profile", 0)
    write_rank(tmp_path / "profile", 1)
    with publisher(tmp_path, remote) as pub:
        pub.final()
    report = prof.pull_profile(str(remote), tmp_path / "got")
    assert report.files == 8
    assert (tmp_path / "got" / "rank-1" / "op_summary.txt").is_file()
    with pytest.raises(NotFoundError, match="no profile under .*: was the job submitted with --profile"):
        prof.pull_profile(str(tmp_path / "remote" / "other"), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_leo_launch_pull_profile(tmp_path, capsys, monkeypatch):
    from tests.launcher.render_helpers import run_cli

    remote = tmp_path / "remote" / "job-p"
    write_rank(tmp_path / "profile", 0)
    with publisher(tmp_path, remote) as pub:
        pub.final()
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, ["pull", str(remote), "--profile"])
    assert code == 0, err
    assert (tmp_path / "job-p" / "profile" / "rank-0" / "op_summary.txt").is_file()
    assert out.startswith("pulled 4 file(s)") and "→ job-p/profile (summary again: python -m " \
        "leo_core.profiling job-p/profile/rank-0)" in out
    code, out, err = run_cli(capsys, ["pull", str(tmp_path / "remote" / "none"), "--profile", "--to", "x"])
    assert code == 1 and "no profile under" in err and not (tmp_path / "x").exists()
    for extra, message in ((["--format", "ckpt"], "does not apply to --profile"),
                           (["--tree"], "not allowed with argument")):
        code, out, err = run_cli(capsys, ["pull", str(remote), "--profile", *extra])
        assert code == 2 and message in err and len(err.splitlines()) == 1
