"""A job of world size 1: the bootstrap runs the training script itself, without msrun
(issue 25 item 3: msrun's start, scheduler and worker spawn cost about 1 s of start-up),
and keeps what msrun's path gives: rank-tagged logs and the rank log file, the start-up
record, exit codes, SIGTERM stopping every process, the compile cache."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.pod import bootstrap as bs
from launcher.pod import logrelay
from leo_core.synthetic import write_dataset
from tests.launcher.pod.test_bootstrap import write_config

TINY = ["total_examples_per_class=20", "checkpoint_steps=2", "num_validation_batches=1",
        "metavalid_batch_size=4", "metatest_batch_size=4"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    return root


def start(tmp_path, data, steps):
    write_config(tmp_path / "cfg", cards=1, data_url=str(data), set_overrides=[*TINY, f"num_steps_limit={steps}"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEO_", "MS_", "RANK_"))}
    env.update(LEO_CACHE_DIR=str(tmp_path / "cache"), LEO_CONFIG_DIR=str(tmp_path / "cfg"), LEO_NODE_RANK="0",
               LEO_EVAL_TASKS="4")
    return subprocess.Popen([sys.executable, "-m", "launcher.bootstrap"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def processes_of(tmp_path) -> list[psutil.Process]:
    """Live processes started for this test's job (they carry its cache dir)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LEO_CACHE_DIR") == str(tmp_path / "cache") and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.integration
def test_a_one_process_job_trains_without_msrun_and_keeps_logs_and_the_startup_record(tiny, tmp_path):
    proc = start(tmp_path, tiny, 2)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    # its master address (a DNS name nothing publishes here) is not waited for: one process
    assert "[node 0] starting 1 training process (world size 1: no msrun, no cluster to form)" in out
    assert "msrun" not in out.replace("no msrun", "")  # no msrun line, no msrun process
    work = tmp_path / "cache" / "job"
    assert not (work / "msrun" / "scheduler.log").exists()
    assert "[rank 0] start-up: first training step done" in out and "after the bootstrap started" in out
    assert "[rank 0] evaluating" in out or "meta-test accuracy" in out
    rank_log = (work / "logs" / "rank-0.log").read_text()
    assert "start-up: first training step done" in rank_log and "training mini_5shot" in rank_log
    records = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["since"] for r in records if r["kind"] == "startup"] == ["bootstrap"]
    # the training process had MindSpore's compile cache on, under the cache dir, keyed
    (graphs,) = (tmp_path / "cache" / bs.COMPILE_CACHE_DIR).glob("*/rank_0/graph_cache")
    assert list(graphs.glob("compile_cache_*.mindir"))
    assert "compile_cache_manager" not in out and "dependency files hash" not in out  # MindSpore's notes


def test_mindspores_compile_cache_notes_are_not_relayed(tmp_path):
    msrun_dir = tmp_path / "msrun"
    msrun_dir.mkdir()
    stream = io.StringIO()
    relay = logrelay.LogRelay(msrun_dir, [0], tmp_path / "logs", logrelay.Output(stream, 0))
    lines = [
        "[WARNING] PIPELINE(1,7f,python):2026-12-06-17:21:43.194.217 [mindspore/ccsrc/frontend/jit/ps/"
        "compile_cache_manager.cc:426] CanLoadCache] Open the hash file /c/graph_cache/compile_dependency.hash "
        "failed. The file may not exist. Errno: 2, ErrInfo: No such file or directory",
        "[WARNING] PIPELINE(1,7f,python):2026-12-06-17:21:43.194.236 [mindspore/ccsrc/frontend/jit/ps/resource.cc"
        ":751] GetCompileCacheResource] Check the consistency of dependency files hash failed. Execute all the "
        "compilation actions.",
        "[WARNING] PIPELINE(1,7f,python):2026-12-06-17:09:49.433.280 [mindspore/ccsrc/frontend/jit/ps/"
        "compile_cache_manager.cc:471] GetCachedFuncGraph] Use the compilation cache and execute the backend "
        "actions only. Be aware of correctness risks.",
        "[WARNING] PIPELINE(1,7f,python):2026-12-06-17:09:49.389.786 [mindspore/ccsrc/frontend/jit/ps/"
        "compile_cache_manager.cc:465] GetCachedFuncGraph] Failed to load the compilation cache file. Execute "
        "all the compilation actions.",
        "step 1"]
    (msrun_dir / "worker_0.log").write_text("\n".join(lines) + "\n")
    relay.close()
    assert stream.getvalue().splitlines() == [f"[rank 0] {line}" for line in lines[3:]]


@pytest.mark.integration
def test_sigterm_stops_a_one_process_job_and_every_process_it_started(tiny, tmp_path):
    proc = start(tmp_path, tiny, 100_000)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[rank 0] training mini_5shot"):
                break
        assert processes_of(tmp_path), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == bs.EXIT_TERMINATED, "".join(lines) + rest
    assert "[node 0] received SIGTERM: stopping" in rest
    deadline = time.monotonic() + 10
    while processes_of(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(tmp_path) == []


def test_the_only_worker_gets_msruns_variables_and_its_exit_code_counts(tmp_path):
    """What leo_core.distributed and the local backend's workers_by_rank read, as msrun sets
    them for one worker; a worker's exit code 2 (bad configuration) is what train() maps to 2."""
    boot = bs.Bootstrap({"HOME": str(tmp_path), "LEO_WORK_DIR": str(tmp_path), "MS_ROLE": "MS_SCHED"},
                        io.StringIO())
    script = ("import os, sys; print({k: os.environ.get(k) for k in "
              "('MS_ROLE', 'MS_WORKER_NUM', 'RANK_ID', 'RANK_SIZE', 'DEVICE_ID', 'LEO_START_TIME')}); "
              "print(os.getpgid(0) == os.getpid()); sys.exit(2)")
    code = boot.run_single(["-c", script], boot.child_env(), tmp_path)
    assert code == 2 and boot.worker_codes == [2]
    variables, leader = (tmp_path / "worker_0.log").read_text().splitlines()
    seen = eval(variables)  # noqa: S307 - our own dict's repr
    assert seen.pop("LEO_START_TIME") and seen == {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "1", "RANK_ID": "0",
                                                   "RANK_SIZE": "1", "DEVICE_ID": "0"}
    assert leader == "True"  # a session of its own, as msrun's workers


def test_a_multi_process_job_still_uses_msrun(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(bs.Bootstrap, "run_msrun", lambda self, cmd, env: started.append(cmd) or 0)
    monkeypatch.setattr(bs.Bootstrap, "run_single", lambda self, *a: pytest.fail("2 ranks ran without msrun"))
    spec = write_config(tmp_path / "cfg", cards=2, data_url=str(tmp_path))
    boot = bs.Bootstrap({"HOME": str(tmp_path), "LEO_CACHE_DIR": str(tmp_path / "cache"),
                         "LEO_CONFIG_DIR": str(tmp_path / "cfg")}, io.StringIO())
    spec_, config = bs.load_job(boot.paths)
    assert boot.train(spec_, config, 0, [0, 1], "127.0.0.1", None, tmp_path, None) == 0
    (cmd,) = started
    assert Path(cmd[0]).name == "msrun" and spec.world_size == 2
