"""`report` and `logs URL --all` stream published objects (issue 22 item 10): metrics.jsonl
and rank logs are read line by line, keeping only what is shown (the curves' points, the
last --tail lines), so an object of any size is read in bounded memory."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys

import pytest

from launcher.outputs import logs, metrics
from launcher.storage import IntegrityError, StorageOptions, iter_lines, open_store
from tests.launcher.outputs.test_report import write_job
from tests.launcher.render_helpers import run_cli


def test_iter_lines_streams_and_cuts_long_lines(tmp_path, monkeypatch):
    import launcher.storage.local as local

    monkeypatch.setattr(local, "CHUNK", 3)  # lines straddle chunks
    (tmp_path / "text").write_bytes(b"one\ntwo\r\n" + b"x" * 50 + b"\n\nlast")
    with open_store(str(tmp_path), StorageOptions(progress=False)) as store:
        assert list(iter_lines(store, "text", max_line=10)) == ["one", "two", "x" * 10, "", "last"]


def _records(steps: int, every: int = 10) -> list[dict]:
    out = []
    for step in range(1, steps + 1):
        out.append({"step": step, "kind": "train", "accuracy": 0.5, "steps_per_s": 2.0})
        if step % every == 0:
            out.append({"step": step, "kind": "validation", "accuracy": 0.6, "ci95": 0.01,
                        "best": step == 370})
    out.append({"step": 371, "kind": "validation", "accuracy": 0.9, "ci95": 0.01})
    return out


def test_report_thins_curves_past_the_bound_keeping_best_and_last(tmp_path, capsys, monkeypatch):
    base = write_job(tmp_path / "runs" / "leo-long", metrics=_records(1000))
    monkeypatch.setattr(metrics, "MAX_CURVE_POINTS", 16)
    code, out, err = run_cli(capsys, ["report", str(base), "-o", "json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["step"] == 1000
    assert data["best_validation"]["step"] == 370  # the trainer's mark survives thinning
    assert 0 < data["records"]["train"] <= 16 + 3 and data["records"]["validation"] <= 16 + 3
    train, validation, _ = metrics.parse_metrics(
        (json.dumps(r) for r in _records(1000)), "m")
    assert {371, 370} <= {p.step for p in validation}  # highest accuracy and marked best


def test_logs_all_tail_keeps_the_last_lines_of_each_rank(tmp_path):
    (tmp_path / "job" / "logs").mkdir(parents=True)
    for rank in (0, 1):
        (tmp_path / "job" / "logs" / f"rank-{rank}.log").write_text(
            "".join(f"line {i}\n" for i in range(10_000)))
    out = io.StringIO()
    assert logs.print_published_logs(str(tmp_path / "job"), tail=2, out=out, err=io.StringIO())
    assert out.getvalue().splitlines() == [
        "[rank 0] line 9998", "[rank 0] line 9999", "[rank 1] line 9998", "[rank 1] line 9999"]


# ------------------------------------------------------------------------ SeaweedFS

_PEAK = ("import resource, sys\n"
         "from launcher.cli.main import main\n"
         "code = main(sys.argv[1:])\n"
         "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)\n")


def _peak_kib(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", _PEAK, *argv], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stderr.split("PEAK")[-1])
    return peak, proc.stdout


@pytest.mark.integration
def test_s3_report_and_logs_stream_a_large_object_in_bounded_memory(s3_env, tmp_path):
    """A ~60 MB metrics.jsonl and a ~60 MB rank log: report and `logs --all --tail` peak
    within 30 MB of the same commands on tiny objects (old code read them whole: 2-4x
    their size)."""
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env.endpoint, "LEO_STORAGE_PATH_STYLE": "1"}
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, progress=False)
    big = tmp_path / "big.jsonl"
    with open(big, "w") as handle:
        for step in range(1, 400_001):
            handle.write(json.dumps({"step": step, "kind": "train", "accuracy": 0.5,
                                     "loss": 1.25, "steps_per_s": 2.0, "time": step * 0.5,
                                     "pad": "p" * 80}) + "\n")
    log = tmp_path / "rank.log"
    with open(log, "w") as handle:
        for i in range(600_000):
            handle.write(f"step {i} " + "l" * 90 + "\n")
    assert big.stat().st_size > 50e6 and log.stat().st_size > 50e6
    for name, metrics_file, log_file in (("tiny", None, None), ("huge", big, log)):
        with open_store(f"s3://{bucket}/{name}", options) as store:
            if metrics_file is None:
                store.put_bytes("metrics.jsonl", b'{"step": 1, "kind": "train", "accuracy": 0.5}\n')
                store.put_bytes("logs/rank-0.log", b"step 0\nstep 1\n")
            else:
                store.put_file(metrics_file, "metrics.jsonl")
                store.put_file(log_file, "logs/rank-0.log")
    small_report, _ = _peak_kib(["report", f"s3://{bucket}/tiny", "-o", "json"], env)
    big_report, out = _peak_kib(["report", f"s3://{bucket}/huge", "-o", "json"], env)
    assert json.loads(out)["step"] == 400_000
    small_logs, _ = _peak_kib(["logs", f"s3://{bucket}/tiny", "--all", "--tail", "2"], env)
    big_logs, out = _peak_kib(["logs", f"s3://{bucket}/huge", "--all", "--tail", "2"], env)
    assert out.splitlines() == [f"[rank 0] step {i} " + "l" * 90 for i in (599_998, 599_999)]
    print(f"peak RSS KiB: report {small_report} -> {big_report}, logs {small_logs} -> {big_logs}")
    assert big_report - small_report < 30 * 1024, (small_report, big_report)
    assert big_logs - small_logs < 30 * 1024, (small_logs, big_logs)


@pytest.mark.integration
def test_s3_stream_is_verified_at_the_end(s3_env):
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    s3_env.client().put_object(Bucket=bucket, Key="job/logs/rank-0.log", Body=b"a\nb\n",
                               Metadata={"sha256": "0" * 64})
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, progress=False)
    with open_store(f"s3://{bucket}/job", options) as store, \
            pytest.raises(IntegrityError, match="sha256 mismatch"):
        list(iter_lines(store, "logs/rank-0.log"))


_PROGRESS = ("import json, resource, sys\n"
             "from pathlib import Path\n"
             "from launcher.outputs.metrics import read_progress\n"
             "from launcher.storage import StorageSettings\n"
             "url, local = sys.argv[1], sys.argv[2]\n"
             "out = read_progress(url or None, local_out=Path(local) if local else None,\n"
             "                    storage=StorageSettings(path_style=True))\n"
             "print(json.dumps(out))\n"
             "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def _progress_peak_kib(url: str, local: str, env: dict[str, str]) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-c", _PROGRESS, url, local], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.split("PEAK")[-1]), json.loads(proc.stdout)


@pytest.mark.integration
def test_status_and_list_progress_streams_a_large_metrics_file(s3_env, tmp_path):
    """`status`/`list` read a job's progress (latest step, best validation, start-up) line by
    line, from the local output folder or the bucket: a ~60 MB metrics.jsonl peaks within
    30 MB of a tiny one (old code read it whole and kept every record: ~10x its size)."""
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env.endpoint}
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, progress=False)
    for name, steps in (("tiny", 3), ("huge", 400_000)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "metrics.jsonl", "w") as handle:
            handle.write(json.dumps({"step": 0, "kind": "startup", "seconds": 4.5}) + "\n")
            for step in range(1, steps + 1):
                handle.write(json.dumps({"step": step, "kind": "train", "accuracy": 0.5, "loss": 1.25,
                                         "steps_per_s": 2.0, "time": step * 0.5, "pad": "p" * 80}) + "\n")
            handle.write(json.dumps({"step": 2, "kind": "validation", "accuracy": 0.625, "best": True}) + "\n")
        with open_store(f"s3://{bucket}/{name}", options) as store:
            store.put_file(tmp_path / name / "metrics.jsonl", "metrics.jsonl")
    assert (tmp_path / "huge" / "metrics.jsonl").stat().st_size > 50e6
    expected = {"step": 400_000, "startup_seconds": 4.5, "best_accuracy": 0.625, "best_step": 2}
    for where in ("local", "s3"):
        args = (("", str(tmp_path / "{}")) if where == "local" else (f"s3://{bucket}/{{}}", ""))
        small, _ = _progress_peak_kib(*(a.format("tiny") for a in args), env)
        big, out = _progress_peak_kib(*(a.format("huge") for a in args), env)
        assert out == expected, (where, out)
        print(f"{where}: peak RSS KiB {small} -> {big}")
        assert big - small < 30 * 1024, (where, small, big)
