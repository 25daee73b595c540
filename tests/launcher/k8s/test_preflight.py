"""Pre-flight checks against the in-memory API: a cluster where the job would run, each
check's failure, and each check skipped with a note when RBAC forbids its read."""

from __future__ import annotations

import io

import pytest

from launcher.backends import kubernetes as cluster
from launcher.errors import LaunchError
from launcher.flavours import volcano
from launcher.k8s import api as kapi
from launcher.k8s import preflight
from launcher.render.render import render
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

ASCEND = "huawei.com/Ascend910"


def spec(**values):
    base = dict(experiment="mini_5shot", accelerator="ascend", cards=16, nodes=2, name="leo-pf",
                set_overrides=["metatrain_batch_size=16", "total_examples_per_class=20"],
                storage_secret="obs-creds", priority_class="high", scheduler="volcano", queue="team")
    base.update(values)
    return build_job_spec(**base)


def node(name, count=8, resource=ASCEND, labels=None):
    allocatable = {"cpu": "192", "memory": "1Ti"}
    if count is not None:
        allocatable[resource] = str(count)
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"allocatable": allocatable}}


def healthy():
    """A cluster where spec() would run."""
    api = FakeAPI()
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "obs-creds", "namespace": "default"},
             "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ==", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}})
    api.put({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "high"},
             "value": 1000})
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "jobs.batch.volcano.sh"}})
    api.put({"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue", "metadata": {"name": "team"},
             "status": {"state": "Open"}})
    api.put(node("npu-0"))
    api.put(node("npu-1"))
    return api


def run(api, s=None):
    s = s or spec()
    return preflight.run(api, s, render(s))


def test_a_cluster_where_the_job_would_run_has_no_problem_and_no_note():
    report = run(healthy())
    assert (report.problems, report.notes, report.ok) == ([], [], True)


def drop(api, kind, name):
    del api.objects[next(k for k in api.objects if k[1] == kind and k[3] == name)]


@pytest.mark.parametrize(("change", "problem"), [
    (lambda api: drop(api, "Namespace", "default"),
     "namespace default does not exist (create it, or choose one with --namespace)"),
    (lambda api: drop(api, "Secret", "obs-creds"),
     "--storage-secret obs-creds: no Secret obs-creds in namespace default (the pods would fail with "
     "CreateContainerConfigError)"),
    (lambda api: api.objects[("v1", "Secret", "default", "obs-creds")]["data"].pop("AWS_SECRET_ACCESS_KEY"),
     "--storage-secret obs-creds: Secret obs-creds has no AWS_SECRET_ACCESS_KEY (it holds: AWS_ACCESS_KEY_ID)"),
    (lambda api: drop(api, "PriorityClass", "high"), "--priority-class high: no PriorityClass high in the cluster"),
    (lambda api: drop(api, "CustomResourceDefinition", "jobs.batch.volcano.sh"),
     "--scheduler volcano: Volcano is not installed (no CustomResourceDefinition jobs.batch.volcano.sh); "
     "use --scheduler job"),
    (lambda api: drop(api, "Queue", "team"), "--queue team: no Volcano queue team"),
    (lambda api: api.objects[(*volcano.QUEUE, None, "team")]["status"].update(state="Closed"),
     "--queue team: Volcano queue team is Closed, not Open"),
    (lambda api: [drop(api, "Node", n) for n in ("npu-0", "npu-1")] and api.put(node("cpu-0", None)),
     "no node advertises huawei.com/Ascend910: is the Ascend device plugin installed?"),
    (lambda api: api.put(node("npu-1", 4)),
     "only 1 node(s) have 8 huawei.com/Ascend910 allocatable (npu-0); the job needs 2, one pod per node"),
    (lambda api: [api.put(node(n, 4)) for n in ("npu-0", "npu-1")],
     "no node has 8 huawei.com/Ascend910 allocatable (at most 4, on npu-0): use more --nodes for fewer "
     "cards per node"),
])
def test_each_check_says_what_would_go_wrong(change, problem):
    api = healthy()
    change(api)
    report = run(api)
    assert report.problems == [problem] and report.notes == []


def test_registry_secrets_and_the_service_account_must_exist():
    api = healthy()
    s = spec(image_pull_secrets=("swr", "mirror"), service_account="trainer")
    assert preflight.run(api, s, render(s)).problems == [
        "--image-pull-secret swr: no Secret swr in namespace default (the pods would fail with ErrImagePull)",
        "--image-pull-secret mirror: no Secret mirror in namespace default (the pods would fail with ErrImagePull)",
        "--service-account trainer: no ServiceAccount trainer in namespace default (the Job's pods would never "
        "be created)"]
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "swr", "namespace": "default"},
             "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}})
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mirror", "namespace": "default"},
             "type": "Opaque", "data": {}})
    api.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer", "namespace": "default"}})
    assert preflight.run(api, s, render(s)).problems == [
        "--image-pull-secret mirror: Secret mirror is of type Opaque, not kubernetes.io/dockerconfigjson "
        "(kubectl create secret docker-registry)"]
    api.objects[("v1", "Secret", "default", "mirror")]["type"] = "kubernetes.io/dockercfg"
    assert preflight.run(api, s, render(s)).ok
    api.forbidden = {"ServiceAccount"}
    report = preflight.run(api, s, render(s))
    assert report.ok and report.notes[0].startswith("pre-flight: not checked, not allowed to read: the ServiceAccount")


def test_the_device_check_counts_only_nodes_of_the_node_selector_and_the_accelerators_resource():
    api = healthy()
    report = run(api, spec(node_selectors=["pool=train"]))
    assert report.problems == ["no node matching --node-selector pool=train"]
    api.put(node("npu-0", labels={"pool": "train"}))
    api.put(node("npu-1", labels={"pool": "train"}))
    assert run(api, spec(node_selectors=["pool=train"])).ok
    assert run(api, spec(accelerator="nvidia", scheduler="job")).problems == [
        "no node advertises nvidia.com/gpu: is the NVIDIA device plugin installed?"]
    assert run(api, spec(accelerator="cpu", cards=2, nodes=1, scheduler="job", storage_secret=None)).ok


def test_a_cordoned_node_is_not_counted_as_usable():
    """Issue 30 item 8: with one of two Ascend nodes cordoned the gang never binds."""
    api = healthy()
    cordoned = node("npu-1", labels={"pool": "train"})
    cordoned["spec"] = {"unschedulable": True,
                        "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}
    api.put(node("npu-0", labels={"pool": "train"}))
    api.put(cordoned)
    assert run(api, spec(node_selectors=["pool=train"])).problems == [
        "only 1 node(s) matching --node-selector pool=train have 8 huawei.com/Ascend910 allocatable "
        "(npu-0; cordoned: npu-1); the job needs 2, one pod per node"]


@pytest.mark.parametrize(("forbidden", "titles"), [
    ("Namespace", "the namespace, Pod Security"),  # the Pod Security check reads the same Namespace
    ("Secret", "the storage Secret"),
    ("PriorityClass", "the PriorityClass"),
    ("CustomResourceDefinition", "Volcano"),
    ("Node", "the nodes' devices"),
])
def test_a_check_that_rbac_forbids_is_skipped_with_a_note(forbidden, titles):
    api = FakeAPI(namespaces=())  # everything missing: only the forbidden read can be silent
    api.forbidden = {forbidden}
    report = run(api)
    notes = report.notes
    if forbidden == "CustomResourceDefinition":  # Karpenter's CRD unreadable: an autoscaler is not
        assert notes[0].startswith("pre-flight: no node advertises")  # ruled out, missing nodes a note
        notes = notes[1:]
    assert notes == [f"pre-flight: not checked, not allowed to read: {titles} (the optional "
                     "ClusterRole of `leo-launch rbac --cluster-role` allows them)"]
    checked = {"Namespace": "namespace", "Secret": "--storage-secret", "PriorityClass": "--priority-class",
               "CustomResourceDefinition": "--scheduler volcano", "Node": "no node"}
    assert not [p for p in report.problems if p.startswith(checked[forbidden])]
    assert len(report.problems) == 4 - (forbidden == "CustomResourceDefinition")  # the other checks still ran


def test_a_forbidden_queue_is_not_checked_and_an_unanswerable_api_is_a_note():
    api = healthy()
    drop(api, "Queue", "team")
    api.forbidden = {"Queue"}
    assert run(api).ok and run(api).notes == []

    class Broken(FakeAPI):
        def list(self, *args, **kwargs):
            raise kapi.KubeError(500, "InternalError", "etcd timeout")

    broken = Broken()
    broken.objects = healthy().objects
    report = run(broken)
    assert report.ok and report.notes == [
        "pre-flight: the nodes' devices not checked: the API could not answer (InternalError: etcd timeout (HTTP 500))"]


def test_an_unreachable_api_is_not_a_check_to_skip():
    class Down(FakeAPI):
        def get(self, *args, **kwargs):
            raise kapi.KubeError(0, "Unreachable", "cannot reach the Kubernetes API at https://10.0.0.1:6443")

    with pytest.raises(kapi.KubeError, match="cannot reach"):
        run(Down())


def test_submit_runs_the_checks_before_creating_anything():
    api = healthy()
    api.put(node("npu-1", 4))
    api.forbidden = {"PriorityClass"}
    s = spec()
    err = io.StringIO()
    with pytest.raises(LaunchError) as raised:
        cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=err)
    assert str(raised.value) == ("pre-flight (context test): only 1 node(s) have 8 huawei.com/Ascend910 "
                                 "allocatable (npu-0); the job needs 2, one pod per node; nothing was created")
    assert err.getvalue().startswith("leo-launch: note: pre-flight: not checked, not allowed to read: "
                                     "the PriorityClass (")
    assert not [c for c in api.calls if c[0] == "create"]
    api.put(node("npu-1"))
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=io.StringIO())
    assert ("batch.volcano.sh/v1alpha1", "Job", "default", "leo-pf") in api.objects


def test_a_new_check_is_one_function():
    seen = []

    def labelled(ctx):
        namespace = ctx.get(kapi.NAMESPACE, None, ctx.namespace)  # read once, shared by checks
        seen.append(namespace["metadata"]["name"])
        level = (namespace["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        if level == "restricted":
            yield f"namespace {ctx.namespace} enforces restricted; {len(ctx.objects)} objects checked"
        elif level is None:
            yield preflight.Note(f"namespace {ctx.namespace} enforces no Pod Security level")

    checks = [("the namespace", preflight.namespace_exists), ("Pod Security", labelled)]
    api = healthy()
    s = spec()
    report = preflight.run(api, s, render(s), checks=checks)
    assert (report.problems, report.notes) == ([], ["namespace default enforces no Pod Security level"])
    assert [c for c in api.calls if c[1][1] == "Namespace"] == [("get", ("v1", "Namespace", None, "default"))]
    api.objects[("v1", "Namespace", None, "default")]["metadata"]["labels"] = {
        "pod-security.kubernetes.io/enforce": "restricted"}
    assert preflight.run(api, s, render(s), checks=checks).problems == [
        "namespace default enforces restricted; 3 objects checked"]
    assert seen == ["default", "default"]
    ctx = preflight.Context(api, s)  # a title may depend on the job: its flavour's operator
    assert [what(ctx) if callable(what) else what for what, _ in preflight.CHECKS] == [
        "the namespace", "the storage Secret", "the image pull Secrets", "the ServiceAccount",
        "the PriorityClass", "Volcano",
        "the nodes' devices", "Pod Security"]


def enforce(api, level):
    api.objects[("v1", "Namespace", None, "default")]["metadata"]["labels"] = {
        "pod-security.kubernetes.io/enforce": level}


def test_a_namespace_that_would_reject_the_pods_is_refused_before_anything_is_created():
    api = healthy()
    s = spec()  # Ascend with the driver mounted through hostPath: privileged pods
    enforce(api, "baseline")
    problems = preflight.run(api, s, render(s)).problems
    assert len(problems) == 1
    assert "enforces Pod Security baseline" in problems[0]
    assert "--ascend-driver-mount runtime" in problems[0]
    runtime = spec(ascend_driver_mount="runtime")  # restricted pods are admitted
    enforce(api, "restricted")
    assert preflight.run(api, runtime, render(runtime)).problems == []
    enforce(api, "privileged")
    assert preflight.run(api, s, render(s)).problems == []


def test_a_forbidden_namespace_read_skips_the_pod_security_check_with_a_note():
    api = healthy()
    api.forbidden.add("Namespace")
    s = spec()
    report = preflight.run(api, s, render(s))
    assert report.problems == []
    assert [n.split(" (")[0] for n in report.notes] == [
        "pre-flight: not checked, not allowed to read: the namespace, Pod Security"]


def test_every_check_rbac_forbids_is_named_in_one_note():
    api = healthy()
    api.forbidden |= {"Namespace", "Secret", "Node"}
    s = spec()
    notes = preflight.run(api, s, render(s)).notes
    assert [n.split(" (")[0] for n in notes] == [
        "pre-flight: not checked, not allowed to read: the namespace, the storage Secret, the nodes' devices, "
        "Pod Security"]


def test_an_ascendjob_needs_the_ascend_operators_crd():
    api = healthy()
    s = spec(scheduler="ascendjob", rank_table=None, queue=None)
    assert preflight.run(api, s, render(s)).problems == [
        "--scheduler ascendjob: no CustomResourceDefinition ascendjobs.mindxdl.gitee.com: is "
        "MindCluster's ascend-operator installed? (else use --scheduler volcano or job)"]
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "ascendjobs.mindxdl.gitee.com"}})
    assert preflight.run(api, s, render(s)).problems == []


# ------------------------------------------------------------------ clusters that grow (issue 21 item 4)

SHORT = "only 1 node(s) have 8 huawei.com/Ascend910 allocatable (npu-0); the job needs 2, one pod per node"


def short_of_nodes():
    api = healthy()
    api.put(node("npu-1", 4))
    return api


@pytest.mark.parametrize(("grow", "why"), [
    (lambda api: api.put({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "cluster-autoscaler-status", "namespace": "kube-system"},
                          "data": {"status": "Cluster-wide: Health: Healthy"}}),
     "cluster-autoscaler is installed"),
    (lambda api: api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                          "metadata": {"name": "nodepools.karpenter.sh"}}),
     "Karpenter is installed"),
    (lambda api: api.put(node("npu-0", labels={"karpenter.sh/nodepool": "npu"})),
     "nodes carry karpenter.sh/nodepool"),
    (lambda api: api.forbidden.add("ConfigMap"), "an autoscaler cannot be ruled out (ConfigMap cluster-autoscaler-status"),
])
def test_missing_capacity_is_a_warning_where_the_cluster_can_grow(grow, why):
    api = short_of_nodes()
    assert run(api).problems == [SHORT]  # a fixed cluster: refused
    grow(api)
    report = run(api)
    assert report.ok
    assert [n for n in report.notes if n.startswith(f"pre-flight: {SHORT}; submitting anyway: {why}")]


def test_submit_warns_and_creates_on_an_autoscaling_cluster_and_skip_preflight_skips():
    api = short_of_nodes()
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "nodepools.karpenter.sh"}})
    s, err = spec(), io.StringIO()
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=err)
    assert "submitting anyway: Karpenter is installed" in err.getvalue()
    assert [o for o in api.job_objects() if o["metadata"]["name"] == "leo-pf-config"]
    fixed = short_of_nodes()
    fixed.objects.pop(next(k for k in fixed.objects if k[1] == "Secret"))  # two problems now
    backend = cluster.KubernetesBackend(fake_cluster(fixed))
    with pytest.raises(LaunchError, match="nothing was created"):
        backend.submit(backend.plan(s), out=io.StringIO(), err=io.StringIO())
    err = io.StringIO()
    backend.submit(backend.plan(s, preflight=False), out=io.StringIO(), err=err)
    assert "pre-flight skipped" in err.getvalue()
    assert [o for o in fixed.job_objects() if o["metadata"]["name"] == "leo-pf-config"]
