"""`--scheduler volcano` as the real Volcano controllers (vc-scheduler and
vc-controller-manager v1.7.0) behave, replayed on the in-memory API (issue 30): the
PodGroup's gang conditions with transition IDs (and the stale one Volcano leaves after
binding), the vcjob's state/retryCount/conditions without a reason, failed pods deleted
on a restart, and maxRetry counting attempts."""

from __future__ import annotations

import io

from launcher.backends import kubernetes as cluster
from launcher.cli import format
from launcher.flavours import volcano
from launcher.render.render import render
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

NAME = "g1"
T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"
GANG_WAITS = ("NotEnoughResources: 1/2 tasks in gang unschedulable: pod group is not ready, "
              "2 Pending, 2 minAvailable")


def spec(nodes=2, **values):
    return build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=nodes, nodes=nodes,
                          scheduler="volcano", name=NAME, set_overrides=["metatrain_batch_size=16"], **values)


def submitted(nodes=2, **values):
    api = FakeAPI()
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": volcano.FLAVOUR.crd}})
    api.put({"apiVersion": volcano.QUEUE[0], "kind": "Queue", "metadata": {"name": "default"},
             "status": {"state": "Open"}})
    s = spec(nodes, **values)
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=io.StringIO())
    return api


def vcjob(api):
    return api.objects[(*volcano.FLAVOUR.api, "default", NAME)]


def set_vcjob_status(api, phase, *, retry_count=0, conditions=()):
    """As vc-controller-manager writes it: a phase, no reason or message."""
    vcjob(api)["status"] = {"state": {"phase": phase, "lastTransitionTime": T1}, "minAvailable": 2,
                            "retryCount": retry_count,
                            "conditions": [{"status": c, "lastTransitionTime": T0} for c in conditions]}


def put_pod(api, index, phase="Pending", *, node=None, conditions=(), state=None, deleting=False):
    template = vcjob(api)["spec"]["tasks"][0]["template"]
    name = f"{NAME}-worker-{index}"
    metadata = {"name": name, "namespace": "default", "labels": dict(template["metadata"]["labels"]),
                "annotations": {**(template["metadata"].get("annotations") or {}),
                                volcano.TASK_INDEX: str(index), "scheduling.k8s.io/group-name": f"{NAME}-uid"},
                "creationTimestamp": T0}
    if deleting:
        metadata["deletionTimestamp"] = T2
    api.put({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
             "spec": {"nodeName": node, "schedulerName": "volcano"},
             "status": {"phase": phase, "conditions": list(conditions),
                        "containerStatuses": [{"name": contract.CONTAINER_NAME, "restartCount": 0,
                                               "state": state or {}}]}})


def put_podgroup(api, phase, conditions):
    api.put({"apiVersion": volcano.PODGROUP[0], "kind": "PodGroup",
             "metadata": {"name": f"{NAME}-uid", "namespace": "default",
                          "ownerReferences": [{"kind": "Job", "name": NAME}]},
             "spec": {"minMember": 2, "queue": "default"},
             "status": {"phase": phase, "conditions": list(conditions)}})


def unschedulable(when=T0):
    return {"type": "Unschedulable", "status": "True", "transitionID": "0a1b2c3d-unsched",
            "lastTransitionTime": when, "reason": "NotEnoughResources",
            "message": "1/2 tasks in gang unschedulable: pod group is not ready, 2 Pending, 2 minAvailable"}


def scheduled(when=T1):
    return {"type": "Scheduled", "status": "True", "transitionID": "4e5f6a7b-sched",
            "lastTransitionTime": when, "reason": "tasks in gang are ready to be scheduled", "message": ""}


def waits_for_gang(index):
    return [{"type": "PodScheduled", "status": "False", "reason": "Schedulable",
             "message": f"Pod default/{NAME}-worker-{index} can possibly be assigned to ascend-node-1"}]


def status(api):
    return cluster.status(fake_cluster(api), NAME, progress=False)


def exited(code, when=T1):
    return {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": when}}


def test_a_waiting_gang_says_the_podgroups_reason_not_a_fitting_pods():
    """Item 1: 'node rank 0: Schedulable: Pod default/g1-worker-0 can possibly be assigned'."""
    api = submitted()
    set_vcjob_status(api, "Pending", conditions=["Pending"])
    put_pod(api, 0, conditions=waits_for_gang(0))
    put_pod(api, 1, conditions=waits_for_gang(1))
    put_podgroup(api, "Inqueue", [unschedulable()])
    result = status(api)
    assert (result["phase"], result["reason"]) == ("Pending", GANG_WAITS)


def test_the_gang_reason_goes_once_the_podgroup_is_scheduled():
    """Item 2: Volcano keeps Unschedulable=True after binding and adds Scheduled=True."""
    api = submitted()
    set_vcjob_status(api, "Pending", conditions=["Pending"])
    bound = [{"type": "PodScheduled", "status": "True"}]
    creating = {"waiting": {"reason": "ContainerCreating"}}
    put_pod(api, 0, node="ascend-node-1", conditions=bound, state=creating)
    put_pod(api, 1, node="ascend-node-2", conditions=bound, state=creating)
    put_podgroup(api, "Running", [unschedulable(), scheduled()])
    assert status(api)["reason"] == "node rank 0: ContainerCreating"
    # a later Scheduled condition is enough, even before the phase says Running
    put_podgroup(api, "Inqueue", [unschedulable(), scheduled()])
    assert GANG_WAITS not in status(api)["reason"]
    # a newer Unschedulable condition (the gang waits again) counts
    put_podgroup(api, "Inqueue", [scheduled(T0), unschedulable(T1)])
    assert status(api)["reason"] == GANG_WAITS


def test_a_failed_vcjob_says_which_rank_failed_and_how():
    """Item 3: 'Failed: Terminated' after exit 2, 'Failed: Failed' after the last exit 1."""
    api = submitted()
    set_vcjob_status(api, "Terminated", conditions=["Pending", "Running", "Terminating", "Terminated"])
    put_pod(api, 0, "Failed", node="n1", state=exited(2))
    put_pod(api, 1, "Failed", node="n2", state=exited(137, T0))
    result = status(api)
    assert (result["phase"], result["reason"]) == (
        "Failed", "node rank 0 (g1-worker-0) exit code 2 (bad configuration, not retried)")
    set_vcjob_status(api, "Failed", retry_count=2, conditions=["Running", "Restarting", "Failed"])
    put_pod(api, 0, "Failed", node="n1", state=exited(1))
    assert status(api)["reason"] == "node rank 0 (g1-worker-0) exit code 1"
    set_vcjob_status(api, "Aborted")  # no pods left: the phase is all there is
    api.objects = {k: v for k, v in api.objects.items() if k[1] != "Pod"}
    assert status(api)["reason"] == "Aborted"


def test_max_restarts_renders_volcanos_attempts_and_restarts_are_not_overcounted():
    """Item 4: maxRetry N gave N-1 restarts; 'RESTARTS 3 of at most 3' after two."""
    api = submitted(max_restarts=3)
    assert vcjob(api)["spec"]["maxRetry"] == 4  # Volcano fails the job once retryCount >= maxRetry
    set_vcjob_status(api, "Running", retry_count=2, conditions=["Running", "Restarting", "Pending", "Running"])
    put_pod(api, 0, "Running", node="n1")
    put_pod(api, 1, "Running", node="n2")
    assert (status(api)["restarts"], status(api)["max_restarts"]) == (2, 3)
    # the 4th failed attempt reaches maxRetry: the job fails after 3 restarts, not 4
    set_vcjob_status(api, "Failed", retry_count=4)
    put_pod(api, 0, "Failed", node="n1", state=exited(1))
    assert (status(api)["phase"], status(api)["restarts"]) == ("Failed", 3)


def test_a_restart_shows_after_volcano_deleted_the_failed_pod():
    """Item 5: Restarting lasts under a second and the failed pod is deleted: status read
    Pending with the old gang reason."""
    api = submitted()
    set_vcjob_status(api, "Pending", retry_count=1, conditions=["Pending", "Running", "Restarting", "Pending"])
    put_pod(api, 1, conditions=waits_for_gang(1))  # rank 0's failed pod is gone, its new one not made yet
    put_podgroup(api, "Inqueue", [unschedulable(T0), scheduled(T1)])
    result = status(api)
    assert result["phase"] == "Restarting"
    assert result["reason"].startswith("after a failure")
    assert GANG_WAITS not in result["reason"] and "Schedulable" not in result["reason"]
    assert result["restarts"] == 1


def test_terminating_pods_are_not_running_and_podless_ranks_share_a_row():
    """Item 8: a pod being deleted showed as Running; 8 ranks without a pod printed 8 rows."""
    api = submitted(nodes=8)
    set_vcjob_status(api, "Pending")
    put_pod(api, 0, "Running", node="n1", deleting=True)
    result = status(api)
    assert result["ranks"][0]["phase"] == "Terminating"
    out = io.StringIO()
    format.print_status(result, out)
    table = out.getvalue().split("\n\n", 1)[1].splitlines()
    assert len(table) == 3, table  # header, rank 0, ranks 1-7
    assert table[2].split()[:3] == ["1-7", "1-7", "-"]
