"""The Kubernetes backend against the kmock API emulator (a real HTTP server speaking the
Kubernetes API; the official client talks to it through a kubeconfig).

kmock stores objects and serves create/get/list/delete, but runs no controllers: these
tests play the Job controller and the kubelet by creating the pods (with the labels and
completion-index annotation of the Job's template), setting their phases, conditions and
container states, adding events and PodGroups, and scripting each pod's log as
text/plain. It also ignores label and field selectors (the backend filters again),
stores an object even when a scripted reaction answers an error, and does no garbage
collection (cancel deletes the pods itself). It serves no Namespace objects: the fixture
scripts the namespaces that exist. What a real control plane does and kmock does not
(eventTime-only events, 403 on a forbidden API group, a kubelet that cannot be reached, a
pod that stays Terminating) the tests script or put in place. What this cannot show — scheduling, real
log streaming by a kubelet, propagation, admission — is listed in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets

import pytest
import pytest_asyncio
import yaml

from launcher.cli.main import main
from launcher.k8s.rbac import Rule
from launcher.spec import contract
from launcher.spec import jobspec as js

kmock = pytest.importorskip("kmock")

pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")]

TINY = ["--exp", "mini_5shot", "--accel", "cpu", "--data-url", "s3://leo-data/tiny",
        "--set", "total_examples_per_class=20"]
NOW = "2026-01-01T00:00:00Z"


class Emu:
    """The emulator, its URL and the requests it saw (POSTs and DELETEs, in order)."""

    def __init__(self, emu, url, tmp_path):
        self.emu, self.url, self.tmp_path = emu, url, tmp_path
        self.posts, self.deletes = [], []
        self.reviews, self.denied = [], set()  # SelfSubjectAccessReviews; rights answered "no"

    def alive(self, plural=None):
        """(plural, namespace, name) of every stored, not deleted object."""
        return {(key[0].plural, key[1], key[2]) for key in self.emu.objects
                if not self.emu.objects[key].deleted and (plural is None or key[0].plural == plural)}

    def get(self, resource, name, namespace="default"):
        return self.emu.objects[resource, namespace, name].raw

    def put(self, resource, obj):
        m = obj["metadata"]
        self.emu.objects[resource, m.get("namespace", "default"), m["name"]] = obj

    def job(self, name, namespace="default"):
        return self.get("batch/v1/jobs", name, namespace)

    def set_job_status(self, name, status, namespace="default"):
        obj = dict(self.job(name, namespace))
        obj["status"] = status
        self.put("batch/v1/jobs", obj)

    # -- the Job controller and the kubelet
    def pod(self, job, index, phase="Pending", *, suffix="abcde", node=None, conditions=(),
            state=None, created=NOW, namespace="default", restart_count=0, volcano=False):
        if volcano:
            template = self.get("batch.volcano.sh/v1alpha1/jobs", job, namespace)["spec"]["tasks"][0]["template"]
            name = f"{job}-worker-{index}"
        else:
            template = self.job(job, namespace)["spec"]["template"]
            name = f"{job}-{index}-{suffix}"
        labels = dict(template["metadata"]["labels"])
        annotations = dict(template["metadata"].get("annotations") or {})
        annotations[contract.JOB_INDEX_ANNOTATION if not volcano else "volcano.sh/task-index"] = str(index)
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": labels,
                            "annotations": annotations, "creationTimestamp": created},
               "spec": {"nodeName": node, "containers": [{"name": "leo"}]},
               "status": {"phase": phase, "conditions": list(conditions),
                          "containerStatuses": [{"name": "leo", "restartCount": restart_count,
                                                 "state": state or ({"running": {}} if phase == "Running" else {"waiting": {"reason": "ContainerCreating"}})}]}}
        self.put("v1/pods", obj)
        return name

    def event(self, kind, name, reason, message, *, namespace="default", type_="Warning", when=NOW):
        uid = f"{name}.{reason}.{len(self.emu.objects)}".lower()
        self.put("v1/events", {"apiVersion": "v1", "kind": "Event",
                               "metadata": {"name": uid, "namespace": namespace, "creationTimestamp": when},
                               "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
                               "type": type_, "reason": reason, "message": message,
                               "lastTimestamp": when})

    def script_log(self, pod, text, *, namespace="default"):
        """GET .../pods/<pod>/log answers `text` (bytes, or a callable/async generator)."""
        self.emu[f"get /api/v1/namespaces/{namespace}/pods/{pod}/log"] << \
            kmock.headers({"Content-Type": "text/plain"}) << text


def kubeconfig(path, url, *, current="emu", namespace=None):
    emu_context = {"cluster": "emu", "user": "tester"}
    if namespace:
        emu_context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "emu", "cluster": {"server": url}},
                     {"name": "dead", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "emu", "context": emu_context},
                     {"name": "dead", "context": {"cluster": "dead", "user": "tester"}}],
    }))
    return path


def recorder(requests):
    """A reaction that notes the request and lets the emulator serve it (a plain sink would
    be used up after its first request)."""
    def note(request):
        requests.append(request)
        raise NotImplementedError  # matched, nothing to answer: the next reaction serves it

    return note


def access_review(env):
    """Answer a SelfSubjectAccessReview as RBAC would: allowed unless in `env.denied`
    (`verb resource.group` strings, as the access check names them)."""
    def review(request):
        attrs = request.data["spec"]["resourceAttributes"]
        resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        right = str(Rule(attrs.get("group") or "", resource, attrs["verb"]))
        env.reviews.append((attrs.get("namespace"), right))
        # kmock stores every POSTed object (a review has no name: the next would conflict)
        for key in [k for k in env.emu.objects if k[0].plural == "selfsubjectaccessreviews"]:
            del env.emu.objects[key]
        return {**request.data, "status": {"allowed": right not in env.denied}}

    return review


@pytest_asyncio.fixture
async def k8s(tmp_path, monkeypatch):
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emu.resources.load_bundled()
        url = str(server.url).rstrip("/")
        env = Emu(emu, url, tmp_path)
        # the API server's access reviews (before the recorder: they create nothing)
        emu["post /apis/authorization.k8s.io/v1/selfsubjectaccessreviews"] << access_review(env)
        emu["post"] << recorder(env.posts)
        emu["delete"] << recorder(env.deletes)
        # kmock serves no Namespace objects: script the answer for the namespaces that exist
        for namespace in ("default", "team-a"):
            emu[f"get /api/v1/namespaces/{namespace}"] << {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        # what a cluster with Volcano holds: its CRD and its default queue
        emu.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, "jobs.batch.volcano.sh"] = {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "jobs.batch.volcano.sh"}}
        emu.objects["scheduling.volcano.sh/v1beta1/queues", None, "default"] = {
            "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue",
            "metadata": {"name": "default"}, "status": {"state": "Open"}}
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", url)))
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield env


async def cli(*argv):
    """Run `leo-launch ARGV` in a thread (the emulator serves from this loop)."""
    def run():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(run)


class Train:
    """A train_url on the test S3 server (pods cannot use this machine's paths): `put`
    writes an object as a pod's publisher would."""

    def __init__(self, server):
        self.server = server
        self.url = f"s3://{server.create_bucket(f'leo-{secrets.token_hex(4)}')}/train"
        self.flags = ["--train-url", self.url, "--storage-endpoint", server.endpoint]

    def put(self, key, text):
        from launcher.storage import StorageOptions, open_store

        with open_store(self.url, StorageOptions(endpoint=self.server.endpoint, progress=False)) as store:
            store.put_bytes(key, text.encode())


async def submit(name, *extra):
    code, out, err = await cli("submit", "--backend", "k8s", "--name", name, "--cards", "2", *TINY, *extra)
    assert code == 0, err
    return out


async def status(name, *extra):
    code, out, err = await cli("status", name, "-o", "json", *extra)
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------ submit


async def test_submit_creates_the_objects_in_order_and_refuses_a_duplicate(k8s):
    out = await submit("leo-a")
    assert "job leo-a submitted to namespace default" in out
    # the client wrapper sends the server-side dry-run first; kmock does not honour dryRun
    # (it stores the object), so the dry-run deletes it again and asks no further
    assert [(r.url.path, r.url.query.get("dryRun")) for r in k8s.posts] == [
        ("/api/v1/namespaces/default/configmaps", "All"), ("/api/v1/namespaces/default/configmaps", None),
        ("/api/v1/namespaces/default/services", None), ("/apis/batch/v1/namespaces/default/jobs", None)]
    assert [r.url.path for r in k8s.deletes] == ["/api/v1/namespaces/default/configmaps/leo-a-config"]
    config = k8s.get("v1/configmaps", "leo-a-config")
    assert js.JobSpec.from_yaml(config["data"]["job.yaml"]).name == "leo-a"
    assert k8s.job("leo-a")["metadata"]["labels"][contract.LABEL_MANAGED_BY] == "leo-launch"

    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-a", "--cards", "2", *TINY)
    assert code == 1
    assert "job leo-a exists already in namespace default (Pending)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert len(k8s.posts) == 4  # nothing more was created


async def test_a_failing_create_rolls_back_and_reports_the_apis_reason(k8s):
    # Someone else's Service of the same name: the API answers 409 AlreadyExists.
    k8s.put("v1/services", {"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": "leo-b", "namespace": "default"}})
    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-b", "--cards", "2", *TINY)
    assert code == 1
    assert "creating Service leo-b in namespace default failed:" in err
    assert "(HTTP 409)" in err and "rolled back ConfigMap leo-b-config" in err
    assert ("configmaps", "default", "leo-b-config") not in k8s.alive()
    assert ("services", "default", "leo-b") in k8s.alive()  # not ours: untouched
    assert ("jobs", "default", "leo-b") not in k8s.alive()


async def test_a_forbidden_job_rolls_back_configmap_and_service(k8s):
    k8s.emu["post /apis/batch/v1/namespaces/default/jobs"] << 403 << {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": 'jobs.batch is forbidden: User "dev" cannot create resource "jobs" in API group "batch"'}
    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-c", "--cards", "2", *TINY)
    assert code == 1
    assert 'creating Job leo-c in namespace default failed: Forbidden: jobs.batch is forbidden: User "dev"' in err
    assert "rolled back Service leo-c, ConfigMap leo-c-config" in err
    # the first delete undoes kmock's stored dry-run ConfigMap (kmock ignores dryRun)
    assert [r.url.path.rsplit("/", 2)[-2:] for r in k8s.deletes[1:]] == [["services", "leo-c"],
                                                                   ["configmaps", "leo-c-config"]]
    assert not {("configmaps", "default", "leo-c-config"), ("services", "default", "leo-c")} & k8s.alive()


async def test_wait_returns_once_every_rank_runs(k8s):
    async def kubelet():
        while ("jobs", "default", "leo-w") not in k8s.alive():
            await asyncio.sleep(0.1)
        k8s.pod("leo-w", 0, "Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
        await asyncio.sleep(0.5)
        k8s.pod("leo-w", 0, "Running", node="node-1")

    task = asyncio.create_task(kubelet())
    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-w", "--cards", "2",
                               "--wait", *TINY)
    await task
    assert code == 0, err
    assert "job leo-w: Running" in out
    assert "leo-w: Pending" in err  # it said why it waited


# ------------------------------------------------------------------ status


@pytest.mark.parametrize("case", ["unschedulable", "image", "event", "quota"])
async def test_status_says_why_a_job_is_pending(k8s, case):
    await submit("leo-p", "--cards", "16", "--nodes", "2", "--set", "metatrain_batch_size=16")
    if case == "unschedulable":
        message = "0/12 nodes are available: 12 Insufficient huawei.com/Ascend910."
        k8s.pod("leo-p", 0, conditions=[{"type": "PodScheduled", "status": "False",
                                         "reason": "Unschedulable", "message": message}])
        k8s.pod("leo-p", 1, conditions=[{"type": "PodScheduled", "status": "False",
                                         "reason": "Unschedulable", "message": message}])
        expected = f"node rank 0: Unschedulable: {message}"
    elif case == "image":
        k8s.pod("leo-p", 0, "Running", node="n1")
        k8s.pod("leo-p", 1, state={"waiting": {"reason": "ImagePullBackOff",
                                               "message": 'Back-off pulling image "leo-launch:cpu"'}})
        expected = 'node rank 1: ImagePullBackOff: Back-off pulling image "leo-launch:cpu"'
    elif case == "event":
        pod = k8s.pod("leo-p", 0)
        k8s.pod("leo-p", 1, "Running", node="n1")
        k8s.event("Pod", pod, "FailedScheduling", "0/3 nodes are available: 3 node(s) had untolerated taint.")
        expected = "node rank 0: FailedScheduling: 0/3 nodes are available: 3 node(s) had untolerated taint."
    else:  # no pods at all: the Job controller's own warning
        k8s.event("Job", "leo-p", "FailedCreate", 'Error creating: pods "leo-p-0-x" is forbidden: exceeded quota: compute')
        expected = 'FailedCreate: Error creating: pods "leo-p-0-x" is forbidden: exceeded quota: compute'
    result = await status("leo-p")
    assert result["phase"] == "Pending"
    assert result["reason"] == expected
    assert {r["rank"] for r in result["ranks"]} == set(range(16))
    code, table, err = await cli("status", "leo-p")
    assert code == 0 and f"PHASE     Pending: {expected}" in table


async def test_status_of_a_gang_waiting_for_volcano(k8s):
    await submit("leo-v", "--scheduler", "volcano")
    vcjob = k8s.get("batch.volcano.sh/v1alpha1/jobs", "leo-v")
    vcjob["status"] = {"state": {"phase": "Pending"}}
    k8s.put("batch.volcano.sh/v1alpha1/jobs", vcjob)
    message = "1/1 tasks in gang unschedulable: pod group is not ready, 1 minAvailable"
    k8s.put("scheduling.volcano.sh/v1beta1/podgroups", {
        "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
        "metadata": {"name": "leo-v-2f5c7a", "namespace": "default",
                     "ownerReferences": [{"kind": "Job", "name": "leo-v", "apiVersion": "batch.volcano.sh/v1alpha1"}]},
        "status": {"phase": "Pending", "conditions": [
            {"type": "Unschedulable", "status": "True", "reason": "NotEnoughResources",
             "message": message, "lastTransitionTime": NOW}]}})
    result = await status("leo-v")
    assert result["phase"] == "Pending" and result["scheduler"] == "volcano"
    assert result["reason"] == f"NotEnoughResources: {message}"


async def test_status_running_restarting_succeeded_and_failed(k8s, s3_env):
    train = Train(s3_env)
    await submit("leo-r", "--cards", "4", "--nodes", "2", *train.flags)
    # rank 1's first pod failed (retriable); its replacement is starting
    k8s.pod("leo-r", 0, "Running", node="node-a", created="2026-01-01T00:00:00Z")
    k8s.pod("leo-r", 1, "Failed", node="node-b", suffix="old01", created="2026-01-01T00:00:00Z",
            state={"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T00:05:00Z"}})
    k8s.pod("leo-r", 1, "Pending", suffix="new02", created="2026-01-01T00:06:00Z")
    k8s.set_job_status("leo-r", {"failed": 1, "active": 2})
    result = await status("leo-r")
    assert result["phase"] == "Restarting"
    assert "node rank 1 (leo-r-1-old01) exit code 1" in result["reason"]
    assert [r["restarts"] for r in result["ranks"]] == [0, 0, 1, 1]
    assert result["restarts"] == 1 and result["max_restarts"] == 3

    k8s.pod("leo-r", 1, "Running", node="node-c", suffix="new02", created="2026-01-01T00:06:00Z")
    train.put("leo-r/metrics.jsonl", (
        '{"step": 1000, "kind": "train", "loss": 1.0}\n'
        '{"step": 1000, "kind": "validation", "accuracy": 0.71}\n'
        '{"step": 2000, "kind": "validation", "accuracy": 0.69}\n'
        '{"step": 2100, "kind": "train", "loss": 0.9}\n'))
    result = await status("leo-r")
    assert result["phase"] == "Running" and "reason" not in result
    assert (result["step"], result["best_accuracy"]) == (2100, 0.71)
    assert [(r["rank"], r["node_rank"], r["node"], r["phase"]) for r in result["ranks"]] == [
        (0, 0, "node-a", "Running"), (1, 0, "node-a", "Running"),
        (2, 1, "node-c", "Running"), (3, 1, "node-c", "Running")]
    code, table, _ = await cli("status", "leo-r")
    assert "step 2100, best meta-validation accuracy 71.00%" in table
    assert "leo-r-1-new02" in table and "node-c" in table

    train.put("leo-r/result.json", json.dumps(
        {"accuracy": 0.7631, "ci95": 0.0012, "tasks": 10000, "step": 2000, "experiment": "mini_5shot"}))
    k8s.set_job_status("leo-r", {"succeeded": 2, "failed": 1, "conditions": [
        {"type": "Complete", "status": "True"}]})
    result = await status("leo-r")
    assert result["phase"] == "Succeeded" and result["result"]["accuracy"] == 0.7631

    await submit("leo-f")
    k8s.pod("leo-f", 0, "Failed", node="n1", state={"terminated": {"exitCode": 2, "reason": "Error"}})
    k8s.set_job_status("leo-f", {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
         "message": "Container leo for pod default/leo-f-0-abcde failed with exit code 2 matching FailJob rule at index 0"}]})
    result = await status("leo-f")
    assert result["phase"] == "Failed"
    assert result["reason"].startswith("PodFailurePolicy: Container leo for pod default/leo-f-0-abcde failed")
    assert result["ranks"][0]["reason"] == "exit code 2 (bad configuration, not retried)"


async def test_status_of_an_unknown_job_is_one_line(k8s):
    code, out, err = await cli("status", "nope")
    assert code == 1 and err.strip() == (
        f"leo-launch: error: no job 'nope' in namespace default (context emu, {k8s.url})")


# ------------------------------------------------------------------ logs


async def test_logs_of_one_rank_of_all_ranks_and_the_tail(k8s):
    await submit("leo-l", "--cards", "4", "--nodes", "2")
    p0 = k8s.pod("leo-l", 0, "Running", node="a")
    p1 = k8s.pod("leo-l", 1, "Running", node="b")
    k8s.script_log(p0, b"[node 0] staging\n[rank 0] step 1/6\n[rank 1] warming up\n[rank 0] step 2/6\n")
    k8s.script_log(p1, b"[node 1] staging\n[rank 2] ready\n[rank 3] step 1/6\n")

    code, out, err = await cli("logs", "leo-l")
    assert code == 0, err
    assert out.splitlines() == ["[node 0] staging", "[rank 0] step 1/6", "[rank 0] step 2/6"]
    code, out, _ = await cli("logs", "leo-l", "--rank", "3")
    assert out.splitlines() == ["[node 1] staging", "[rank 3] step 1/6"]
    code, out, _ = await cli("logs", "leo-l", "--all")
    assert sorted(out.splitlines()) == sorted(
        ["[node 0] staging", "[rank 0] step 1/6", "[rank 1] warming up", "[rank 0] step 2/6",
         "[node 1] staging", "[rank 2] ready", "[rank 3] step 1/6"])
    assert out.splitlines().index("[rank 0] step 1/6") < out.splitlines().index("[rank 0] step 2/6")
    code, out, _ = await cli("logs", "leo-l", "--tail", "1")
    assert out.splitlines() == ["[rank 0] step 2/6"]
    code, out, err = await cli("logs", "leo-l", "--rank", "4")
    assert code == 2 and "--rank 4: job leo-l has ranks 0..3" in err


async def test_logs_follow_merges_live_streams_until_the_job_ends(k8s):
    await submit("leo-fo", "--cards", "2", "--nodes", "2")
    p0 = k8s.pod("leo-fo", 0, "Running", node="a")
    p1 = k8s.pod("leo-fo", 1, "Running", node="b")
    started = asyncio.Event()

    def stream(rank, lines, finish=False):
        async def body():
            started.set()
            for line in lines:
                yield f"[rank {rank}] {line}\n".encode()
                await asyncio.sleep(0.2)
            if finish:  # the container ends, the Job completes
                k8s.set_job_status("leo-fo", {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]})
        return lambda: body()

    k8s.script_log(p0, stream(0, ["step 1", "step 2", "step 3"], finish=True))
    k8s.script_log(p1, stream(1, ["a", "b"]))
    code, out, err = await cli("logs", "leo-fo", "-f", "--all")
    assert code == 0, err
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("[rank 0]")] == ["[rank 0] step 1", "[rank 0] step 2", "[rank 0] step 3"]
    assert [line for line in lines if line.startswith("[rank 1]")] == ["[rank 1] a", "[rank 1] b"]
    assert lines.index("[rank 1] a") < lines.index("[rank 0] step 3")  # merged as they came


async def test_logs_fall_back_to_the_published_logs_when_the_pods_are_gone(k8s, s3_env, monkeypatch):
    train = Train(s3_env)
    await submit("leo-g", *train.flags)
    train.put("leo-g/logs/rank-0.log", "step 1/6\nstep 2/6\n")
    train.put("leo-g/logs/rank-1.log", "hello from 1\n")
    code, out, err = await cli("logs", "leo-g")
    assert code == 0, err
    assert out.splitlines() == ["[rank 0] step 1/6", "[rank 0] step 2/6"]
    assert f"published under {train.url}/leo-g" in err
    code, out, _ = await cli("logs", "leo-g", "--all", "--tail", "1")  # the last line of each rank
    assert out.splitlines() == ["[rank 0] step 2/6", "[rank 1] hello from 1"]
    code, out, _ = await cli("logs", "leo-g", "--all", "--tail", "2")  # not the last 2 of all ranks
    assert out.splitlines() == ["[rank 0] step 1/6", "[rank 0] step 2/6", "[rank 1] hello from 1"]
    # after cancel the job is gone from the cluster; its URL still works
    await cli("cancel", "leo-g")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)  # a URL alone says nothing of its endpoint
    code, out, _ = await cli("logs", f"{train.url}/leo-g", "--rank", "1")
    assert code == 0 and out.splitlines() == ["[rank 1] hello from 1"]


# ------------------------------------------------------------------ list, cancel, pull


async def test_list_shows_only_our_jobs_and_cancel_deletes_everything_idempotently(k8s, tmp_path):
    await submit("leo-x")
    await submit("leo-y", "--cards", "4", "--nodes", "2", "--scheduler", "volcano")
    k8s.put("batch/v1/jobs", {"apiVersion": "batch/v1", "kind": "Job",
                              "metadata": {"name": "someone-else", "namespace": "default", "labels": {"app": "x"}}})
    k8s.pod("leo-x", 0, "Running", node="n1")
    k8s.pod("leo-y", 0, "Running", node="n1", volcano=True)
    k8s.pod("leo-y", 1, "Running", node="n2", volcano=True)
    code, out, err = await cli("list", "-o", "json")
    assert code == 0, err
    items = {item["name"]: item for item in json.loads(out)}
    assert set(items) == {"leo-x", "leo-y"}
    assert items["leo-y"]["scheduler"] == "volcano" and items["leo-y"]["cards"] == 4
    assert items["leo-x"]["phase"] == "Running" and items["leo-x"]["experiment"] == "mini_5shot"
    code, table, _ = await cli("list")
    assert table.splitlines()[0].split() == ["NAME", "BACKEND", "EXPERIMENT", "ACCEL", "CARDS", "PHASE",
                                             "AGE", "STEP", "BEST", "ACC"]

    code, out, err = await cli("cancel", "leo-y")
    assert code == 0, err
    assert out.strip() == ("job leo-y cancelled in namespace default: deleted Job leo-y, "
                           "ConfigMap leo-y-config, 2 pod(s)")
    assert not [key for key in k8s.alive() if "leo-y" in key[2]]
    assert ("jobs", "default", "leo-x") in k8s.alive()
    code, out, _ = await cli("cancel", "leo-y")
    assert code == 0 and out.strip() == "no job 'leo-y' in namespace default: nothing to cancel"
    code, out, _ = await cli("list", "-o", "json")
    assert [item["name"] for item in json.loads(out)] == ["leo-x"]


async def test_pull_finds_a_kubernetes_jobs_outputs_through_its_configmap(k8s, tmp_path, s3_env):
    from launcher.outputs.publish import Publisher
    from launcher.storage import StorageOptions

    train = Train(s3_env)
    await submit("leo-pl", *train.flags)
    out_dir = tmp_path / "pod-out"
    step = out_dir / "checkpoints" / "step-5"
    step.mkdir(parents=True)
    (step / "weights.npz").write_bytes(b"weights")
    (out_dir / "checkpoints" / "best.json").write_text('{"step": 5, "path": "step-5", "accuracy": 0.5}')
    with Publisher(out_dir, f"{train.url}/leo-pl", options=StorageOptions(endpoint=s3_env.endpoint)) as publisher:
        publisher.poll()
    code, out, err = await cli("pull", "leo-pl", "--to", tmp_path / "pulled")
    assert code == 0, err
    assert (tmp_path / "pulled" / "step-5" / "weights.npz").read_bytes() == b"weights"


# ------------------------------------------------------------------ configuration


async def test_context_and_its_namespace_are_honoured(k8s, monkeypatch):
    config = kubeconfig(k8s.tmp_path / "two-contexts", k8s.url, current="dead", namespace="team-a")
    monkeypatch.setenv("KUBECONFIG", str(config))
    code, out, err = await cli("status", "leo-n")  # the current context's server is down
    assert code == 1 and "cannot reach the Kubernetes API at http://127.0.0.1:9" in err
    out = await submit("leo-n", "--context", "emu")  # no --namespace: the context's
    assert "submitted to namespace team-a" in out
    assert ("jobs", "team-a", "leo-n") in k8s.alive()
    assert js.JobSpec.from_yaml(k8s.get("v1/configmaps", "leo-n-config", "team-a")["data"]["job.yaml"]).namespace == "team-a"
    result = await status("leo-n", "--context", "emu")
    assert result["namespace"] == "team-a" and result["phase"] == "Pending"
    code, out, err = await cli("status", "leo-n", "--context", "nope")
    assert code == 2 and "--context 'nope' is not in" in err


async def test_a_job_files_namespace_is_chosen_like_namespace(k8s, monkeypatch):
    """`submit job.yaml`: the file's namespace, not the context's, unless -n says otherwise."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(k8s.tmp_path / "ctx-ns", k8s.url, namespace="team-a")))
    job_file = k8s.tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"experiment": "mini_5shot", "accelerator": "cpu", "cards": 2,
                                        "namespace": "default", "data_url": "s3://leo-data/tiny",
                                        "overrides": {"total_examples_per_class": 20}}))
    code, out, err = await cli("submit", "--backend", "k8s", job_file, "--name", "leo-f")
    assert code == 0 and "submitted to namespace default" in out, err
    code, out, err = await cli("submit", "--backend", "k8s", job_file, "--name", "leo-g", "-n", "team-a")
    assert code == 0 and "submitted to namespace team-a" in out, err
    assert {("jobs", "default", "leo-f"), ("jobs", "team-a", "leo-g")} <= k8s.alive()


async def test_auto_backend_says_it_chose_kubernetes(k8s):
    code, out, err = await cli("submit", "--name", "leo-auto", "--cards", "2", *TINY)
    assert code == 0, err
    assert "leo-launch: backend k8s (a Kubernetes configuration was found" in err
    assert "warning: object-storage URLs without --storage-secret" in err


# ------------------------------------------------------------------ as a real control plane behaves (issue 11)

FORBIDDEN_VOLCANO = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403, "reason": "Forbidden",
                     "message": 'jobs.batch.volcano.sh is forbidden: User "dev" cannot list resource "jobs" in '
                                'API group "batch.volcano.sh" in the namespace "default"'}


def forbid_volcano(k8s, *names, namespace="default"):
    base = f"/apis/batch.volcano.sh/v1alpha1/namespaces/{namespace}/jobs"
    for path in (base, *(f"{base}/{name}" for name in names)):
        for verb in ("get", "delete"):
            k8s.emu[f"{verb} {path}"] << 403 << FORBIDDEN_VOLCANO


async def test_status_ignores_a_scheduling_failure_of_a_pod_that_is_bound(k8s):
    await submit("leo-s")
    pod = k8s.pod("leo-s", 0, node="node-1", conditions=[{"type": "PodScheduled", "status": "True"}])
    for type_, reason, message, when in [
            ("Warning", "FailedScheduling", "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910.",
             "2026-01-01T00:00:01.000000Z"),
            ("Normal", "Scheduled", f"Successfully assigned default/{pod} to node-1", "2026-01-01T00:00:40.000000Z")]:
        k8s.put("v1/events", {"apiVersion": "v1", "kind": "Event",
                              "metadata": {"name": f"{pod}.{reason.lower()}", "namespace": "default"},
                              "involvedObject": {"kind": "Pod", "name": pod, "namespace": "default"},
                              "type": type_, "reason": reason, "message": message, "eventTime": when,
                              "firstTimestamp": None, "lastTimestamp": None})
    result = await status("leo-s")
    assert (result["phase"], result["reason"]) == ("Pending", "ContainerCreating")


async def test_logs_follow_ends_when_a_rank_restarted_before_attaching(k8s):
    await submit("leo-rr")
    old = k8s.pod("leo-rr", 0, "Failed", suffix="old01", state={"terminated": {"exitCode": 1, "reason": "Error"}})
    new = k8s.pod("leo-rr", 0, "Succeeded", suffix="new02", created="2026-01-01T00:05:00Z",
                  state={"terminated": {"exitCode": 0, "reason": "Completed"}})
    k8s.script_log(old, b"[rank 0] attempt 1\n")
    k8s.script_log(new, b"[rank 0] attempt 2\n")
    k8s.set_job_status("leo-rr", {"succeeded": 1, "failed": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    code, out, err = await asyncio.wait_for(cli("logs", "leo-rr", "-f"), timeout=30)
    assert code == 0, err
    assert out.splitlines() == ["[rank 0] attempt 2"]


async def test_plain_jobs_work_when_volcano_answers_403(k8s):
    forbid_volcano(k8s, "leo-pj")
    await submit("leo-pj")
    k8s.pod("leo-pj", 0, "Running", node="n1")
    code, out, err = await cli("list", "-o", "json")
    assert code == 0, err
    assert [item["name"] for item in json.loads(out)] == ["leo-pj"]
    assert (await status("leo-pj"))["phase"] == "Running"
    code, out, err = await cli("cancel", "leo-pj")
    assert code == 0, err
    assert out.strip() == ("job leo-pj cancelled in namespace default: deleted Job leo-pj, Service leo-pj, "
                           "ConfigMap leo-pj-config, 1 pod(s)")
    assert not [key for key in k8s.alive() if "leo-pj" in key[2]]


async def test_logs_when_the_kubelet_cannot_be_reached(k8s, s3_env):
    train = Train(s3_env)
    await submit("leo-k", *train.flags)
    train.put("leo-k/logs/rank-0.log", "published line\n")
    pod = k8s.pod("leo-k", 0, "Running", node="node-1")
    k8s.emu[f"get /api/v1/namespaces/default/pods/{pod}/log"] << 500 << {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 500, "reason": "InternalError",
        "message": f'Get "https://10.0.0.5:10250/containerLogs/default/{pod}/leo": dial tcp 10.0.0.5:10250: '
                   "connect: connection refused"}
    code, out, err = await cli("logs", "leo-k")
    assert code == 1
    assert out.splitlines() == ["[rank 0] published line"]
    assert f"leo-launch: error: cannot read the log of pod {pod}: InternalError: Get" in err
    assert "connection refused" not in out


async def test_preflight_stops_submit_and_render_before_anything_is_created(k8s):
    k8s.put("v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "cpu-0"},
                         "status": {"allocatable": {"cpu": "64", "memory": "256Gi"}}})
    ascend = ["--exp", "mini_5shot", "--accel", "ascend", "--cards", "8", "--data-url", "s3://leo-data/tiny",
              "--set", "metatrain_batch_size=8"]
    expected = "no node advertises huawei.com/Ascend910: is the Ascend device plugin installed?"
    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-pf", *ascend)
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"leo-launch: error: pre-flight (context emu, {k8s.url}): {expected}; nothing was created")
    assert k8s.posts == []
    code, out, err = await cli("render", "--check-cluster", "--name", "leo-pf", *ascend)
    assert code == 1 and expected in err and out == ""
    # a Secret that exists but lacks a key; kmock serves no Namespace objects: the fixture
    # scripts default and team-a, so an unscripted namespace reads as missing
    k8s.put("v1/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "obs", "namespace": "default"},
                           "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ=="}})
    code, out, err = await cli("render", "--check-cluster", "--name", "leo-pf", *TINY, "--cards", "2",
                               "--storage-secret", "obs")
    assert code == 1 and "Secret obs has no AWS_SECRET_ACCESS_KEY (it holds: AWS_ACCESS_KEY_ID)" in err
    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-pf", *TINY, "--cards", "2",
                               "--namespace", "nope")
    assert code == 1 and "namespace nope does not exist" in err
    assert k8s.posts == []
    code, out, err = await cli("render", "--check-cluster", "--name", "leo-pf", *TINY, "--cards", "2")
    assert code == 0, err
    assert "kind: Job" in out


async def test_status_of_a_new_job_a_failing_rank_and_an_exit_2_failure(k8s, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("AWS_") and k != "AWS_EC2_METADATA_DISABLED"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(k8s.tmp_path))
    await submit("leo-n2", "--cards", "4", "--nodes", "2", "--train-url", "s3://leo-runs/train")
    code, table, err = await cli("status", "leo-n2")  # no pod yet: still a table of pods
    assert code == 0, err
    assert next(line for line in table.splitlines() if line.startswith("RANK")).split()[3] == "POD"
    # no storage configured here: progress is not read (no boto3 credential chain)
    assert "STORAGE   progress unavailable: not read: no storage credentials or endpoint" in table

    k8s.pod("leo-n2", 0, "Running", node="n1")
    k8s.pod("leo-n2", 1, "Failed", node="n2", suffix="old01", state={"terminated": {"exitCode": 1, "reason": "Error"}})
    k8s.set_job_status("leo-n2", {"failed": 1, "active": 1})
    result = await status("leo-n2")  # the replacement pod does not exist yet
    assert (result["phase"], result["restarts"]) == ("Restarting", 1)

    k8s.pod("leo-n2", 1, "Failed", node="n3", suffix="new02", created="2026-01-01T00:05:00Z",
            state={"terminated": {"exitCode": 2, "reason": "Error"}})
    k8s.set_job_status("leo-n2", {"failed": 2, "active": 1})  # the Job controller has not marked it yet
    result = await status("leo-n2")
    assert result["phase"] == "Failed"
    assert result["reason"] == "node rank 1 (leo-n2-1-new02) exit code 2 (bad configuration, not retried)"


async def test_a_second_cancel_leaves_a_terminating_pod_alone(k8s):
    await submit("leo-t")
    pod = k8s.pod("leo-t", 0, "Running", node="gone-node")
    obj = json.loads(json.dumps(k8s.get("v1/pods", pod)))
    code, out, err = await cli("cancel", "leo-t")
    assert code == 0 and out.strip().endswith("1 pod(s)")
    # a pod bound to a node without kubelet stays Terminating (kmock deleted it: put it back)
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    k8s.put("v1/pods", obj)
    deletes = len(k8s.deletes)
    code, out, err = await cli("cancel", "leo-t")
    assert code == 0, err
    assert out.strip() == "no job 'leo-t' in namespace default: nothing to cancel (1 pod(s) still terminating)"
    assert len(k8s.deletes) == deletes


# ------------------------------------------------------------------ permissions (issue 27)


async def test_submit_asks_the_api_server_before_creating_anything(k8s):
    """The client wrapper's SelfSubjectAccessReview over HTTP: one review per right."""
    k8s.denied = {"create services", "delete jobs.batch"}
    code, out, err = await cli("submit", "--backend", "k8s", "--name", "leo-p", "--cards", "2", *TINY)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "leo-launch: error: not allowed in namespace default: create services, delete jobs.batch; "
        "nothing was created; a cluster admin can grant the Role `leo-launch rbac -n default "
        "--scheduler job` prints"]
    assert k8s.posts == [] and not k8s.alive("configmaps")
    assert {ns for ns, _ in k8s.reviews} == {"default"}
    assert len(k8s.reviews) == len(set(k8s.reviews)) == 7  # each right of submit once
    k8s.denied = set()
    await submit("leo-p")
    deletes = len(k8s.deletes)  # the dry-run's undo of kmock's stored ConfigMap
    k8s.denied = {"delete pods"}
    code, out, err = await cli("cancel", "leo-p")
    assert code == 1
    assert "not allowed in namespace default: delete pods; job leo-p was not cancelled" in err
    assert len(k8s.deletes) == deletes
