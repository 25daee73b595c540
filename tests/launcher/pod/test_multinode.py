"""Multi-node without a cluster: two "nodes" as Linux network namespaces (tests/netns.py).

Each node runs `python -m launcher.bootstrap` with the environment its rendered pod gets:
the Job's container `env` from `leo-launch render` with the downward-API fields filled in
as the kubelet would (completion index -> LEO_NODE_RANK, the node's own address ->
POD_IP/HOST_IP, pod and node names), the storage Secret's keys, and the ConfigMap's
files. Stand-ins for the pod's volumes: LEO_CONFIG_DIR (the ConfigMap mount) and
LEO_CACHE_DIR (the emptyDir) point into the node's own directory, and /tmp/leo-launch
(private to a container) is a private mount per node. Each node's /etc/hosts holds the
headless Service's names (`<job>-<i>.<job>.default.svc`) and its hostname is `<job>-<i>`.
Storage is a real S3 server (SeaweedFS) bound to the bridge address, reached by both
nodes over their veth; nothing leaves loopback and the test range.

1. 2 nodes x 1 CPU worker: msrun across the two addresses trains 6 steps, node 0
   publishes (checkpoints, metrics, result.json, both ranks' logs), both exit 0, and the
   first steps' losses equal one process's run of the same experiment.yaml (as
   tests/leo_core/test_distributed.py).
2. Ascend dynamic rank table, 2 nodes x 2 NPUs, the device-plugin annotation faked per
   node: node 0's rendezvous and node 1 exchange fragments across the two addresses and
   both write the same table, ranks 0..3 server by server. (Training cannot start
   without NPUs: only the table is checked.)
3. Node 1's cable is pulled mid-run: node 0 ends non-zero within the documented bound
   (60 s after a rank's death, leo_core/distributed.py) with a reason; the job restarted
   on both nodes (fresh pods) resumes from the last checkpoint published to train_url.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from launcher.util.s3server import start_s3_server
from tests import msrun_util, netguard, netns
from tests.trajectory import WEIGHT_ATOL, assert_same_weights

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "default"
DATA_BUCKET, RUNS_BUCKET = "leo-mn-data", "leo-mn-runs"
JOBS = ("leo-mn", "leo-mn-rt", "leo-mn-cut")  # one per test; each gets its Service names
STEPS = 6
# kl_weight=0 as in tests/leo_core/test_distributed.py: the KL's gradient is singular at
# the latent std's clamp, so with it two float32 runs part; without it they must agree.
TINY = ["--set", "total_examples_per_class=20", "--set", "num_validation_batches=1",
        "--set", "metavalid_batch_size=4", "--set", "metatest_batch_size=4",
        "--set", "checkpoint_steps=3", "--set", "kl_weight=0"]
DEATH_BOUND_S = 60  # leo_core/distributed.py: every rank and launcher ends within 60 s
CLUSTER_TIMEOUT_S = 90
NODE_TIMEOUT_S = 240  # wall-clock limit of one node's bootstrap in these tests
ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"


# ------------------------------------------------------------------ the machine


@pytest.fixture(scope="module")
def net():
    why = netns.unavailable()
    if why:
        pytest.skip(f"multi-node tests need Linux network namespaces: {why}")
    hosts = {}
    for job in JOBS:
        for i in range(2):
            hosts[f"{job}-{i}.{job}.{NAMESPACE}.svc"] = i
            hosts[f"{job}-{i}.{job}"] = i
    with netns.Network(2, hosts) as network:
        yield network


@pytest.fixture(scope="module")
def s3(net, tmp_path_factory):
    """SeaweedFS on the bridge address: reachable from both nodes (and from here)."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"), host=net.gateway)
    try:
        for bucket in (DATA_BUCKET, RUNS_BUCKET):
            server.create_bucket(bucket)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny(s3, tmp_path_factory):
    """Tiny synthetic embeddings, local (for the reference run) and in s3://leo-mn-data/tiny."""
    from leo_core.synthetic import write_dataset

    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    client = s3.client()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), DATA_BUCKET, f"tiny/{path.relative_to(root)}")
    return root


# ------------------------------------------------------------------ rendered pods


def render(tmp_path: Path, s3, *args: str) -> dict:
    """`leo-launch render --out-dir DIR`: the ConfigMap's files and the pod template's env."""
    import yaml

    out = tmp_path / "manifests"
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "render", "--exp", "mini_5shot", "--nodes", "2",
         "--data-url", f"s3://{DATA_BUCKET}/tiny", "--train-url", f"s3://{RUNS_BUCKET}/train",
         "--storage-secret", "leo-s3", "--storage-endpoint", s3.endpoint,
         "--cluster-timeout", str(CLUSTER_TIMEOUT_S), "--master-port", str(master_port()),
         *TINY, *args, "--out-dir", str(out)],
        env=base_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    objects = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    job = next(o for o in objects if o["kind"] == "Job")
    service = next(o for o in objects if o["kind"] == "Service")
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    return {"config": config["data"], "env": pod["spec"]["containers"][0]["env"],
            "name": job["metadata"]["name"]}


def master_port() -> int:
    """A port per job (the rendezvous takes the next one); the nodes' namespaces are ours
    alone, so any port is free there: keep it below 65534 (render's limit)."""
    return msrun_util.free_port() % 40000 + 20000


def base_env() -> dict[str, str]:
    """What the image gives every process: the interpreter's bin on PATH, the project
    importable (and network-guarded, tests/netguard), no cloud metadata probing, no AWS
    profile of this machine."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "PYTHONPATH": netguard.pythonpath(str(ROOT)),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    return env


def pod_env(rendered: dict, rank: int, address: str, s3, annotations: dict | None = None) -> dict:
    """The container env of node `rank`'s pod, fields filled in as the kubelet does."""
    name = rendered["name"]
    fields = {"metadata.namespace": NAMESPACE, "metadata.name": f"{name}-{rank}-x{rank}pod",
              "status.podIP": address, "status.hostIP": address, "spec.nodeName": f"node-{rank}",
              "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(rank)}
    for key, value in (annotations or {}).items():
        fields[f"metadata.annotations['{key}']"] = value
    secret = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    env = base_env()
    for var in rendered["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            if path in fields:  # an annotation the pod does not have gives ""
                env[var["name"]] = fields[path]
            else:
                assert path.startswith("metadata.annotations["), path
                env[var["name"]] = ""
        else:
            env[var["name"]] = secret[var["valueFrom"]["secretKeyRef"]["key"]]
    return env


class Node:
    """One pod: its directory (config, cache, private /tmp/leo-launch) and its bootstrap."""

    def __init__(self, net, rendered: dict, rank: int, base: Path, s3, *, annotations=None,
                 extra: dict | None = None) -> None:
        self.rank, self.dir = rank, base / f"node{rank}"
        config, self.cache, self.tmp = self.dir / "config", self.dir / "cache", self.dir / "tmp"
        for path in (config, self.cache, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        for key, text in rendered["config"].items():
            (config / key).write_text(text)
        env = pod_env(rendered, rank, net.address(rank), s3, annotations)
        env.update({"LEO_CONFIG_DIR": str(config), "LEO_CACHE_DIR": str(self.cache),
                    "LEO_PUBLISH_INTERVAL": "1", "LEO_EVAL_TASKS": "8", **(extra or {})})
        self.env = env
        cmd = net.command(rank, [sys.executable, "-m", "launcher.bootstrap"],
                          hostname=f"{rendered['name']}-{rank}",
                          private_dirs={"/tmp/leo-launch": self.tmp})
        self.job = msrun_util.Job(cmd, self.dir / "pod", env, cwd=ROOT)

    def output(self) -> str:
        return self.job.output()

    def wait(self, timeout: float = NODE_TIMEOUT_S) -> msrun_util.Result:
        return self.job.wait(timeout)

    def worker_log(self) -> str:
        path = self.cache / "job" / "logs" / f"rank-{self.rank}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def stop(*nodes: Node) -> None:
    for node in nodes:
        node.job.kill()


def describe(*nodes: Node) -> str:
    return "\n".join(f"===== node {n.rank} =====\n{n.job.result().describe(60)}" for n in nodes)


def remote_json(s3, key: str):
    return json.loads(s3.client().get_object(Bucket=RUNS_BUCKET, Key=key)["Body"].read())


def remote_npz(s3, key: str) -> dict[str, np.ndarray]:
    body = s3.client().get_object(Bucket=RUNS_BUCKET, Key=key)["Body"].read()
    with np.load(io.BytesIO(body)) as data:
        return {k: data[k] for k in data.files}


def remote_keys(s3, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=RUNS_BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", [])}


# ------------------------------------------------------------------ 1. train across two addresses


def test_two_nodes_train_publish_and_match_one_process(net, s3, tiny, tmp_path):
    rendered = render(tmp_path, s3, "--name", JOBS[0], "--accel", "cpu", "--cards", "2",
                      "--steps", str(STEPS))
    assert rendered["config"]["experiment.yaml"]
    # The reference: one process, the same experiment.yaml, the same steps.
    (tmp_path / "experiment.yaml").write_text(rendered["config"]["experiment.yaml"])
    started = time.monotonic()
    reference = msrun_util.run_python(
        ["leo_core/train.py", "--config", str(tmp_path / "experiment.yaml"), "--data-root", str(tiny),
         "--out", str(tmp_path / "reference"), "--device", "CPU", "--log-every", "1"],
        log_dir=tmp_path / "reference-logs", timeout=NODE_TIMEOUT_S, env=base_env())
    assert reference.returncode == 0, reference.describe()
    reference_s = time.monotonic() - started

    started = time.monotonic()
    nodes = [Node(net, rendered, rank, tmp_path, s3) for rank in (1, 0)]  # node 1 first: it waits
    node1, node0 = nodes
    try:
        results = {node.rank: node.wait() for node in (node0, node1)}
    finally:
        stop(*nodes)
    job_s = time.monotonic() - started
    report = describe(node0, node1)
    assert results[0].returncode == 0 and results[1].returncode == 0, report
    out0, out1 = node0.output(), node1.output()
    # Node 0 uses its own POD_IP; node 1 found it through the headless Service's name.
    master = f"(master {net.address(0)}:"
    assert master in out0 and master in out1, report
    assert "ranks 1-1 of 2 on cpu" in out1
    assert "[node 1] done" in out1 and "[node 0] done" in out0
    assert f"publishing checkpoints, metrics and logs to s3://{RUNS_BUCKET}/train/{JOBS[0]}" in out0

    prefix = f"train/{JOBS[0]}/"
    keys = remote_keys(s3, prefix)
    for key in ("job.yaml", "experiment.yaml", "result.json", "metrics.jsonl",
                "checkpoints/latest.json", f"checkpoints/step-{STEPS}/weights.npz",
                "logs/rank-0.log", "logs/rank-1.log"):
        assert key in keys, sorted(keys)
    assert remote_json(s3, prefix + "checkpoints/latest.json")["step"] == STEPS
    state = remote_json(s3, prefix + f"checkpoints/step-{STEPS}/state.json")
    assert state["world_size"] == 2
    result = remote_json(s3, prefix + "result.json")
    assert result["job"] == JOBS[0] and result["tasks"] == 8
    rank1_log = s3.client().get_object(Bucket=RUNS_BUCKET, Key=prefix + "logs/rank-1.log")["Body"].read()
    assert rank1_log and rank1_log == (node1.cache / "job/logs/rank-1.log").read_bytes()  # node 1's own

    # The weights equal the one-process run's.
    from leo_core.config import load_experiment
    from leo_core.model import PARAM_NAMES, init_parameters

    two_nodes = remote_npz(s3, prefix + f"checkpoints/step-{STEPS}/weights.npz")
    with np.load(tmp_path / f"reference/checkpoints/step-{STEPS}/weights.npz") as data:
        single = {k: data[k] for k in data.files}
    initial = init_parameters(load_experiment("mini_5shot"), 0)
    moved = max(float(np.abs(single[n] - initial[n]).max()) for n in PARAM_NAMES)
    # The data-parallel step is the one-process step: the same weights and losses.
    losses = [json.loads(line)["loss"] for line in
              s3.client().get_object(Bucket=RUNS_BUCKET, Key=prefix + "metrics.jsonl")["Body"]
              .read().decode().splitlines() if '"kind": "train"' in line]
    reference = [json.loads(line)["loss"] for line in
                 (tmp_path / "reference/metrics.jsonl").read_text().splitlines()
                 if '"kind": "train"' in line]
    assert len(losses) == len(reference) == STEPS
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    worst = assert_same_weights(two_nodes, single, PARAM_NAMES)  # see tests/trajectory.py
    assert moved > 100 * WEIGHT_ATOL, f"training barely moved the weights ({moved})"
    print(f"\n2 nodes x 1 worker: {job_s:.1f} s (1 process: {reference_s:.1f} s); "
          f"median |2 nodes - 1 process| = {worst:.2e}; max |weights - init| = {moved:.2e}")


# ------------------------------------------------------------------ 2. Ascend rank-table exchange


def fake_npus(net, rank: int, cards: int, name: str) -> str:
    """The device plugin's annotation for node `rank`: `cards` NPUs, listed in reverse order
    (the table must sort them), NIC addresses from the test range (never contacted)."""
    base = net.subnet.network_address
    devices = [{"device_id": str(d), "device_ip": str(base + 100 + 10 * rank + d)}
               for d in reversed(range(cards))]
    return json.dumps({"pod_name": f"{name}-{rank}-x{rank}pod", "server_id": net.address(rank),
                       "host_ip": net.address(rank), "devices": devices})


def test_ascend_dynamic_rank_table_is_exchanged_across_the_two_addresses(net, s3, tiny, tmp_path):
    name, per_node = JOBS[1], 2
    rendered = render(tmp_path, s3, "--name", name, "--accel", "ascend", "--cards", str(2 * per_node),
                      "--steps", str(STEPS), "--set", "metatrain_batch_size=12")
    nodes = [Node(net, rendered, rank, tmp_path, s3,
                  annotations={ANNOTATION: fake_npus(net, rank, per_node, name)}) for rank in (1, 0)]
    node1, node0 = nodes
    try:
        # The table is written before training starts; training itself needs NPUs.
        tables = {n.rank: n.tmp / "hccl.json" for n in nodes}
        texts = wait_until(lambda: read_tables(tables), NODE_TIMEOUT_S,
                           "no complete rank table on both nodes", *nodes)
        report = describe(node0, node1)
    finally:
        stop(*nodes)
    assert texts[0] == texts[1], report
    table = json.loads(texts[0])
    assert table["status"] == "completed" and table["server_count"] == "2"
    assert [s["server_id"] for s in table["server_list"]] == [net.address(0), net.address(1)]
    ranks = [d["rank_id"] for s in table["server_list"] for d in s["device"]]
    assert ranks == [str(r) for r in range(2 * per_node)]  # contiguous, server by server
    for rank, server in enumerate(table["server_list"]):
        assert [d["device_id"] for d in server["device"]] == [str(d) for d in range(per_node)]
        assert json.loads(fake_npus(net, rank, per_node, name))["devices"][::-1] == \
            [{"device_id": d["device_id"], "device_ip": d["device_ip"]} for d in server["device"]]
    port = int(rendered_env(rendered)["LEO_MASTER_PORT"]) + 1
    assert f"exchanging rank-table fragments with 2 node(s) via {net.address(0)}:{port}" in node1.output()


def read_tables(paths: dict[int, Path]) -> dict[int, str] | None:
    """Every node's table once each is complete JSON (the bootstrap writes it in place)."""
    texts = {}
    for rank, path in paths.items():
        try:
            texts[rank] = path.read_text()
            json.loads(texts[rank])
        except (OSError, ValueError):
            return None
    return texts


def rendered_env(rendered: dict) -> dict[str, str]:
    return {v["name"]: v["value"] for v in rendered["env"] if "value" in v}


# ------------------------------------------------------------------ 3. a node cut off, then a restart


def wait_until(condition, timeout: float, what: str, *nodes: Node):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout:.0f} s\n{describe(*nodes)}")


def published_step(s3, prefix: str) -> int:
    try:
        return remote_json(s3, prefix + "checkpoints/latest.json")["step"]
    except Exception:  # noqa: BLE001 - not published yet
        return 0


def test_a_node_cut_off_ends_the_job_which_resumes_after_a_restart(net, s3, tiny, tmp_path):
    name, steps = JOBS[2], 40
    prefix = f"train/{name}/"
    rendered = render(tmp_path, s3, "--name", name, "--accel", "cpu", "--cards", "2",
                      "--steps", str(steps))
    first = [Node(net, rendered, rank, tmp_path / "first", s3) for rank in (1, 0)]
    node1, node0 = first
    try:
        # Run until node 0 has published a checkpoint and trained on past it.
        wait_until(lambda: published_step(s3, prefix) >= 3 and "step 5/" in node0.output(),
                   NODE_TIMEOUT_S, "no checkpoint published and step 5 reached", *first)
        net.cut(1)
        cut_at = time.monotonic()
        ended: dict[int, tuple[int, float]] = {}
        while len(ended) < 2 and time.monotonic() - cut_at < DEATH_BOUND_S + 10:
            for node in first:
                if node.rank not in ended and node.job.poll() is not None:
                    ended[node.rank] = (node.job.poll(), time.monotonic() - cut_at)
            time.sleep(0.2)
        report = f"{ended}\n{describe(node0, node1)}"
    finally:
        stop(*first)
        net.reconnect(1)
    print(f"\nnode 1 cut off: exits (code, seconds after the cut): {ended}")
    for node in first:  # 1: retriable, the Job controller replaces the pod
        assert node.rank in ended, f"node {node.rank} still running {DEATH_BOUND_S + 10} s after the cut\n{report}"
        code, seconds = ended[node.rank]
        assert code == 1 and seconds <= DEATH_BOUND_S, report
    # Both say why: node 0's cluster lost rank 1; node 1, cut off, cannot publish either.
    assert "[node 0] training failed: msrun exited with 1" in node0.output(), report
    assert "[node 1] training failed: msrun exited with 1" in node1.output(), report
    assert "[node 1] warning: last publication" in node1.output(), report
    # What made it to train_url before the failure is what the restart resumes from.
    resume_step = published_step(s3, prefix)
    assert 3 <= resume_step < steps and resume_step % 3 == 0

    # The Job controller replaces both pods: fresh directories, same rendered env.
    second = [Node(net, rendered, rank, tmp_path / "second", s3) for rank in (1, 0)]
    node1, node0 = second
    try:
        results = {node.rank: node.wait() for node in (node0, node1)}
    finally:
        stop(*second)
    report = describe(node0, node1)
    assert results[0].returncode == 0 and results[1].returncode == 0, report
    resumed = f"resuming from the checkpoint of step {resume_step} in s3://{RUNS_BUCKET}/{prefix[:-1]}"
    assert f"[node 0] {resumed}" in node0.output() and f"[node 1] {resumed}" in node1.output(), report
    assert f"steps {resume_step}→{steps}" in node0.output(), report
    assert remote_json(s3, prefix + "checkpoints/latest.json")["step"] == steps
    metrics = s3.client().get_object(Bucket=RUNS_BUCKET, Key=prefix + "metrics.jsonl")["Body"].read()
    train_steps = [r["step"] for r in map(json.loads, metrics.decode().splitlines()) if r["kind"] == "train"]
    assert train_steps == list(range(1, steps + 1))  # no step lost or repeated across the restart
