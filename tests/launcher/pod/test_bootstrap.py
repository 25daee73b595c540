"""The bootstrap's parts that need no training run: configuration and its exit code 2,
node ranks, data checks, log relaying with rank tags, rank tables, and killing every
process of a launch. (A whole run is in tests/launcher/backends/test_local.py.)"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.pod import bootstrap as bs
from launcher.pod import logrelay, node
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec.jobspec import build_job_spec
from launcher.spec.ranktable import InventoryNode
from launcher.util import procs


def write_config(directory: Path, **values) -> js.JobSpec:
    values.setdefault("set_overrides", ["total_examples_per_class=20"])
    spec = build_job_spec(experiment="mini_5shot", accelerator=values.pop("accelerator", "cpu"),
                          cards=values.pop("cards", 2), name=values.pop("name", "leo-b"), **values)
    from launcher.render.render import render

    config = next(o for o in render(spec) if o["kind"] == "ConfigMap")
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in config["data"].items():
        (directory / key).write_text(text)
    return spec


def run_bootstrap(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LEO_", "MS_"))}
    full.update({"LEO_CACHE_DIR": str(tmp_path / "cache"), **env})
    return subprocess.run([sys.executable, "-m", "launcher.bootstrap"], env=full, capture_output=True,
                          text=True, timeout=120)


def test_a_missing_config_is_bad_configuration_exit_2(tmp_path):
    proc = run_bootstrap(tmp_path, LEO_CONFIG_DIR=str(tmp_path / "nowhere"), LEO_NODE_RANK="0")
    assert proc.returncode == contract.EXIT_BAD_CONFIG, proc.stdout + proc.stderr
    assert proc.stdout.startswith("[node ?] error: cannot read the job spec")
    assert "is the job's ConfigMap mounted" in proc.stdout and "not retrying" in proc.stdout


def test_data_without_the_experiments_embeddings_is_exit_2_before_training(tmp_path):
    data = tmp_path / "data" / "tieredImageNet" / "center"
    data.mkdir(parents=True)
    write_config(tmp_path / "cfg", data_url=str(tmp_path / "data"))
    proc = run_bootstrap(tmp_path, LEO_CONFIG_DIR=str(tmp_path / "cfg"), LEO_NODE_RANK="0")
    assert proc.returncode == contract.EXIT_BAD_CONFIG, proc.stdout + proc.stderr
    assert "[node 0] error: the staged data has no miniImageNet/center/train_embeddings.pkl" in proc.stdout
    assert "msrun" not in proc.stdout

    write_config(tmp_path / "cfg", data_url=str(tmp_path / "missing"))
    proc = run_bootstrap(tmp_path, LEO_CONFIG_DIR=str(tmp_path / "cfg"), LEO_NODE_RANK="0")
    assert proc.returncode == contract.EXIT_BAD_CONFIG and "no such file or directory" in proc.stdout


def test_a_failing_node_writes_its_one_line_reason_as_the_termination_message(tmp_path):
    """Issue 22 item 17: no termination message was written, so status could not say why."""
    log = tmp_path / "termination-log"
    write_config(tmp_path / "cfg", data_url=str(tmp_path / "missing"))
    proc = run_bootstrap(tmp_path, LEO_CONFIG_DIR=str(tmp_path / "cfg"), LEO_NODE_RANK="0",
                         LEO_TERMINATION_LOG=str(log))
    assert proc.returncode == contract.EXIT_BAD_CONFIG, proc.stdout + proc.stderr
    reason = log.read_text()
    assert reason.endswith("(bad configuration: not retrying)\n") and reason.count("\n") == 1
    assert reason.startswith("error: data_url ") and "no such file or directory" in reason
    # success writes nothing; the kubelet's /dev/termination-log is never created elsewhere
    log.unlink()
    bs.write_termination_message("", {contract.ENV_TERMINATION_LOG: str(log)})
    assert not log.exists()
    if not Path(contract.TERMINATION_LOG).exists():
        bs.write_termination_message("error: x", {})
        assert not Path(contract.TERMINATION_LOG).exists()


@pytest.mark.parametrize("content", ["escaping", "not a zip"])
def test_unusable_data_is_bad_configuration_not_retried(tmp_path, content):
    # issue 22 item 16: these were retried 4 times (exit 1) though no retry can help
    import zipfile

    archive = tmp_path / "data.zip"
    if content == "escaping":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("../evil.txt", "x")
    else:
        archive.write_bytes(b"PK this is not a zip")
    data_url = f"file://{archive}"
    write_config(tmp_path / "cfg", data_url=data_url)
    proc = run_bootstrap(tmp_path, LEO_CONFIG_DIR=str(tmp_path / "cfg"), LEO_NODE_RANK="0")
    assert proc.returncode == contract.EXIT_BAD_CONFIG, proc.stdout + proc.stderr
    assert "not retrying" in proc.stdout and "data_url" in proc.stdout
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "evil.txt").exists()


def test_load_job_checks_the_experiment_against_the_spec(tmp_path):
    write_config(tmp_path)
    (tmp_path / contract.EXPERIMENT_FILE).write_text("name: mini_1shot\n")
    with pytest.raises(node.BadConfig, match="is experiment 'mini_1shot' but the job is 'mini_5shot'"):
        node.load_job(node.Paths(tmp_path, tmp_path, tmp_path))
    (tmp_path / contract.EXPERIMENT_FILE).write_text("name: mini_5shot\nouter_rl: 1\n")
    with pytest.raises(node.BadConfig, match="outer_rl"):
        node.load_job(node.Paths(tmp_path, tmp_path, tmp_path))


def test_node_rank_from_the_environment_or_the_inventory():
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=4, nodes=2)
    assert node.node_rank_of(spec, {"JOB_COMPLETION_INDEX": "1"}) == 1
    assert node.node_rank_of(spec, {"VC_TASK_INDEX": "0"}) == 0
    with pytest.raises(node.BadConfig, match="outside 0..1"):
        node.node_rank_of(spec, {"LEO_NODE_RANK": "2"})
    nodes = tuple(InventoryNode(f"node-{i}", f"10.0.0.{i + 1}",
                                tuple(f"192.168.{i}.{d}" for d in range(8))) for i in range(2))
    ascend = js.JobSpec(name="leo-a", experiment="mini_5shot", accelerator="ascend", cards=16, nodes=2,
                        rank_table="file", inventory=nodes, overrides=(("metatrain_batch_size", "16"),))
    assert node.node_rank_of(ascend, {"NODE_NAME": "node-1", "JOB_COMPLETION_INDEX": "0"}) == 1
    with pytest.raises(node.BadConfig, match="NODE_NAME"):
        node.node_rank_of(ascend, {})


def test_rank_tables_for_ascend_only(tmp_path):
    out = logrelay.Output(io.StringIO(), 0)
    cpu = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2)
    assert node.prepare_rank_table(cpu, 0, {}, "127.0.0.1", out) is None
    nodes = tuple(InventoryNode(f"node-{i}", f"10.0.0.{i + 1}",
                                tuple(f"192.168.{i}.{d}" for d in range(8))) for i in range(2))
    spec = js.JobSpec(name="leo-a", experiment="mini_5shot", accelerator="ascend", cards=16, nodes=2,
                      rank_table="file", inventory=nodes, overrides=(("metatrain_batch_size", "16"),))
    write_config(tmp_path, accelerator="ascend", cards=16, nodes=2, name="leo-a",
                 set_overrides=["metatrain_batch_size=16"], rank_table=None)
    with pytest.raises(node.BadConfig, match="rank table"):  # no hccl.json in that ConfigMap
        node.prepare_rank_table(spec, 1, {}, "10.0.0.1", out, config_dir=tmp_path)
    from launcher.spec import ranktable
    (tmp_path / contract.RANK_TABLE_FILE).write_text(ranktable.dumps(
        ranktable.build_table(ranktable.inventory_fragments(nodes))))
    assert node.prepare_rank_table(spec, 1, {}, "10.0.0.1", out, config_dir=tmp_path) == \
        str(tmp_path / contract.RANK_TABLE_FILE)


@pytest.mark.parametrize("mount", js.ASCEND_DRIVER_MOUNTS)
def test_dynamic_rank_table_without_device_ips_is_bad_configuration(tmp_path, monkeypatch, mount):
    from launcher.spec import ranktable
    monkeypatch.setattr(ranktable, "HCCN_CONF", str(tmp_path / "hccn.conf"))  # not mounted
    out = logrelay.Output(io.StringIO(), 0)
    spec = build_job_spec(experiment="mini_5shot", accelerator="ascend", cards=8, ascend_driver_mount=mount)
    with pytest.raises(node.BadConfig) as info:
        node.prepare_rank_table(spec, 0, {}, "10.0.0.1", out)
    message = str(info.value)
    assert "\n" not in message and "device-plugin annotation" in message and "hccn.conf" in message
    if mount == "runtime":  # no hostPath hccn.conf then: say where the IPs must come from
        assert contract.ASCEND_DEVICE_ANNOTATION in message and "--ascend-driver-mount hostpath" in message
    else:
        assert "No such file" in message


def test_small_settings():
    from leo_core.config import load_experiment

    cfg = load_experiment("mini_5shot")
    assert node.log_every(cfg) == 100 and node.eval_tasks(cfg, {}) == 10_000
    tiny = load_experiment("mini_5shot", ["checkpoint_steps=3", "metatest_batch_size=4"])
    assert node.log_every(tiny) == 1 and node.eval_tasks(tiny, {}) == 200
    assert node.eval_tasks(tiny, {contract.ENV_EVAL_TASKS: "50"}) == 50
    with pytest.raises(node.BadConfig):
        node.eval_tasks(tiny, {contract.ENV_EVAL_TASKS: "many"})
    assert node.resolve_master("10.1.2.3", 1) == "10.1.2.3"
    assert node.resolve_master("[::1]", 1) == "::1"


def test_the_log_relay_tags_each_rank_and_keeps_rank_logs(tmp_path):
    msrun_dir, logs = tmp_path / "msrun", tmp_path / "logs"
    msrun_dir.mkdir()
    stream = io.StringIO()
    relay = logrelay.LogRelay(msrun_dir, [2, 3], logs, logrelay.Output(stream, 1))
    (msrun_dir / "worker_2.log").write_bytes(b"step 1\n[INFO] DISTRIBUTED(1,2,python): noise\npart")
    relay.pump()
    assert stream.getvalue() == "[rank 2] step 1\n"
    with open(msrun_dir / "worker_2.log", "ab") as handle:
        handle.write(b"ial line\nlast without newline")
    (msrun_dir / "worker_3.log").write_bytes(b"[WARNING] ME(7): kept\n")
    relay.pump()
    relay.write_line(2, "evaluating: 10/10")
    relay.close()
    assert stream.getvalue().splitlines() == [
        "[rank 2] step 1", "[rank 2] partial line", "[rank 3] [WARNING] ME(7): kept",
        "[rank 2] evaluating: 10/10", "[rank 2] last without newline"]
    assert (logs / "rank-2.log").read_text() == "step 1\npartial line\nevaluating: 10/10\nlast without newline\n"
    assert (logs / "rank-3.log").read_text() == "[WARNING] ME(7): kept\n"


def test_kill_marked_finds_processes_in_sessions_of_their_own():
    """msrun puts every worker in a new session: the mark in the environment finds them."""
    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, contract.ENV_PROCESS_MARK: mark}
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
            "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(procs.marked_processes(contract.ENV_PROCESS_MARK, mark)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        found = procs.marked_processes(contract.ENV_PROCESS_MARK, mark)
        assert len(found) == 2
        groups = {os.getpgid(p.pid) for p in found}
        assert len(groups) == 2  # two sessions: one killpg would not do
        assert procs.kill_marked(contract.ENV_PROCESS_MARK, mark) == 2
        assert procs.marked_processes(contract.ENV_PROCESS_MARK, mark) == []
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        procs.kill_marked(contract.ENV_PROCESS_MARK, mark)


def test_the_last_publication_after_a_failure_is_bounded():
    """A node cut off from storage must still exit soon after its training failed."""
    import threading

    release = threading.Event()

    class Stuck:
        url = "s3://unreachable/job"
        closed = False

        def final(self):
            release.wait(30)

        def close(self):
            self.closed = True

    stream = io.StringIO()
    boot = bs.Bootstrap({}, stream)
    boot.out.node_rank = 1
    boot.publisher = stuck = Stuck()
    started = time.monotonic()
    try:
        boot.finish_publishing(0.3)
    finally:
        release.set()
        bs.ABANDONED_PUBLICATION.clear()
    assert time.monotonic() - started < 5
    assert stream.getvalue() == ("[node 1] warning: last publication gave up after 0.3 s "
                                 "(is s3://unreachable/job reachable?)\n")
    assert boot.publisher is None and not stuck.closed


@pytest.mark.integration
def test_an_empty_data_prefix_is_bad_data(s3_env, tmp_path):
    import secrets

    from launcher.pod.stage import BadData
    from launcher.pod.stage import stage as stage_data
    from launcher.storage import StorageOptions

    bucket = s3_env.create_bucket("leo-empty-" + secrets.token_hex(4))
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, progress=False)
    with pytest.raises(BadData, match="holds no files"):
        stage_data(f"s3://{bucket}/nothing-here", tmp_path / "cache", options=options)


def test_training_processes_get_the_bootstrap_start_time(tmp_path):
    """leo_core.train times start-up from LEO_START_TIME: the bootstrap's own start, not
    msrun's or the worker's (their start-up is part of what is measured)."""
    before = time.time()
    boot = bs.Bootstrap(environ={"LEO_START_TIME": "1", "HOME": str(tmp_path)}, stream=io.StringIO())
    started = float(boot.child_env()[bs.ENV_START_TIME])
    assert bs.ENV_START_TIME == "LEO_START_TIME" and before - 0.01 <= started <= time.time() + 0.01


def test_mindspore_threads_follow_the_cpu_limit(tmp_path, monkeypatch):
    """LEO_MS_THREADS from cgroup v2's cpu.max, shared among the node's workers; unlimited
    or unreadable: MindSpore's default; an explicit setting wins."""
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(bs, "CPU_MAX_FILE", cpu_max)
    assert bs.cpu_limit(cpu_max) is None  # no file
    cpu_max.write_text("max 100000\n")
    assert bs.cpu_limit(cpu_max) is None
    cpu_max.write_text("250000 100000\n")
    assert bs.cpu_limit(cpu_max) == 3
    boot = bs.Bootstrap(environ={"HOME": str(tmp_path)}, stream=io.StringIO())
    assert boot.worker_env(1)[bs.ENV_MS_THREADS] == "3"
    assert boot.worker_env(2)[bs.ENV_MS_THREADS] == "1"
    assert bs.ENV_MS_THREADS not in boot.child_env()
    cpu_max.write_text("50000 100000\n")
    assert boot.worker_env(4)[bs.ENV_MS_THREADS] == "1"
    mine = bs.Bootstrap(environ={"HOME": str(tmp_path), bs.ENV_MS_THREADS: "2"}, stream=io.StringIO())
    assert mine.worker_env(1)[bs.ENV_MS_THREADS] == "2"
