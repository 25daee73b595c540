"""`leo-launch report`: a run's table and curves from its job base URL (file:// and s3://)."""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from launcher.outputs.metrics import (
    best_validation,
    parse_metrics,
    recent_rate,
)
from launcher.outputs.report import load_report
from launcher.spec.jobspec import build_job_spec
from launcher.storage import (
    StorageOptions,
    open_store,
)
from tests.launcher.render_helpers import run_cli

ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------- a finished run, simulated

def synthetic_metrics(steps: int = 2000, log_every: int = 50, validate_every: int = 200) -> list[dict]:
    """What leo_core.train logs: train records with the window's rate, validation records
    marked `best` when they improve."""
    records, best, time = [], -1.0, 1_700_000_000.0
    for step in range(log_every, steps + 1, log_every):
        rate = 3.0 + 0.1 * ((step // log_every) % 3)  # 3.0, 3.1, 3.2, 3.0, ...
        time += log_every / rate
        records.append({"step": step, "kind": "train", "loss": 2.0 - step / steps,
                        "accuracy": 0.40 + 0.30 * step / steps, "steps_per_s": rate, "time": time})
        if step % validate_every == 0:
            accuracy = 0.38 + 0.25 * step / steps - (0.05 if step in (1600, 2000) else 0.0)
            improved = accuracy > best
            best = max(best, accuracy)
            records.append({"step": step, "kind": "validation", "accuracy": accuracy, "ci95": 0.0125,
                            "loss": 1.5, "tasks": 2000, "best": improved, "time": time})
    return records


RESULT = {"accuracy": 0.7631, "ci95": 0.0012, "tasks": 10000, "step": 2000, "experiment": "mini_5shot"}


def job_yaml(name: str, train_url: str, cards: int = 2, steps: int = 2000) -> str:
    return build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=cards, name=name,
                          steps=steps, train_url=train_url).to_yaml()


def write_job(base: Path, *, metrics: list[dict] | None = None, result: dict | None = RESULT,
              job: str | None = None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    records = synthetic_metrics() if metrics is None else metrics
    (base / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if result is not None:
        (base / "result.json").write_text(json.dumps(result))
    (base / "job.yaml").write_text(job if job is not None else job_yaml(base.name, str(base.parent)))
    return base


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk (checked with its CRC)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body, crc = data[16:29], struct.unpack(">I", data[29:33])[0]
    assert zlib.crc32(b"IHDR" + body) == crc
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", body[:8])


# ----------------------------------------------------------------- file:// job bases

def test_table_and_png_from_a_file_job_base(tmp_path, capsys):
    base = write_job(tmp_path / "runs" / "leo-mini")
    png = tmp_path / "curves.png"
    code, out, err = run_cli(capsys, ["report", base.as_uri(), "--png", str(png)])
    assert code == 0, err
    header, row, note = out.splitlines()
    assert header.split() == ["JOB", "EXPERIMENT", "CARDS", "STEPS", "STEPS/S", "BEST-VAL",
                              "BEST-STEP", "META-TEST"]
    # best validation is the trainer's last `best` mark (step 1800: the dip at 1600 and
    # the lower value at 2000 do not count), shown as a percentage with its interval
    assert row.split() == ["leo-mini", "mini_5shot", "2", "2000/2000", "3.1", "60.50%", "±",
                           "1.25%", "1800", "76.31%", "±", "0.12%"]
    assert note == f"training curves → {png}"
    width, height = png_size(png)
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert png.stat().st_size > 15_000  # axes, two curves, a band, a legend: not an empty canvas
    assert not list(tmp_path.glob(".curves.png.*"))  # written atomically, no temp file left


def test_png_has_both_curves_drawn(tmp_path):
    import matplotlib.image

    base = write_job(tmp_path / "leo-mini")
    png = tmp_path / "c.png"
    from launcher.outputs.report import write_png

    write_png(load_report(str(base)), png)
    pixels = matplotlib.image.imread(png)[..., :3]
    # matplotlib's default blue (meta-train) and orange (meta-validation) lines
    blue = ((abs(pixels[..., 0] - 0.12) < 0.08) & (abs(pixels[..., 1] - 0.47) < 0.08)
            & (abs(pixels[..., 2] - 0.71) < 0.08)).sum()
    orange = ((pixels[..., 0] > 0.9) & (abs(pixels[..., 1] - 0.5) < 0.08) & (pixels[..., 2] < 0.15)).sum()
    assert blue > 300 and orange > 300


def test_json_output_keeps_fractions(tmp_path, capsys):
    base = write_job(tmp_path / "leo-mini")
    code, out, err = run_cli(capsys, ["report", str(base), "-o", "json"])
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["name"] == "leo-mini" and data["experiment"] == "mini_5shot"
    assert data["cards"] == 2 and data["accelerator"] == "cpu"
    assert data["step"] == 2000 and data["target_steps"] == 2000
    recent = [r["steps_per_s"] for r in synthetic_metrics() if r["kind"] == "train"][-10:]
    assert data["steps_per_s"] == pytest.approx(sum(recent) / 10, abs=1e-4)
    assert data["best_validation"] == {"step": 1800, "accuracy": pytest.approx(0.605), "ci95": 0.0125}
    assert data["meta_test"] == {"accuracy": 0.7631, "ci95": 0.0012, "tasks": 10000, "step": 2000}
    assert data["records"] == {"train": 40, "validation": 10, "skipped": 0}
    assert "png" not in data


def test_baselines_of_result_json_are_shown(tmp_path, capsys):
    """leo_core.evaluate adds the untrained model and nearest-class-mean, same tasks."""
    baselines = {"untrained": {"accuracy": 0.6012, "ci95": 0.0031, "tasks": 10000},
                 "nearest_class_mean": {"accuracy": 0.7702, "ci95": 0.0025, "tasks": 10000}}
    base = write_job(tmp_path / "leo-mini", result={**RESULT, "step": 0, "baselines": baselines})
    code, out, err = run_cli(capsys, ["report", str(base)])
    header, row = out.splitlines()[:2]
    assert header.split()[-3:] == ["META-TEST", "UNTRAINED", "NCM"]
    assert row.split()[-6:] == ["60.12%", "±", "0.31%", "77.02%", "±", "0.25%"]
    code, out, err = run_cli(capsys, ["report", str(base), "-o", "json"])
    data = json.loads(out)["meta_test"]
    assert data["step"] == 0  # the untrained model can be the best checkpoint
    assert data["baselines"] == {"untrained": {"accuracy": 0.6012, "ci95": 0.0031},
                                 "nearest_class_mean": {"accuracy": 0.7702, "ci95": 0.0025}}


def test_report_by_job_name_through_the_local_registry(tmp_path, monkeypatch, capsys):
    train_url = tmp_path / "outputs"
    write_job(train_url / "leo-local")
    state = tmp_path / "state" / "leo-launch" / "jobs" / "leo-local"
    state.mkdir(parents=True)
    (state / "job.yaml").write_text(job_yaml("leo-local", str(train_url)))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code, out, err = run_cli(capsys, ["report", "leo-local", "-o", "json"])
    assert code == 0, err
    assert json.loads(out)["url"] == (train_url / "leo-local").as_uri()


def test_a_running_job_without_result_or_job_yaml(tmp_path, capsys):
    base = tmp_path / "leo-running"
    write_job(base, metrics=synthetic_metrics(steps=600), result=None)
    (base / "job.yaml").unlink()
    code, out, err = run_cli(capsys, ["report", str(base)])
    assert code == 0, err
    row = out.splitlines()[1].split()
    # no job.yaml: experiment and cards unknown, the target step too; no meta-test yet
    assert row[:4] == ["leo-running", "-", "-", "600"] and row[-1] == "-"
    assert row[-2] == "600"  # best validation so far


def test_resumed_run_and_a_torn_last_line(tmp_path):
    records = synthetic_metrics(steps=400)
    again = [dict(r, accuracy=r["accuracy"] + 0.01) for r in records if r["step"] > 200]
    lines = [json.dumps(r) for r in records + again] + ['{"step": 450, "kind": "tr']
    train, validation, skipped = parse_metrics(("\n".join(lines)).encode())
    assert [p.step for p in train] == list(range(50, 401, 50))  # one point per step
    assert train[-1].accuracy == pytest.approx(records[-2]["accuracy"] + 0.01)  # the last one wins
    assert [p.step for p in validation] == [200, 400] and skipped == 1


def test_best_and_rate_fall_back_when_records_lack_marks():
    records = [{"step": s, "kind": "validation", "accuracy": a} for s, a in ((100, 0.5), (200, 0.6), (300, 0.6))]
    records += [{"step": s, "kind": "train", "accuracy": 0.5, "time": 1000.0 + s / 4} for s in (100, 200, 300)]
    train, validation, _ = parse_metrics("\n".join(json.dumps(r) for r in records).encode())
    assert best_validation(validation).step == 200  # highest accuracy, earliest on a tie
    assert recent_rate(train) == pytest.approx(4.0)  # from steps and times


# ----------------------------------------------------------------- errors: one line, exit codes

def test_missing_metrics_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "leo-empty").mkdir()
    code, out, err = run_cli(capsys, ["report", str(tmp_path / "leo-empty")])
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no metrics" in err and "leo-empty/metrics.jsonl does not exist" in err


def test_missing_metrics_in_a_subprocess_shows_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "launcher", "report", str(tmp_path / "nothing")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("leo-launch: error: no metrics") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("content", "message"), [
    ("", "holds no train or validation record"),
    ("not json\nat all\n", "is not JSON lines"),
])
def test_metrics_without_records(tmp_path, capsys, content, message):
    base = write_job(tmp_path / "leo-bad")
    (base / "metrics.jsonl").write_text(content)
    code, out, err = run_cli(capsys, ["report", str(base)])
    assert code == 1 and message in err and len(err.splitlines()) == 1


def test_malformed_result_is_an_error(tmp_path, capsys):
    base = write_job(tmp_path / "leo-bad")
    (base / "result.json").write_text('{"accuracy": "high"}')
    code, out, err = run_cli(capsys, ["report", str(base)])
    assert code == 1 and "result.json has no meta-test accuracy" in err


def test_png_into_a_missing_directory_is_refused_before_reading(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["report", str(tmp_path / "not-read"), "--png",
                                      str(tmp_path / "no" / "such" / "c.png")])
    assert code == 2 and "directory" in err and "does not exist" in err and "metrics" not in err


def test_unknown_job_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    code, out, err = run_cli(capsys, ["report", "never-submitted"])
    assert code == 1 and "unknown job 'never-submitted'" in err


def test_help_imports_no_matplotlib_or_boto3():
    code = ("import sys; from launcher.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('matplotlib', 'boto3', 'mindspore') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


# ----------------------------------------------------------------- s3://

@pytest.mark.integration
def test_report_from_s3(s3_env, tmp_path, capsys):
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    url = f"s3://{bucket}/train/leo-s3"
    local = write_job(tmp_path / "leo-s3", job=job_yaml("leo-s3", f"s3://{bucket}/train", cards=8))
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, max_attempts=2)
    with open_store(url, options) as store:
        for name in ("metrics.jsonl", "result.json", "job.yaml"):
            store.put_bytes(name, (local / name).read_bytes())
    png = tmp_path / "s3.png"
    code, out, err = run_cli(capsys, ["report", url, "--storage-endpoint", s3_env.endpoint,
                                      "--path-style", "--png", str(png)])
    assert code == 0, err
    row = out.splitlines()[1].split()
    assert row[:4] == ["leo-s3", "mini_5shot", "8", "2000/2000"] and row[-3:] == ["76.31%", "±", "0.12%"]
    assert png_size(png)[0] >= 600
    code, out, err = run_cli(capsys, ["report", f"s3://{bucket}/train/missing",
                                      "--storage-endpoint", s3_env.endpoint, "--path-style"])
    assert code == 1 and f"s3://{bucket}/train/missing/metrics.jsonl does not exist" in err


def test_startup_time_of_the_latest_start(tmp_path, capsys):
    """leo_core.train logs a startup record at each start's first step: the last one is shown."""
    records = synthetic_metrics(steps=400)
    records.insert(0, {"step": 1, "kind": "startup", "seconds": 14.7, "since": "bootstrap"})
    records.append({"step": 301, "kind": "startup", "seconds": 6.25, "since": "bootstrap"})
    base = write_job(tmp_path / "leo-mini", metrics=records, result=None)
    code, out, err = run_cli(capsys, ["report", str(base)])
    assert code == 0, err
    header, row = (line.split() for line in out.splitlines()[:2])
    assert header[5] == "START-UP" and row[row.index("400/2000") + 2] == "6.2s"
    code, out, err = run_cli(capsys, ["report", str(base), "-o", "json"])
    assert json.loads(out)["startup_seconds"] == 6.25
    assert json.loads(out)["records"] == {"train": 8, "validation": 2, "skipped": 0}
