"""The CPU image, built for real with podman, runs the rendered pod against SeaweedFS.

The image is built from images/cpu/Dockerfile as `make image-cpu DOCKER=podman` builds it,
on a stand-in base for python:3.11-slim-bookworm and a host wheelhouse (tests/podman_images.py:
no registry is reachable here). Each pod is the Job's pod template from `leo-launch render`,
turned into `podman run` by tests/podrun.py (command, env with the downward API filled in,
the ConfigMap mounted read-only with the kubelet's `..data` layout, emptyDirs, /dev/shm,
--user/--group-add/--cap-drop ALL/no-new-privileges, --cpus/--memory). The containers share
the host's network namespace, so they reach SeaweedFS on 127.0.0.1 and nothing else is
addressed; the headless Service's names resolve to 127.0.0.1 (--add-host).

Needs podman, runc and debootstrap (`.ci/run` and `make test-deps` install them): without
them these tests fail, they do not skip. A developer may set LEO_SKIP_IMAGE_TESTS=1 to skip
them locally; CI (`CI` set) refuses that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests import msrun_util, podman_images
from tests.podrun import PodFacts, PodRun

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[3]
DATA_BUCKET, RUNS_BUCKET = "leo-img-data", "leo-img-runs"
STEPS = 6
TINY = ["--set", "total_examples_per_class=20", "--set", "num_validation_batches=1",
        "--set", "metavalid_batch_size=4", "--set", "metatest_batch_size=4",
        "--set", "checkpoint_steps=2"]
POD_TIMEOUT_S = 300
SECRET = "leo-s3"


@pytest.fixture(scope="module")
def cpu_image():
    if os.environ.get("LEO_SKIP_IMAGE_TESTS") == "1":
        if os.environ.get("CI"):
            pytest.fail("LEO_SKIP_IMAGE_TESTS=1 is refused in CI: the image tests must run")
        pytest.skip("LEO_SKIP_IMAGE_TESTS=1 (a developer's opt-out; CI refuses it)")
    missing = podman_images.missing_tools()
    if missing:
        pytest.fail(f"the image tests need {', '.join(missing)}: apt-get install podman buildah runc "
                    "debootstrap uidmap (make test-deps, or .ci/run)")
    tag, seconds = podman_images.build_cpu_image()
    size = int(podman_images.podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\nCPU image {tag}: built in {seconds:.0f} s, {size / 1e9:.2f} GB")
    return tag


@pytest.fixture(scope="module")
def s3(s3_server):
    for bucket in (DATA_BUCKET, RUNS_BUCKET):
        try:
            s3_server.create_bucket(bucket)
        except Exception:  # noqa: BLE001 - the session's server may have it already
            pass
    return s3_server


@pytest.fixture(scope="module")
def tiny(s3, tmp_path_factory):
    from leo_core.synthetic import write_dataset

    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    client = s3.client()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), DATA_BUCKET, f"tiny/{path.relative_to(root)}")
    return f"s3://{DATA_BUCKET}/tiny"


def cli_env(s3) -> dict[str, str]:
    return {**os.environ, **s3.env(), "AWS_EC2_METADATA_DISABLED": "true"}


def render(tmp_path: Path, s3, name: str, *args: str, data_url: str) -> dict:
    """`leo-launch render --out-dir DIR`: the ConfigMap's files and the Job's pod template."""
    out = tmp_path / f"manifests-{name}"
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "render", "--name", name, "--exp", "mini_5shot",
         "--accel", "cpu", "--data-url", data_url, "--train-url", f"s3://{RUNS_BUCKET}/train",
         "--storage-secret", SECRET, "--storage-endpoint", s3.endpoint,
         "--master-port", str(msrun_util.free_port() % 40000 + 20000), *TINY, *args, "--out-dir", str(out)],
        env=cli_env(s3), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    objects = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    job = next(o for o in objects if o["kind"] == "Job")
    service = next(o for o in objects if o["kind"] == "Service")
    return {"name": job["metadata"]["name"], "pod": job["spec"]["template"], "service": service,
            "configmaps": {config["metadata"]["name"]: config["data"]}}


class Pod:
    """One container running node `rank` of a rendered job; removed by stop()."""

    def __init__(self, image: str, rendered: dict, s3, tmp_path: Path, rank: int = 0,
                 attempt: int = 0, addresses: list[str] | None = None,
                 network: list[str] | None = None) -> None:
        job = rendered["name"]
        self.name = f"{job}-{rank}-a{attempt}-{uuid.uuid4().hex[:6]}"
        addresses = addresses or ["127.0.0.1"]
        # the headless Service's names of every pod of the job, as its DNS answers them
        hosts = {}
        for i, address in enumerate(addresses):
            hosts |= {f"{job}-{i}.{job}.default.svc": address, f"{job}-{i}.{job}": address}
        run = PodRun(rendered["pod"], image=image, workdir=tmp_path / self.name,
                     facts=PodFacts(name=f"{job}-{rank}-x{attempt}", node_name=f"node-{rank}",
                                    pod_ip=addresses[rank], host_ip=addresses[rank],
                                    annotations={"batch.kubernetes.io/job-completion-index": str(rank)}),
                     configmaps=rendered["configmaps"],
                     secrets={SECRET: {"AWS_ACCESS_KEY_ID": s3.access_key,
                                       "AWS_SECRET_ACCESS_KEY": s3.secret_key}},
                     hosts=hosts)
        # test knobs the bootstrap reads (as in test_multinode.py): publish every second,
        # a meta-test of 8 tasks
        self.termination_log = run.termination_log
        argv = run.argv(name=self.name, network=network or ["--network", "host"],
                        extra_env={"LEO_PUBLISH_INTERVAL": "1", "LEO_EVAL_TASKS": "8"})
        self.log = (tmp_path / f"{self.name}.log").open("w+")
        self.proc = subprocess.Popen(["podman", *argv], env=podman_images.podman_env(),
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = POD_TIMEOUT_S) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        podman_images.podman("kill", "--signal", "KILL", self.name, check=False, timeout=60)
        self.proc.wait(60)

    def stop(self) -> None:
        podman_images.podman("rm", "-f", "-t", "0", self.name, check=False, timeout=60)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def remote_json(s3, key: str):
    return json.loads(s3.client().get_object(Bucket=RUNS_BUCKET, Key=key)["Body"].read())


def remote_keys(s3, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=RUNS_BUCKET, Prefix=prefix)
    return {obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", [])}


def cli(s3, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *argv], env=cli_env(s3), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------ scenarios


def test_one_node_two_ranks_train_publish_and_the_cli_reads_it(cpu_image, s3, tiny, tmp_path):
    rendered = render(tmp_path, s3, "leo-img-1", "--cards", "2", "--steps", str(STEPS), data_url=tiny)
    pod = Pod(cpu_image, rendered, s3, tmp_path)
    try:
        started = time.monotonic()
        code = pod.wait()
        seconds = time.monotonic() - started
        out = pod.output()
    finally:
        pod.stop()
    assert code == 0, out[-6000:]
    assert "ip: not found" not in out  # msrun's `ip -j addr` finds iproute2
    assert "[node 0] done" in out, out[-4000:]
    prefix = f"train/{rendered['name']}/"
    keys = remote_keys(s3, prefix)
    for key in ("result.json", "metrics.jsonl", "checkpoints/latest.json",
                f"checkpoints/step-{STEPS}/weights.npz", "logs/rank-0.log", "logs/rank-1.log"):
        assert key in keys, sorted(keys)
    assert remote_json(s3, prefix + "checkpoints/latest.json")["step"] == STEPS
    assert remote_json(s3, prefix + f"checkpoints/step-{STEPS}/state.json")["world_size"] == 2
    print(f"\n1 node x 2 ranks in the image: {seconds:.1f} s")

    url = f"s3://{RUNS_BUCKET}/train/{rendered['name']}"
    storage = ["--storage-endpoint", s3.endpoint, "--path-style"]
    pulled = cli(s3, "pull", url, "--to", str(tmp_path / "pulled"), *storage, cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert any((tmp_path / "pulled").rglob("*.ckpt")), list((tmp_path / "pulled").rglob("*"))
    report = cli(s3, "report", url, "-o", "json", *storage, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    summary = json.loads(report.stdout)
    assert (summary["name"], summary["accelerator"], summary["cards"]) == (rendered["name"], "cpu", 2)
    assert summary["step"] == STEPS and summary["records"]["train"] == STEPS, summary
    assert summary["meta_test"] is not None, summary


def test_a_bad_data_url_exits_2(cpu_image, s3, tmp_path):
    # a data_url with another dataset than the experiment's (the bootstrap treats an empty
    # prefix, or one without any dataset folder, as retriable: exit 1)
    s3.client().put_object(Bucket=DATA_BUCKET, Key="tiered-only/tieredImageNet/center/README.txt",
                           Body=b"not the miniImageNet embeddings")
    rendered = render(tmp_path, s3, "leo-img-bad", "--cards", "2", "--steps", str(STEPS),
                      data_url=f"s3://{DATA_BUCKET}/tiered-only")
    pod = Pod(cpu_image, rendered, s3, tmp_path)
    try:
        code, out = pod.wait(), pod.output()
    finally:
        pod.stop()
    assert code == 2, out[-4000:]
    assert "the staged data has no miniImageNet/center/train_embeddings.pkl" in out, out[-4000:]
    assert "bad configuration: not retrying" in out and "Traceback" not in out, out[-4000:]
    # the one-line reason the kubelet would put in the pod's status (status shows it)
    reason = pod.termination_log.read_text()
    assert "no miniImageNet/center/train_embeddings.pkl" in reason and reason.count("\n") <= 1, reason


def test_a_killed_containers_successor_resumes_from_the_bucket(cpu_image, s3, tiny, tmp_path):
    steps = 40
    rendered = render(tmp_path, s3, "leo-img-kill", "--cards", "2", "--steps", str(steps), data_url=tiny)
    prefix = f"train/{rendered['name']}/"
    first = Pod(cpu_image, rendered, s3, tmp_path, attempt=0)
    try:
        deadline = time.monotonic() + POD_TIMEOUT_S
        # the first checkpoint after step 0 (a fresh job publishes its initial weights too)
        while ("checkpoints/latest.json" not in remote_keys(s3, prefix)
               or remote_json(s3, prefix + "checkpoints/latest.json")["step"] == 0):
            assert first.proc.poll() is None, first.output()[-4000:]
            assert time.monotonic() < deadline, first.output()[-4000:]
            time.sleep(0.5)
        first.kill()
    finally:
        first.stop()
    published = remote_json(s3, prefix + "checkpoints/latest.json")["step"]
    assert 0 < published < steps
    second = Pod(cpu_image, rendered, s3, tmp_path, attempt=1)  # a new pod: empty /cache
    try:
        code, out = second.wait(), second.output()
    finally:
        second.stop()
    assert code == 0, out[-6000:]
    assert "resuming from the checkpoint of step" in out, out[-4000:]
    assert remote_json(s3, prefix + "checkpoints/latest.json")["step"] == steps


def test_the_modelarts_style_entry_runs_a_cpu_job_in_the_cpu_image(cpu_image, s3, tiny, tmp_path):
    # No --device_target: the image's LEO_ACCELERATOR says cpu (the fallback is ascend).
    name = f"leo-ma-{uuid.uuid4().hex[:6]}"
    tiny_sets = [f"--set={value}" for value in TINY[1::2]]
    argv = ["run", "--rm", "--name", name, "--network", "host", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--env", f"AWS_ACCESS_KEY_ID={s3.access_key}", "--env", f"AWS_SECRET_ACCESS_KEY={s3.secret_key}",
            "--env", "AWS_EC2_METADATA_DISABLED=true", "--env", "LEO_EVAL_TASKS=8",
            cpu_image, f"--data_url={tiny}", f"--train_url=s3://{RUNS_BUCKET}/modelarts",
            f"--storage-endpoint={s3.endpoint}", "--steps=2", "--enable_modelarts=True", *tiny_sets]
    try:
        result = podman_images.podman(*argv, check=False, timeout=POD_TIMEOUT_S)
    finally:
        podman_images.podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "ip: not found" not in out
    keys = remote_keys(s3, "modelarts/leo-mini-1shot-cpu1/")
    assert {"result.json", "checkpoints/latest.json"} <= keys, sorted(keys)


# One 1-shot LEO step in the image, with the image's fused operators and with MindSpore's
# built-in ones (LEO_FUSED_OPS=0), in one process: its loss and gradients.
FUSED_STEP = """
import json, os
import numpy as np
from leo_core import fused_ops
from leo_core.config import load_experiment
from leo_core.model import LEO, sample_noise

cfg = load_experiment("mini_1shot", [])
b, n, q = 4, cfg.num_classes, 15
rng = np.random.default_rng(0)
def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)
tr_x, val_x = unit(np.abs(rng.standard_normal((b, n, 1, 640)))), unit(np.abs(rng.standard_normal((b, n, q, 640))))
tr_y, val_y = (np.broadcast_to(np.arange(n)[None, :, None], (b, n, m)).copy() for m in (1, q))
noise = sample_noise(cfg, seed=0, step=1, tasks=range(b), num_queries=q)
out = {"library": str(fused_ops.active_library())}
for switch in ("1", "0"):
    os.environ[fused_ops.ENV] = switch
    model = LEO(cfg)
    loss, _, _, grads = model.loss_and_grads(tr_x, tr_y, val_x, val_y, noise, task_weight=1.0 / b)
    out[switch] = {"fused": model.fused, "loss": loss, "grads": {k: v.tolist() for k, v in grads.items()}}
print(json.dumps(out))
"""


def test_the_cpu_image_uses_its_prebuilt_fused_operators(cpu_image):
    name = f"leo-fused-{uuid.uuid4().hex[:6]}"
    # as the pods run it: the training user, no capabilities, no C++ compiler in the image
    argv = ["run", "--rm", "--name", name, "--network", "none", "--user", "1000:1000", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--entrypoint", "python", cpu_image]
    try:
        which = podman_images.podman(*argv, "-c", "import shutil; print(shutil.which('g++'), "
                                     "shutil.which('c++'), shutil.which('gcc'))", timeout=120)
        result = podman_images.podman(*argv, "-c", FUSED_STEP, check=False, timeout=POD_TIMEOUT_S)
    finally:
        podman_images.podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
    assert which.stdout.split() == ["None"] * 3
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "fused CPU operators unavailable" not in result.stderr, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["library"] == "/opt/leo-launch/fused_ops.so"
    fused, builtin = out["1"], out["0"]
    assert fused["fused"] is True and builtin["fused"] is False
    assert abs(fused["loss"] - builtin["loss"]) <= 1e-5 * abs(builtin["loss"])
    for key, want in builtin["grads"].items():
        got, want = np.asarray(fused["grads"][key]), np.asarray(want)
        # MindSpore's Exp differs from the library's by ~4e-6 relative, amplified where a
        # weight's std sits at its clamp (random parameters: ~1.5e-3 of the largest entry
        # on this machine's host build as well); test_model.py checks the tight bound
        assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max(), key


def test_two_containers_as_two_nodes_train_one_job(cpu_image, tmp_path_factory, tmp_path):
    """Each container joins its own network namespace (tests/netns.py: a veth on a bridge,
    a test address); SeaweedFS listens on the bridge; the Service names resolve to the
    nodes' addresses."""
    from launcher.util.s3server import start_s3_server
    from tests import netns

    why = netns.unavailable()
    if why:
        pytest.fail(f"the two-node image test needs network namespaces: {why}")
    job = "leo-img-mn"
    with netns.Network(2) as net:
        server = start_s3_server(tmp_path_factory.mktemp("s3-mn"), host=net.gateway)
        pods = []
        try:
            for bucket in (DATA_BUCKET, RUNS_BUCKET):
                server.create_bucket(bucket)
            from leo_core.synthetic import write_dataset

            root = tmp_path / "tiny"
            write_dataset(root, "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                server.client().upload_file(str(path), DATA_BUCKET, f"tiny/{path.relative_to(root)}")
            rendered = render(tmp_path, server, job, "--nodes", "2", "--cards", "2", "--steps", str(STEPS),
                              "--cluster-timeout", "120", data_url=f"s3://{DATA_BUCKET}/tiny")
            addresses = [net.address(0), net.address(1)]
            for rank in (1, 0):  # node 1 first: it waits for node 0
                pods.append(Pod(cpu_image, rendered, server, tmp_path, rank=rank, addresses=addresses,
                                network=["--network", f"ns:/run/netns/{net.namespaces[rank]}"]))
            codes = {rank: pod.wait() for rank, pod in zip((1, 0), pods, strict=True)}
            outputs = {rank: pod.output() for rank, pod in zip((1, 0), pods, strict=True)}
            report = "\n".join(f"===== node {r} =====\n{o[-3000:]}" for r, o in outputs.items())
            assert codes == {0: 0, 1: 0}, report
            master = f"(master {addresses[0]}:"
            assert master in outputs[0] and master in outputs[1], report
            assert "[node 1] done" in outputs[1] and "[node 0] done" in outputs[0], report
            prefix = f"train/{job}/"
            pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=RUNS_BUCKET, Prefix=prefix)
            keys = {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}
            assert {"result.json", "logs/rank-0.log", "logs/rank-1.log", "checkpoints/latest.json"} <= keys
            state = json.loads(server.client().get_object(
                Bucket=RUNS_BUCKET, Key=prefix + f"checkpoints/step-{STEPS}/state.json")["Body"].read())
            assert state["world_size"] == 2
        finally:
            for pod in pods:
                pod.stop()
            server.stop()
