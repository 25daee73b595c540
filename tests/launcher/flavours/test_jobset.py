"""`--scheduler jobset`: rendered JobSets validate strictly (vendored CRD, Kubernetes schemas
and client models) for 1, 2 and 16 nodes, and round-trip through submit, status, list,
logs, pre-flight and cancel on the in-memory API, with pods as the JobSet controller makes them."""

from __future__ import annotations

import copy
import io

import pytest

from launcher.backends import kubernetes as cluster
from launcher.errors import UsageError
from launcher.flavours import jobset
from launcher.k8s import api as kapi
from launcher.k8s import preflight
from launcher.k8s import state as kstate
from launcher.render import check
from launcher.render.render import render
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

NAME = "leo-js"
API = jobset.FLAVOUR.api


def spec(nodes=2, **values):
    return build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=nodes, nodes=nodes, scheduler="jobset",
                          name=NAME, set_overrides=["metatrain_batch_size=16"], train_url="s3://bkt/runs", **values)


def the_jobset(objects):
    return next(o for o in objects if o["kind"] == "JobSet")


@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_jobset_renders_and_validates_strictly(nodes):
    s = spec(nodes, queue="team", max_restarts=5)
    objects = render(s)
    assert [(o["apiVersion"], o["kind"]) for o in objects] == [("v1", "ConfigMap"), API]  # its Service is the controller's
    assert check.problems(objects) == []
    js = the_jobset(objects)
    assert js["metadata"]["labels"][contract.KUEUE_QUEUE_LABEL] == "team"
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 5
    (rjob,) = js["spec"]["replicatedJobs"]
    assert (rjob["name"], rjob["replicas"]) == ("worker", nodes)
    pod = rjob["template"]["spec"]["template"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_NODE_RANK]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['jobset.sigs.k8s.io/job-index']"
    assert env[contract.ENV_MASTER_ADDR]["value"] == f"{NAME}-worker-0-0.{NAME}.default.svc"
    assert s.pod_hostname(nodes - 1) == f"{NAME}-worker-{nodes - 1}-0"


@pytest.mark.parametrize("change, problem", [
    (lambda j: j["spec"].update(gang=True), "JobSet CRD schema: spec: Additional properties are not allowed ('gang'"),
    (lambda j: j["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"].update(hostPID="yes"),
     "JobSet CRD schema: spec.replicatedJobs[0].template.spec.template.spec.hostPID: 'yes' is not of type 'boolean'"),
    (lambda j: j["spec"]["replicatedJobs"][0]["template"]["spec"].update(completions="one"),
     "replicatedJobs[0].template: Kubernetes 1.30 schema: spec.completions: 'one' is not of type 'integer'"),
    (lambda j: j["spec"]["replicatedJobs"][0]["template"]["spec"].update(completionMode="NonIndexed"),
     "each Job runs one pod (Indexed, completions and parallelism 1)"),
    (lambda j: j["spec"]["failurePolicy"].update(rules=[]), "spec.failurePolicy needs a FailJobSet rule"),
    (lambda j: j["spec"]["network"].update(enableDNSHostnames=False), "spec.network needs enableDNSHostnames"),
    (lambda j: j["spec"]["replicatedJobs"][0]["template"]["spec"].update(backoffLimit=3), "backoffLimit must be 0"),
])
def test_a_broken_jobset_is_refused(change, problem):
    objects = render(spec())
    broken = copy.deepcopy(the_jobset(objects))
    change(broken)
    found = check.problems([objects[0], broken], versions=("1.30",))
    assert any(problem in p for p in found), found


def test_a_name_too_long_for_its_host_names_is_a_usage_error():
    with pytest.raises(UsageError, match="pod host names <name>-worker-1-0 must fit 63"):
        build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, nodes=2, scheduler="jobset",
                       name="l" + "e" * 55, set_overrides=["metatrain_batch_size=16"])


def controller_pod(index, phase="Pending", *, state=None):
    """A pod as the JobSet controller (through its Job) makes it from the rendered template."""
    template = the_jobset(render(spec()))["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    marks = {jobset.JOB_INDEX: str(index), contract.JOB_INDEX_ANNOTATION: "0",
             "jobset.sigs.k8s.io/jobset-name": NAME}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{NAME}-worker-{index}-0-abcde", "namespace": "default",
                         "labels": {**template["metadata"]["labels"], **marks},
                         "annotations": {**template["metadata"]["annotations"], **marks},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": f"node-{index}"},
            "status": {"phase": phase, "containerStatuses": [
                {"name": contract.CONTAINER_NAME, "restartCount": 0, "state": state or {}}]}}


def submitted(*pods, status=None):
    api = FakeAPI()
    cluster.submit(fake_cluster(api), spec(), render(spec()), out=io.StringIO(), err=io.StringIO(), check=False)
    obj = api.get(*API, "default", NAME)
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    if status is not None:
        obj["status"] = status
    for pod in pods:
        api.put(pod)
    return api


def condition(kind, reason="", message=""):
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def read(api):
    return cluster.status(fake_cluster(api), NAME, progress=False)


def test_the_jobset_is_found_and_its_pods_are_the_ranks():
    api = submitted(controller_pod(0, "Running"), controller_pod(1, "Running"))
    assert kapi.resource_path(*API, "default", NAME) == f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/default/jobsets/{NAME}"
    info = cluster.find_job(api, NAME, "default")  # without the ConfigMap's spec too
    assert (info.scheduler, info.nodes, info.max_restarts, info.train_url) == ("jobset", 2, 3, "s3://bkt/runs")
    assert kstate.pod_rank(controller_pod(1)) == 1  # the job index, not the Job's completion index 0
    result = read(api)
    assert (result["phase"], result["scheduler"]) == ("Running", "jobset")
    assert [r["pod"] for r in result["ranks"]] == [f"{NAME}-worker-0-0-abcde", f"{NAME}-worker-1-0-abcde"]


@pytest.mark.parametrize("status, phase, reason, restarts", [
    ({"conditions": [condition("Completed", "AllJobsCompleted")]}, "Succeeded", None, 0),
    ({"conditions": [condition("Failed", "FailurePolicyRuleAction", "badConfiguration")], "restarts": 1},
     "Failed", "FailurePolicyRuleAction: badConfiguration", 1),
    ({"conditions": [condition("Suspended", "SuspendedJobs")]}, "Pending",
     "suspended: waiting to be admitted (Kueue)", 0),
    ({"restarts": 2}, "Pending", "waiting for the job's pods to be created", 2),
])
def test_phases_from_the_jobset_status(status, phase, reason, restarts):
    result = read(submitted(status=status))
    assert (result["phase"], result.get("reason"), result["restarts"]) == (phase, reason, restarts)


def test_exit_code_2_fails_the_set_before_its_condition_arrives():
    failed = controller_pod(1, "Failed", state={"terminated": {"exitCode": 2, "reason": "Error"}})
    result = read(submitted(controller_pod(0, "Running"), failed))
    assert (result["phase"], result["reason"]) == (
        "Failed", f"node rank 1 ({NAME}-worker-1-0-abcde) exit code 2 (bad configuration, not retried)")


def test_list_logs_and_cancel():
    api = submitted(controller_pod(0, "Running", state={"running": {}}))
    other = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, name="leo-batch",
                           set_overrides=["total_examples_per_class=20"])
    cluster.submit(fake_cluster(api), other, render(other), out=io.StringIO(), err=io.StringIO(), check=False)
    items = cluster.list_jobs(fake_cluster(api), progress=False)
    assert [(i["name"], i["scheduler"]) for i in items] == [("leo-batch", "job"), (NAME, "jobset")]
    api.logs = {f"{NAME}-worker-0-0-abcde": ["[rank 0] hello"]}
    out = io.StringIO()
    assert cluster.logs(fake_cluster(api), NAME, rank=0, out=out, err=io.StringIO()) == 0
    assert out.getvalue() == "[rank 0] hello\n"
    assert cluster.cancel(fake_cluster(api), NAME) == (
        f"job {NAME} cancelled in namespace default: deleted JobSet {NAME}, ConfigMap {NAME}-config, 1 pod(s)")
    assert cluster.cancel(fake_cluster(api), NAME) == f"no job '{NAME}' in namespace default: nothing to cancel"
    assert [o["metadata"]["name"] for o in api.job_objects()] == ["leo-batch-config", "leo-batch", "leo-batch"]


def test_preflight_names_a_missing_jobset_controller():
    api = FakeAPI()
    report = preflight.run(api, spec(), render(spec()), checks=[c for c in preflight.CHECKS
                                                                if c[1] is preflight.job_flavour])
    assert report.problems == ["--scheduler jobset: no CustomResourceDefinition jobsets.jobset.x-k8s.io: is the "
                               "JobSet controller installed? (else use --scheduler job)"]
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": jobset.FLAVOUR.crd}})
    assert preflight.run(api, spec(), render(spec()), checks=[c for c in preflight.CHECKS
                                                              if c[1] is preflight.job_flavour]).problems == []


def test_the_committed_jobset_schema_is_what_the_pinned_api_models_generate():
    from tests.tools import gen_jobset_schema

    assert gen_jobset_schema.OUT.read_text() == gen_jobset_schema.text()
