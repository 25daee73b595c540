"""`report` and `logs URL --all` read published objects into memory only up to a bound
(issue 22 item 10, partly: larger objects are refused with one line, not streamed)."""

from __future__ import annotations

import io

import pytest

from launcher.outputs import logs, report
from launcher.storage import StorageOptions, TooLarge, open_store
from tests.launcher.outputs.test_report import write_job
from tests.launcher.render_helpers import run_cli


def test_local_get_bytes_refuses_past_the_bound(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with open_store(str(tmp_path), StorageOptions(progress=False)) as store:
        assert store.get_bytes("big", 4096) == b"x" * 2048
        with pytest.raises(TooLarge, match="too large to read here"):
            store.get_bytes("big", 1024)


def test_report_refuses_an_oversized_metrics_file(tmp_path, capsys, monkeypatch):
    base = write_job(tmp_path / "runs" / "leo-big")
    monkeypatch.setattr(report, "MAX_METRICS_BYTES", 100)
    code, out, err = run_cli(capsys, ["report", str(base)])
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert "metrics.jsonl holds more than" in err


@pytest.mark.integration
def test_s3_get_bytes_refuses_past_the_bound(s3_env):
    import secrets

    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, progress=False)
    with open_store(f"s3://{bucket}/job", options) as store:
        store.put_bytes("logs/rank-0.log", b"line\n" * 1000)
        assert store.get_bytes("logs/rank-0.log", 10_000).count(b"\n") == 1000
        with pytest.raises(TooLarge):
            store.get_bytes("logs/rank-0.log", 100)


def test_logs_all_refuses_an_oversized_rank_log(tmp_path, monkeypatch):
    (tmp_path / "job" / "logs").mkdir(parents=True)
    (tmp_path / "job" / "logs" / "rank-0.log").write_text("step\n" * 100)
    monkeypatch.setattr(logs, "MAX_LOG_BYTES", 100)
    with pytest.raises(TooLarge, match="rank-0.log holds more than"):
        logs.print_published_logs(str(tmp_path / "job"), out=io.StringIO(), err=io.StringIO())
