"""The bootstrap under MindCluster's ascend-operator (`--scheduler ascendjob`): the variables
the operator injects decide each pod's role. No Ascend hardware or operator here: the
decisions and the command lines are tested, and the Scheduler pod's bootstrap serves a real
MindSpore cluster of two CPU worker processes."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.pod import bootstrap as bs
from launcher.pod import node
from launcher.spec import contract
from tests.launcher.pod.test_bootstrap import write_config
from tests.msrun_util import free_port


def ascend_spec(tmp_path, cards=16, **values):
    values.setdefault("set_overrides", ["total_examples_per_class=20", f"metatrain_batch_size={cards}"])
    return write_config(tmp_path / "cfg", accelerator="ascend", cards=cards, scheduler="ascendjob",
                        data_url=str(tmp_path / "data"), **values)


def operator_env(role="MS_WORKER", **extra):
    """What the operator injects into a Worker pod of a 2×8 job (env.go), and our POD_IP."""
    env = {"MS_ROLE": role, "MS_SCHED_HOST": "10.96.0.17", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "16",
           "MS_LOCAL_WORKER": "8", "MS_NODE_RANK": "1", "MS_SERVER_NUM": "0", "POD_IP": "10.244.1.5"}
    if role == "MS_SCHED":
        env.update(MS_SCHED_HOST="10.244.0.9", POD_IP="10.244.0.9", MS_LOCAL_WORKER="0", MS_NODE_RANK="0")
    env.update(extra)
    return env


def test_other_schedulers_ignore_the_variables(tmp_path):
    spec = write_config(tmp_path / "cfg", data_url=str(tmp_path))
    assert node.operator_cluster(spec, operator_env()) is None


def test_worker_and_scheduler_roles_from_the_operator(tmp_path):
    spec = ascend_spec(tmp_path)
    worker = node.operator_cluster(spec, operator_env())
    assert (worker.role, worker.sched_host, worker.sched_port, worker.worker_num, worker.local_worker,
            worker.node_rank) == ("worker", "10.96.0.17", 8118, 16, 8, 1)
    assert node.node_rank_of(spec, operator_env()) == 1  # MS_NODE_RANK: worker pods count from 0
    sched = node.operator_cluster(spec, operator_env("MS_SCHED"))
    assert (sched.role, sched.sched_host) == ("scheduler", "10.244.0.9")


@pytest.mark.parametrize("env, message", [
    ({"MS_ROLE": ""}, "MS_ROLE is not set: an AscendJob's pods get MindSpore's cluster variables"),
    ({"MS_ROLE": "MS_PSERVER"}, "expected MS_SCHED or MS_WORKER"),
    ({"MS_SCHED_HOST": ""}, "MS_SCHED_HOST is not set"),
    ({"MS_SCHED_PORT": "http"}, "MS_SCHED_PORT='http'"),
    ({"MS_WORKER_NUM": "8"}, "MS_WORKER_NUM=8 but the job has 16 cards: do the Worker pods request 8"),
    ({"MS_LOCAL_WORKER": "4"}, "MS_LOCAL_WORKER=4 but the job runs 8 processes per node"),
    ({"MS_SCHED_HOST": "10.244.1.5"}, "this worker pod's own address: msrun would start a second"),
])
def test_operator_variables_that_cannot_work_are_bad_configuration(tmp_path, env, message):
    spec = ascend_spec(tmp_path)
    with pytest.raises(node.BadConfig, match=re.escape(message)):
        node.operator_cluster(spec, operator_env(**env))


def test_an_ascendjob_pod_without_the_operator_exits_2(tmp_path):
    ascend_spec(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEO_", "MS_"))}
    env.update(LEO_CONFIG_DIR=str(tmp_path / "cfg"), LEO_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "launcher.bootstrap"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == contract.EXIT_BAD_CONFIG, proc.stdout + proc.stderr
    assert "MS_ROLE is not set" in proc.stdout and "not retrying" in proc.stdout


class FakeProcess:
    """subprocess.Popen's stand-in: records the command, prints nothing, exits 0."""

    started: list[tuple[list[str], dict[str, str]]] = []

    def __init__(self, cmd, *, env, **_):
        self.started.append((list(cmd), dict(env)))
        self.stdout = iter([b"a line\n"])
        self.pid = os.getpid()

    def poll(self):
        return 0

    def wait(self):
        return 0


@pytest.fixture
def fake_popen(monkeypatch):
    FakeProcess.started = []
    monkeypatch.setattr(bs.subprocess, "Popen", FakeProcess)
    return FakeProcess.started


def boot(tmp_path, env):
    full = {"LEO_CONFIG_DIR": str(tmp_path / "cfg"), "LEO_CACHE_DIR": str(tmp_path / "cache"),
            "PATH": os.environ.get("PATH", ""), **env}
    out = io.StringIO()
    return bs.Bootstrap(full, out), out


def test_the_worker_pod_joins_the_operators_scheduler_with_msrun(tmp_path, fake_popen, monkeypatch):
    ascend_spec(tmp_path, master_port=8200)
    boot_, out = boot(tmp_path, operator_env(MS_SCHED_PORT="2222", MS_NODE_RANK="1"))
    monkeypatch.setattr(boot_, "stage_data", lambda spec, config: tmp_path / "data")
    assert boot_.run() == 0
    ((cmd, env),) = fake_popen  # node 1: training only (node 0 also evaluates)
    args = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert Path(cmd[0]).name == "msrun"
    assert (args["--master_addr"], args["--master_port"], args["--node_rank"]) == ("10.96.0.17", "2222", "1")
    assert (args["--worker_num"], args["--local_worker_num"]) == ("16", "8")
    assert "--rank_table_file" not in cmd and "RANK_TABLE_FILE" not in env  # rank table: none
    assert cmd[cmd.index("--device") + 1] == "Ascend"
    # msrun sets MindSpore's variables itself: none of the operator's reach its workers
    assert not [k for k in env if k.startswith("MS_") and k != "MS_NODE_TIMEOUT"]
    assert "[node 1] job leo-b: mini_5shot, node 1 of 2, ranks 8-15 of 16 on ascend" in out.getvalue()


def test_the_scheduler_pod_runs_the_scheduler_role_only(tmp_path, fake_popen, monkeypatch):
    ascend_spec(tmp_path, rank_table="controller")
    boot_, out = boot(tmp_path, operator_env("MS_SCHED", MS_SCHED_PORT="2222",
                                             RANK_TABLE_FILE=contract.CONTROLLER_RANK_TABLE_PATH))
    monkeypatch.setattr(boot_, "stage_data", lambda *a: pytest.fail("the scheduler stages no data"))
    assert boot_.run() == 0
    ((cmd, env),) = fake_popen
    assert cmd[0] == sys.executable and cmd[1].endswith(os.path.join("leo_core", "train.py"))
    assert cmd[cmd.index("--device") + 1] == "CPU"  # no NPUs on this pod
    assert (env["MS_ROLE"], env["MS_SCHED_HOST"], env["MS_SCHED_PORT"], env["MS_WORKER_NUM"]) == \
        ("MS_SCHED", "10.244.0.9", "2222", "16")
    assert "MS_LOCAL_WORKER" not in env and "MS_NODE_RANK" not in env
    assert "RANK_TABLE_FILE" not in env
    text = out.getvalue()
    assert "[node scheduler] job leo-b: MindSpore scheduler of 16 worker process(es) on 2 node(s)" in text
    assert "[node scheduler] a line" in text and "msrun" not in text


WORKER = textwrap.dedent("""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    init()
    print("worker", get_rank(), "of", get_group_size(), flush=True)
""")


@pytest.mark.integration
def test_the_scheduler_pods_bootstrap_serves_two_cpu_workers_and_ends_with_them(tmp_path):
    """As in an AscendJob: the Scheduler pod's bootstrap with the operator's variables, and
    two worker processes with MindSpore's (what msrun gives each on a Worker pod)."""
    ascend_spec(tmp_path, cards=2, set_overrides=["total_examples_per_class=20"])
    port = str(free_port())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LEO_", "MS_"))}
    common = {"MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": port, "MS_WORKER_NUM": "2", "GLOG_v": "3",
              "MS_TOPO_TIMEOUT": "60"}
    sched = subprocess.Popen(
        [sys.executable, "-m", "launcher.bootstrap"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**base, **common, "MS_ROLE": "MS_SCHED", "MS_LOCAL_WORKER": "0", "MS_NODE_RANK": "0",
                        "LEO_CONFIG_DIR": str(tmp_path / "cfg"), "LEO_CACHE_DIR": str(tmp_path / "cache")})
    workers = [subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**base, **common, "MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(i)})
               for i in range(2)]
    try:
        outputs = [w.communicate(timeout=180)[0] for w in workers]
        text, _ = sched.communicate(timeout=60)
    finally:
        for proc in (sched, *workers):
            if proc.poll() is None:
                proc.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert sorted(line for out in outputs for line in out.splitlines() if line.startswith("worker")) == \
        ["worker 0 of 2", "worker 1 of 2"]
    assert sched.returncode == 0, text
    assert f"MindSpore scheduler of 2 worker process(es) on 1 node(s) at 127.0.0.1:{port}" in text
    assert "[node scheduler] done: the workers have finished" in text
    assert not (tmp_path / "cache" / "job" / "out").exists()  # no outputs, no data staged
