"""`--scheduler ascendjob`: MindCluster's AscendJob, validated against the vendored CRD
(strict: the operator's old pod schema would silently drop what it does not know), the
strict Kubernetes schemas and client models of its pod templates, and the operator's rules."""

from __future__ import annotations

import copy

import pytest

from launcher.errors import UsageError
from launcher.render import check as mc
from launcher.render import render
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from tests.launcher.render_helpers import env_of, run_cli, write_inventory


def spec(cards=16, **values):
    values.setdefault("set_overrides", [f"metatrain_batch_size={max(cards, 12)}"])
    return build_job_spec(experiment="mini_5shot", accelerator=values.pop("accelerator", "ascend"), cards=cards,
                          scheduler="ascendjob", **values)


def ascendjob(objects):
    (job,) = [o for o in objects if o["kind"] == "AscendJob"]
    return job


def replica(objects, kind):
    return ascendjob(objects)["spec"]["replicaSpecs"][kind]["template"]


@pytest.fixture(scope="module")
def objects():
    return render.render_validated(spec(16, storage_secret="obs-creds", data_url="obs://bkt/emb",
                                        train_url="obs://bkt/runs", storage_region="cn-north-4", queue="research"))


@pytest.mark.parametrize("cards", [8, 16])
@pytest.mark.parametrize("mode", ["none", "controller", "file"])
def test_8_and_16_cards_render_and_validate(tmp_path, cards, mode):
    nodes = cards // 8
    rank_table = str(write_inventory(tmp_path / "inv.yaml", nodes)) if mode == "file" else \
        (None if mode == "none" else mode)
    objects = render.render_validated(spec(cards, rank_table=rank_table))  # raises on any problem
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ConfigMap"] + (["ConfigMap"] if mode == "controller" else []) + ["AscendJob"]
    job = ascendjob(objects)
    assert job["apiVersion"] == "mindxdl.gitee.com/v1"
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": nodes + 1, "queue": "default"}
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3
    assert {k: r["replicas"] for k, r in job["spec"]["replicaSpecs"].items()} == {"Scheduler": 1, "Worker": nodes}
    worker = replica(objects, "Worker")["spec"]
    env = env_of(worker["containers"][0])
    assert env[contract.ENV_RANK_TABLE_MODE] == mode
    assert ("RANK_TABLE_FILE" in env) == (mode != "none")
    mounts = {m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    assert (contract.CONTROLLER_RANK_TABLE_DIR in mounts) == (mode == "controller")
    pinned = (worker.get("affinity") or {}).get("nodeAffinity")
    assert bool(pinned) == (mode == "file")


def test_the_cli_renders_ascendjob(capsys):
    for cards in ("8", "16"):
        code, out, err = run_cli(capsys, ["render", "--exp", "mini_5shot", "--accel", "ascend", "--cards", cards,
                                          "--set", "metatrain_batch_size=16", "--scheduler", "ascendjob"])
        assert code == 0, err
        assert "kind: AscendJob" in out and "framework: mindspore" in out


def test_what_the_operator_needs(objects):
    job = ascendjob(objects)
    labels = job["metadata"]["labels"]
    assert labels["framework"] == "mindspore" and labels["ring-controller.atlas"] == "ascend-910b"
    assert labels[contract.LABEL_MANAGED_BY] == contract.MANAGER
    assert job["spec"]["schedulerName"] == "volcano" and job["spec"]["successPolicy"] == "AllWorkers"
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["queue"] == "research"
    for kind in ("Scheduler", "Worker"):
        template = replica(objects, kind)
        (container,) = template["spec"]["containers"]
        assert container["name"] == "ascend"  # the only container the operator injects into
        assert container["ports"] == [{"name": "ascendjob-port", "containerPort": 8118, "protocol": "TCP"}]
        assert template["metadata"]["labels"][contract.LABEL_ROLE] == kind.lower()
        assert "restartPolicy" not in template["spec"]  # the replica's restartPolicy rules
        env = env_of(container)
        assert contract.ENV_NODE_RANK not in env  # MS_NODE_RANK comes from the operator
        assert not [k for k in env if k.startswith("MS_")]


def test_the_scheduler_pod_has_no_npus_credentials_or_spread(objects):
    sched, worker = replica(objects, "Scheduler")["spec"], replica(objects, "Worker")["spec"]
    resources = sched["containers"][0]["resources"]
    assert "huawei.com/Ascend910" not in resources["requests"] and "huawei.com/Ascend910" not in resources["limits"]
    assert worker["containers"][0]["resources"]["limits"]["huawei.com/Ascend910"] == "8"
    assert "AWS_SECRET_ACCESS_KEY" not in env_of(sched["containers"][0])
    assert env_of(worker["containers"][0])["AWS_SECRET_ACCESS_KEY"] == \
        {"secretKeyRef": {"name": "obs-creds", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert "affinity" not in sched and "tolerations" not in sched
    assert {v["name"] for v in sched["volumes"]} == {"leo-config", "podinfo", "cache"}
    term = worker["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"] == {contract.LABEL_JOB: "leo-mini-5shot-ascend16",
                                                    contract.LABEL_ROLE: "worker"}


def test_jobspec_rules():
    with pytest.raises(UsageError, match="--scheduler ascendjob runs Ascend training"):
        spec(8, accelerator="nvidia")
    with pytest.raises(UsageError, match="at least 2 cards; for one card use --scheduler job"):
        spec(1)
    assert spec(2).nodes == 1
    with pytest.raises(UsageError, match="--rank-table dynamic does not work with --scheduler ascendjob"):
        spec(8, rank_table="dynamic")
    assert spec(8).rank_table == "none"
    assert spec(8).master_addr == "leo-mini-5shot-ascend8-scheduler-0.default.svc"
    assert spec(16).pod_hostname(1) == "leo-mini-5shot-ascend16-worker-1"
    with pytest.raises(UsageError, match=r"<name>-scheduler-0 must fit 63"):
        spec(8, name="a" * 52)
    assert spec(8, name="a" * 51).scheduler_hostname == "a" * 51 + "-scheduler-0"
    with pytest.raises(UsageError, match="controller needs --scheduler volcano or ascendjob"):
        build_job_spec(experiment="mini_5shot", accelerator="ascend", cards=8, rank_table="controller")


def _broken(objects, change):
    objs = copy.deepcopy(objects)
    change(ascendjob(objs))
    return mc.problems(objs, models=True)


@pytest.mark.parametrize("change, message", [
    # newer than the CRD's pod schema: valid Kubernetes, but the API server would prune it
    (lambda j: j["spec"]["replicaSpecs"]["Worker"]["template"]["spec"].update(hostUsers=False),
     "AscendJob CRD schema: spec.replicaSpecs.Worker.template.spec: Additional properties are not allowed "
     "('hostUsers' was unexpected)"),
    (lambda j: j["spec"].update(replicaSpec={}), "AscendJob CRD schema: spec: Additional properties"),
    (lambda j: j["spec"]["runPolicy"]["schedulingPolicy"].update(minAvailable="3"),
     "AscendJob CRD schema: spec.runPolicy.schedulingPolicy.minAvailable: '3' is not of type 'integer'"),
    (lambda j: j["spec"]["runPolicy"]["schedulingPolicy"].update(minAvailable=2),
     "minAvailable 2 must be 3 (every pod"),
    (lambda j: j["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(name="leo"),
     "Worker: the operator needs a container named 'ascend'"),
    (lambda j: j["metadata"]["labels"].pop("framework"), "metadata.labels must have framework=mindspore"),
    (lambda j: j["spec"]["replicaSpecs"]["Scheduler"].update(replicas=2), "Scheduler.replicas must be 1"),
    # what only the Kubernetes pod schema and models know
    (lambda j: j["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"][0].update(
        value=1), "replicaSpecs.Worker.template: Kubernetes 1.30 schema: spec.containers[0].env[0].value: 1 is not"),
    (lambda j: j["metadata"].update(labelz={}), "metadata: Kubernetes 1.30 schema: (top): Additional properties"),
    (lambda j: j["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["volumes"].pop(0),
     "volumeMounts 'leo-config' names no volume"),
])
def test_broken_ascendjobs_fail(objects, change, message):
    found = _broken(objects, change)
    assert any(message in p for p in found), found


def test_the_rendered_ascendjob_is_clean_and_named_for_its_kind(objects, tmp_path):
    assert mc.problems(objects) == []
    assert render.file_name(1, ascendjob(objects)) == "01-ascendjob-leo-mini-5shot-ascend16.yaml"
    paths = render.write_dir(objects, tmp_path / "out")
    assert render.write_dir(objects, tmp_path / "out") == paths  # its own files are not "another render"
