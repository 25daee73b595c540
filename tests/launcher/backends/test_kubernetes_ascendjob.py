"""status, logs, list and cancel of an AscendJob (`--scheduler ascendjob`) over the in-memory
`ClusterAPI`: the ascend-operator's pods (`<job>-scheduler-0`, `<job>-worker-<i>`), its
PodGroup and the AscendJob's conditions, as the operator writes them."""

from __future__ import annotations

import io

import pytest

from launcher.backends import kubernetes as cluster
from launcher.backends.base import JobNotFoundError
from launcher.errors import LaunchError
from launcher.flavours import ascendjob
from launcher.k8s import api as kapi
from launcher.k8s import state as kstate
from launcher.render.render import render
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

NAME = "leo-acj"


def spec(**values):
    return build_job_spec(experiment="mini_5shot", accelerator="ascend", cards=16, scheduler="ascendjob", name=NAME,
                          set_overrides=["metatrain_batch_size=16"], train_url="s3://bkt/runs", **values)


def operator_pod(role, index, phase="Pending", *, state=None, conditions=(), created="2026-01-01T00:00:00Z"):
    """A pod as the ascend-operator makes it from the rendered replica template."""
    job = next(o for o in render(spec()) if o["kind"] == "AscendJob")
    template = job["spec"]["replicaSpecs"][role.capitalize()]["template"]
    labels = {**template["metadata"]["labels"], "job-name": NAME, "replica-type": role,
              "replica-index": str(index)}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{NAME}-{role}-{index}", "namespace": "default", "labels": labels,
                         "creationTimestamp": created},
            "spec": {"nodeName": f"node-{role}-{index}"},
            "status": {"phase": phase, "conditions": list(conditions),
                       "containerStatuses": [{"name": "ascend", "restartCount": 0, "state": state or {}}]}}


def submitted(*pods, conditions=None):
    api = FakeAPI()
    objects = render(spec())
    cluster.submit(fake_cluster(api), spec(), objects, out=io.StringIO(), err=io.StringIO(), check=False)
    job = api.get(*ascendjob.FLAVOUR.api, "default", NAME)
    job["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    if conditions is not None:
        job["status"] = {"conditions": conditions}
    for pod in pods:
        api.objects[(pod["apiVersion"], pod["kind"], "default", pod["metadata"]["name"])] = pod
    return api


def condition(kind, reason="", message="", status="True"):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:01:00Z"}


def status(api):
    return cluster.status(fake_cluster(api), NAME, progress=False)


def test_the_ascendjob_is_found_and_read():
    api = submitted()
    assert kapi.resource_path(*ascendjob.FLAVOUR.api, "default", NAME) == \
        f"/apis/mindxdl.gitee.com/v1/namespaces/default/ascendjobs/{NAME}"
    info = cluster.find_job(api, NAME, "default")  # without the ConfigMap's spec too
    assert (info.scheduler, info.nodes, info.cards, info.max_restarts) == ("ascendjob", 2, 16, 3)
    assert info.train_url == "s3://bkt/runs" and info.job_url == f"s3://bkt/runs/{NAME}"


def test_worker_pods_are_the_ranks_and_the_scheduler_pod_is_none():
    assert kstate.pod_rank(operator_pod("worker", 1)) == 1
    renamed = operator_pod("worker", 1)
    renamed["metadata"]["name"] = "anything"
    labels = renamed["metadata"]["labels"]
    labels["training.kubeflow.org/replica-index"] = labels.pop("replica-index")
    assert kstate.pod_rank(renamed) == 1
    assert kstate.pod_rank(operator_pod("scheduler", 0)) is None
    result = status(submitted(operator_pod("scheduler", 0, "Running"), operator_pod("worker", 0, "Running"),
                              operator_pod("worker", 1, "Running"), conditions=[condition("Created"),
                                                                                condition("Running")]))
    assert result["phase"] == "Running" and result["scheduler"] == "ascendjob"
    assert [r["pod"] for r in result["ranks"]] == [f"{NAME}-worker-0"] * 8 + [f"{NAME}-worker-1"] * 8


@pytest.mark.parametrize("conditions, phase, reason", [
    ([condition("Created"), condition("Succeeded", "JobSucceeded")], "Succeeded", None),
    ([condition("Created"), condition("Running", status="False"), condition("Failed", "JobValidFailed",
                                                                            "InvalidQueue: queue research")],
     "Failed", "JobValidFailed: InvalidQueue: queue research"),
    ([condition("Created"), condition("Restarting", "jobRestarting", "pod failed")], "Restarting",
     "jobRestarting: pod failed"),
])
def test_phases_from_the_last_true_condition(conditions, phase, reason):
    result = status(submitted(conditions=conditions))
    assert (result["phase"], result.get("reason")) == (phase, reason)


def test_why_it_waits_worker_scheduler_pod_or_podgroup():
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/4 nodes are available: 4 Insufficient cpu."}
    api = submitted(operator_pod("scheduler", 0, conditions=[unschedulable]),
                    operator_pod("worker", 0, "Running"), operator_pod("worker", 1, "Running"),
                    conditions=[condition("Created")])
    assert status(api)["phase"] == "Pending"
    assert status(api)["reason"] == "scheduler pod: Unschedulable: 0/4 nodes are available: 4 Insufficient cpu."
    api = submitted(conditions=[condition("Created")])
    group = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
             "metadata": {"name": f"{NAME}-1a2b", "namespace": "default",
                          "ownerReferences": [{"kind": "AscendJob", "name": NAME}]},
             "status": {"conditions": [{"type": "Unschedulable", "status": "True", "reason": "NotEnoughResources",
                                        "message": "3/3 tasks in gang unschedulable"}]}}
    api.objects[("scheduling.volcano.sh/v1beta1", "PodGroup", "default", group["metadata"]["name"])] = group
    assert status(api)["reason"] == "NotEnoughResources: 3/3 tasks in gang unschedulable"


def test_list_shows_ascendjobs_beside_the_others():
    api = submitted(operator_pod("worker", 0, "Running"))
    other = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, name="leo-batch",
                           set_overrides=["total_examples_per_class=20"])
    cluster.submit(fake_cluster(api), other, render(other), out=io.StringIO(), err=io.StringIO(), check=False)
    items = cluster.list_jobs(fake_cluster(api), progress=False)
    assert [(i["name"], i["scheduler"]) for i in items] == [("leo-acj", "ascendjob"), ("leo-batch", "job")]


def test_cancel_deletes_the_ascendjob_its_configmap_and_pods():
    api = submitted(operator_pod("scheduler", 0, "Running"), operator_pod("worker", 0, "Running"))
    text = cluster.cancel(fake_cluster(api), NAME)
    assert text == (f"job {NAME} cancelled in namespace default: deleted AscendJob {NAME}, "
                    f"ConfigMap {NAME}-config, 2 pod(s)")
    assert [key for key in api.objects if key[1] != "Namespace"] == []
    assert cluster.cancel(fake_cluster(api), NAME) == f"no job '{NAME}' in namespace default: nothing to cancel"


def test_an_ascendjob_not_made_by_us_is_not_ours():
    api = FakeAPI()
    api.objects[(*ascendjob.FLAVOUR.api, "default", NAME)] = {"apiVersion": ascendjob.FLAVOUR.api[0], "kind": "AscendJob",
                                                         "metadata": {"name": NAME, "namespace": "default"}}
    with pytest.raises(JobNotFoundError, match="mindxdl.gitee.com/v1 AscendJob leo-acj .* not managed"):
        status(api)


def test_submit_without_the_ascendjob_crd_says_so_and_rolls_back():
    class NoCRD(FakeAPI):
        def create(self, obj):
            if obj["kind"] == "AscendJob":
                raise kapi.KubeError(404, "NotFound", "the server could not find the requested resource")
            return super().create(obj)

    api = NoCRD()
    with pytest.raises(LaunchError, match=r"creating AscendJob leo-acj in namespace default failed: NotFound: .*"
                       r"\(HTTP 404\) \(the cluster does not serve AscendJob mindxdl.gitee.com/v1: is MindCluster's "
                       r"ascend-operator installed\?\); rolled back ConfigMap leo-acj-config"):
        cluster.submit(fake_cluster(api), spec(), render(spec()), out=io.StringIO(), err=io.StringIO(), check=False)
    assert [key for key in api.objects if key[1] != "Namespace"] == []


class LoggingAPI(FakeAPI):
    def __init__(self):
        super().__init__()
        self.read = []

    def log_lines(self, namespace, pod, *, container=None, follow=False, tail_lines=None):
        self.read.append((pod, container))
        return iter([f"[rank {8 * int(pod[-1])}] from {pod}"])


def test_logs_read_the_ascend_container_of_the_worker_pods():
    api = LoggingAPI()
    objects = render(spec())
    cluster.submit(fake_cluster(api), spec(), objects, out=io.StringIO(), err=io.StringIO(), check=False)
    for pod in (operator_pod("scheduler", 0, "Running", state={"running": {}}),
                operator_pod("worker", 0, "Running", state={"running": {}}),
                operator_pod("worker", 1, "Running", state={"running": {}})):
        api.objects[("v1", "Pod", "default", pod["metadata"]["name"])] = pod
    out = io.StringIO()
    assert cluster.logs(fake_cluster(api), NAME, rank=8, out=out, err=io.StringIO()) == 0
    assert api.read == [(f"{NAME}-worker-1", contract.ASCENDJOB_CONTAINER)]
    assert out.getvalue() == f"[rank 8] from {NAME}-worker-1\n"
    out = io.StringIO()
    cluster.logs(fake_cluster(api), NAME, all_ranks=True, out=out, err=io.StringIO())
    assert sorted(out.getvalue().splitlines()) == [f"[rank 0] from {NAME}-worker-0", f"[rank 8] from {NAME}-worker-1"]
