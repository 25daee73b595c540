"""Files the CLI is given, as a hostile or careless user gives them (issue 22 items 4, 7):
devices, FIFOs and deeply nested YAML/JSON end with one line, never a hang, a memory bomb,
a segfault or a traceback. Every command runs as a subprocess (the old failure was rc 139)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher.outputs.test_report import write_job

DEEP_FLOW = "[" * 25_000  # ~25 kB: libyaml/json recursion overflowed on this
DEEP_YAML = "nodes: " + "[" * 25_000 + "]" * 25_000 + "\n"


def leo(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_annotations_from_a_device_are_refused_at_once():
    proc = leo("ranktable", "--annotations", "/dev/zero", timeout=30)
    assert_one_line(proc, 2, "/dev/zero", "not a regular file")


def test_annotations_from_a_fifo_without_writer_do_not_block(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = leo("ranktable", "--annotations", str(fifo), timeout=30)
    assert_one_line(proc, 2, "not a regular file")


def test_inventory_from_a_device_is_refused(tmp_path):
    proc = leo("ranktable", "--inventory", "/dev/zero", timeout=30)
    assert_one_line(proc, 2, "not a regular file")


def test_deeply_nested_annotation_json_is_bad_input(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text("[" * 100_000)
    assert_one_line(leo("ranktable", "--annotations", str(path)), 2, "nests more than")


def test_deeply_nested_inventory_is_bad_input(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(DEEP_YAML)
    assert_one_line(leo("ranktable", "--inventory", str(path)), 2, "nests more than")
    proc = leo("render", "--exp", "mini_5shot", "--accel", "ascend", "--cards", "8",
               "--data-url", "s3://data/x", "--train-url", "s3://runs/x",
               "--rank-table", str(path))
    assert_one_line(proc, 2, "nests more than")


def test_report_of_a_deeply_nested_published_job_yaml(tmp_path):
    base = tmp_path / "runs" / "leo-deep"
    write_job(base, job=DEEP_YAML)
    assert_one_line(leo("report", str(base)), 1, "job.yaml", "nests more than")


def test_list_and_cancel_survive_a_deeply_nested_local_job_yaml(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "KUBECONFIG": str(tmp_path / "none")}
    for name in ("leo-good", "leo-deep"):
        folder = tmp_path / "state" / "leo-launch" / "jobs" / name
        folder.mkdir(parents=True)
        (folder / "job.yaml").write_text(DEEP_YAML if name == "leo-deep" else "name: leo-good\n")
    listed = leo("list", "--backend", "local", env=env)
    assert listed.returncode == 0 and "leo-good" in listed.stdout and "leo-deep" in listed.stdout, \
        listed.stderr
    assert "recursion" not in listed.stdout + listed.stderr
    cancelled = leo("cancel", "leo-deep", "--backend", "local", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert not (tmp_path / "state" / "leo-launch" / "jobs" / "leo-deep").exists()


@pytest.mark.parametrize("name", ["config.yaml"])
def test_train_config_nested_too_deep_is_one_line_exit_2(tmp_path, name):
    path = tmp_path / name
    path.write_text("name: mini_5shot\nouter_lr: " + DEEP_FLOW + "\n")
    proc = subprocess.run([sys.executable, "-m", "leo_core.train", "--config", str(path),
                           "--data-root", str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert_one_line(proc, 2, "nests more than")
    assert not Path(tmp_path / "out").exists()
