"""The decisions of the Kubernetes backend, without HTTP: phases, pending reasons, ranks,
rollback and cancel over an in-memory `ClusterAPI`, configuration discovery, and the
helpers shared with the local backend."""

from __future__ import annotations

import io
import json

import pytest

from launcher import backends
from launcher.backends import base as jobs
from launcher.backends import k8s_logs
from launcher.backends import kubernetes as cluster
from launcher.cli import format
from launcher.errors import LaunchError
from launcher.k8s import api as kapi
from launcher.k8s import config as kconfig
from launcher.k8s import state as kstate
from launcher.outputs import logs, metrics
from launcher.render.render import render
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from launcher.storage import StorageSettings
from launcher.util import times
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def spec(**values):
    values.setdefault("name", "leo-u")
    values.setdefault("set_overrides", ["total_examples_per_class=20"])
    return build_job_spec(experiment="mini_5shot", accelerator=values.pop("accelerator", "cpu"),
                          cards=values.pop("cards", 2), **values)


def job_object(s, **status):
    obj = next(o for o in render(s) if o["kind"] == "Job")
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    obj["status"] = status
    return obj


def pod(job, index, phase="Pending", *, suffix="abcde", created="2026-01-01T00:00:00Z",
        state=None, conditions=(), node=None, labels=None):
    return {"metadata": {"name": f"{job}-{index}-{suffix}", "namespace": "default",
                         "labels": labels or {contract.LABEL_MANAGED_BY: contract.MANAGER, contract.LABEL_JOB: job},
                         "annotations": {contract.JOB_INDEX_ANNOTATION: str(index)},
                         "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": list(conditions),
                       "containerStatuses": [{"name": "leo", "restartCount": 0, "state": state or {}}]}}


def event(kind, name, reason, message, when):
    return {"involvedObject": {"kind": kind, "name": name}, "type": "Warning", "reason": reason,
            "message": message, "lastTimestamp": when}


# ------------------------------------------------------------------ ranks and reasons


def test_pod_rank_from_annotation_volcano_index_or_name():
    assert kstate.pod_rank(pod("j", 3)) == 3
    assert kstate.pod_rank({"metadata": {"name": "j-worker-7", "annotations": {}}}) == 7
    assert kstate.pod_rank({"metadata": {"name": "j-2-x1y2z"}}) == 2
    assert kstate.pod_rank({"metadata": {"name": "x", "labels": {"volcano.sh/task-index": "4"}}}) == 4
    assert kstate.pod_rank({"metadata": {"name": "nothing"}}) is None


def test_job_info_reads_what_render_wrote():
    s = spec(cards=16, nodes=2, set_overrides=["metatrain_batch_size=16"], max_restarts=2,
             train_url="s3://leo-runs/train", storage_endpoint="https://obs.cn-north-4.myhuaweicloud.com")
    info = kstate.job_info(job_object(s), "job")
    assert (info.experiment, info.accelerator, info.cards, info.nodes) == ("mini_5shot", "cpu", 16, 2)
    assert info.max_restarts == 2  # backoffLimit is per node: 2 restarts x 2 pods
    assert info.job_url == "s3://leo-runs/train/leo-u"
    assert info.storage.endpoint == "https://obs.cn-north-4.myhuaweicloud.com"
    assert info.cards_per_node == 8


def test_a_waiting_container_beats_the_scheduler_condition_which_beats_events():
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]
    events = [event("Pod", "j-0-abcde", "FailedScheduling", "older", "2026-01-01T00:00:00Z"),
              event("Pod", "j-0-abcde", "FailedMount", "newest", "2026-01-01T00:02:00Z"),
              event("Pod", "other", "FailedMount", "not this pod", "2026-01-01T00:03:00Z")]
    assert kstate.pod_problem(pod("j", 0, state=waiting, conditions=unschedulable), events) == \
        "ErrImagePull: manifest unknown"
    assert kstate.pod_problem(pod("j", 0, conditions=unschedulable), events) == \
        "Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    assert kstate.pod_problem(pod("j", 0), events) == "FailedMount: newest"
    assert kstate.pod_problem(pod("j", 0, state={"waiting": {"reason": "ContainerCreating"}})) == \
        "ContainerCreating"


@pytest.mark.parametrize(("vphase", "phase"), [
    ("Pending", "Pending"), ("Inqueue", "Pending"), ("Running", "Running"), ("Restarting", "Restarting"),
    ("Completing", "Running"), ("Completed", "Succeeded"), ("Failed", "Failed"), ("Aborted", "Failed"),
    ("Terminated", "Failed")])
def test_volcano_job_phases(vphase, phase):
    s = spec(scheduler="volcano")
    obj = next(o for o in render(s) if o["kind"] == "Job")
    obj["status"] = {"state": {"phase": vphase, "reason": "PodFailed" if phase == "Failed" else None}}
    result = kstate.summarize(kstate.job_info(obj, "volcano"), [], now=NOW)
    assert result["phase"] == phase
    if phase == "Failed":
        assert result["reason"].startswith("PodFailed")


def test_podgroups_are_matched_by_owner_or_name():
    groups = [{"metadata": {"name": "leo-u-1234", "ownerReferences": [{"kind": "Job", "name": "leo-u"}]}},
              {"metadata": {"name": "leo-u-extra", "ownerReferences": [{"kind": "Job", "name": "leo-uu"}]}},
              {"metadata": {"name": "leo-u"}}, {"metadata": {"name": "other"}}]
    assert [g["metadata"]["name"] for g in kstate.podgroups_of(groups, "leo-u")] == ["leo-u-1234", "leo-u"]


def test_a_suspended_job_waits_for_kueue():
    obj = job_object(spec(queue="team-queue"))
    obj["spec"]["suspend"] = True
    result = kstate.summarize(kstate.job_info(obj, "job"), [], now=NOW)
    assert result["phase"] == "Pending"
    assert result["reason"] == "suspended: waiting to be admitted in queue team-queue (Kueue)"


def test_pods_of_other_jobs_or_owners_are_ignored_and_finished_pods_mean_finishing():
    s = spec(cards=4, nodes=2)
    info = kstate.job_info(job_object(s), "job")
    pods = [pod("leo-u", 0, "Succeeded"), pod("leo-u", 1, "Succeeded"),
            pod("leo-u", 1, "Failed", suffix="zzzzz", labels={contract.LABEL_JOB: "leo-u"}),  # not ours
            pod("leo-other", 0, "Failed")]
    result = kstate.summarize(info, pods, now=NOW)
    assert (result["phase"], result["reason"]) == ("Running", "finishing")
    assert [r["restarts"] for r in result["ranks"]] == [0, 0, 0, 0]
    assert result["age"] == "0s"


def test_pending_reason_counts_missing_pods():
    s = spec(cards=4, nodes=2)
    info = kstate.job_info(job_object(s), "job")
    result = kstate.summarize(info, [pod("leo-u", 0, "Running")], now=NOW)
    assert (result["phase"], result["reason"]) == ("Pending", "1 of 2 pods not created yet")
    assert result["ranks"][2]["reason"] == "no pod yet"


def test_rollback_deletes_in_reverse_and_names_what_it_could_not_delete():
    s = spec()
    api = FakeAPI(fail_create={"leo-u"}, fail_delete={"leo-u-config"})  # the Service and the Job are named leo-u
    with pytest.raises(LaunchError) as err:
        cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=io.StringIO())
    assert str(err.value) == ("creating Service leo-u in namespace default failed: Invalid: Service "
                              '"leo-u" is invalid (HTTP 422); could NOT delete ConfigMap leo-u-config '
                              "(InternalError: etcd timeout (HTTP 500)): delete by hand")

    api = FakeAPI()
    objects = render(s)
    objects[-1] = {**objects[-1], "metadata": {**objects[-1]["metadata"], "name": "bad"}}
    api.fail_create = {"bad"}
    with pytest.raises(LaunchError, match="rolled back Service leo-u, ConfigMap leo-u-config$"):
        cluster.submit(fake_cluster(api), s, objects, out=io.StringIO(), err=io.StringIO())
    assert [c for c in api.calls if c[0] == "delete"] == [
        ("delete", ("v1", "Service", "default", "leo-u")),
        ("delete", ("v1", "ConfigMap", "default", "leo-u-config"))]
    assert api.job_objects() == []


def test_cancel_deletes_only_our_objects_and_is_idempotent():
    s = spec()
    api = FakeAPI()
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=io.StringIO())
    api.objects[("v1", "Pod", "default", "leo-u-0-abcde")] = pod("leo-u", 0, "Running")
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rings-config-leo-u",
                                                                     "namespace": "default"}}
    api.objects[("v1", "ConfigMap", "default", "rings-config-leo-u")] = foreign
    text = cluster.cancel(fake_cluster(api), "leo-u")
    assert text == ("job leo-u cancelled in namespace default: deleted Job leo-u, Service leo-u, "
                    "ConfigMap leo-u-config, 1 pod(s)")
    assert api.job_objects() == [foreign]
    assert cluster.cancel(fake_cluster(api), "leo-u") == "no job 'leo-u' in namespace default: nothing to cancel"


def test_a_job_not_made_by_us_is_not_ours_to_report():
    api = FakeAPI()
    api.objects[("batch/v1", "Job", "default", "leo-u")] = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "leo-u", "labels": {}}}
    with pytest.raises(jobs.JobNotFoundError, match="is not managed by leo-launch"):
        cluster.status(fake_cluster(api), "leo-u")


def test_api_errors_keep_the_servers_reason_and_message():
    class Exc:
        status, reason = 422, "Unprocessable Entity"
        body = json.dumps({"kind": "Status", "reason": "Invalid",
                           "message": 'Job.batch "x" is invalid: spec.completions: Required value\nmore'})

    err = kapi.api_error(Exc())
    assert (err.status, err.reason) == (422, "Invalid")
    assert str(err) == 'Invalid: Job.batch "x" is invalid: spec.completions: Required value (HTTP 422)'
    Exc.body = b"upstream connect error"
    assert str(kapi.api_error(Exc())) == "Unprocessable Entity: upstream connect error (HTTP 422)"


def test_resource_paths():
    assert kapi.resource_path("v1", "Pod", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert kapi.resource_path("batch.volcano.sh/v1alpha1", "Job", None) == "/apis/batch.volcano.sh/v1alpha1/jobs"
    with pytest.raises(LaunchError):
        kapi.resource_path("apps/v1", "Deployment", None)


# ------------------------------------------------------------------ shared helpers


def test_metrics_summary_takes_the_latest_step_and_the_best_validation():
    data = (b'{"step": 3, "kind": "train"}\n{"step": 3, "kind": "validation", "accuracy": 0.5}\n'
            b'{"step": 6, "kind": "validation", "accuracy": 0.4}\n{"step": 7, "kind": "tr')
    assert metrics.summarize_metrics(data) == {"step": 6, "best_accuracy": 0.5, "best_step": 3}
    assert metrics.summarize_metrics(b"") == {}


def test_status_shows_the_latest_start_up_time():
    """leo_core.train logs one startup record per start; status shows the latest."""
    import io

    from launcher.backends.base import JobStatus
    from launcher.cli.format import print_status

    data = (b'{"step": 1, "kind": "startup", "seconds": 14.7, "since": "bootstrap"}\n'
            b'{"step": 3, "kind": "validation", "accuracy": 0.5}\n'
            b'{"step": 4, "kind": "startup", "seconds": 4.5, "since": "bootstrap"}\n')
    summary = metrics.summarize_metrics(data)
    assert summary == {"step": 4, "best_accuracy": 0.5, "best_step": 3, "startup_seconds": 4.5}
    out = io.StringIO()
    print_status(JobStatus(name="leo", backend="local", phase="Running", **summary).to_dict(), out)
    assert "START-UP  4.5 s from the last start to its first training step" in out.getvalue()


def test_read_progress_reports_unreachable_storage_instead_of_failing(tmp_path):
    assert metrics.read_progress((tmp_path / "none").as_uri()) == {}
    out = metrics.read_progress("s3://leo-bucket/x", storage=StorageSettings("http://127.0.0.1:9"))
    assert set(out) == {"storage_error"}


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (5, "5s"), (119, "119s"), (600, "10m"),
                                               (3 * 3600 + 1200, "3h20m"), (30 * 3600, "30h"),
                                               (5 * 86400, "5d")])
def test_age(seconds, text):
    assert times.age(seconds) == text


def test_rank_filter_keeps_a_rank_its_node_and_untagged_lines():
    keep = logs.rank_filter(3, 1)
    lines = ["[rank 3] a", "[rank 2] b", "[node 1] c", "[node 0] d", "plain e", "[rank 30] f"]
    assert [line for line in lines if keep(line)] == ["[rank 3] a", "[node 1] c", "plain e"]
    assert all(logs.rank_filter(None, None)(line) for line in lines)


def test_kubeconfig_discovery_and_backend_choice(tmp_path):
    config = tmp_path / "config"
    env = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "KUBECONFIG": f"{tmp_path / 'missing'}:{config}"}
    assert not kconfig.kube_configured(env)
    assert backends.choose_backend("auto", None, env) == "local"
    assert backends.choose_backend("auto", "leo-x", env) == "local"  # cancel: nothing to do
    # a new accelerator job can only run on a cluster: auto never picks local for it
    assert backends.choose_backend("auto", None, env, accel="ascend") == "k8s"
    assert backends.choose_backend("auto", None, env, accel="cpu") == "local"
    with pytest.raises(jobs.JobNotFoundError, match="no Kubernetes cluster is configured"):
        backends.get_backend("auto", "leo-x", environ=env).status("leo-x")
    config.write_text("apiVersion: v1\n")
    assert kconfig.kube_configured(env) and backends.choose_backend("auto", "leo-x", env) == "k8s"
    (tmp_path / "state" / "leo-launch" / "jobs" / "leo-x").mkdir(parents=True)
    assert backends.choose_backend("auto", "leo-x", env) == "local"
    assert backends.choose_backend("k8s", "leo-x", env) == "k8s"
    home_env = {"HOME": str(tmp_path)}
    assert not kconfig.kube_configured(home_env)
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("apiVersion: v1\n")
    assert kconfig.kube_configured(home_env)


def test_connect_without_any_configuration_says_so(tmp_path):
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    with pytest.raises(LaunchError, match="no Kubernetes configuration"):
        kconfig.connect(environ=env)


def test_status_table_groups_ranks_by_pod():
    status = {"name": "leo-u", "backend": "k8s", "namespace": "default", "phase": "Pending",
              "reason": "node rank 1: Unschedulable: 0/2 nodes", "experiment": "mini_5shot",
              "accelerator": "ascend", "cards": 4, "nodes": 2, "restarts": 0, "max_restarts": 3,
              "age": "5m", "ranks": [
                  {"rank": 0, "node_rank": 0, "pod": "leo-u-0-a", "phase": "Running", "node": "n1", "restarts": 0, "age": "5m"},
                  {"rank": 1, "node_rank": 0, "pod": "leo-u-0-a", "phase": "Running", "node": "n1", "restarts": 0, "age": "5m"},
                  {"rank": 2, "node_rank": 1, "pod": "leo-u-1-b", "phase": "Pending", "node": None, "restarts": 0, "age": "5m",
                   "reason": "Unschedulable: 0/2 nodes"},
                  {"rank": 3, "node_rank": 1, "pod": "leo-u-1-b", "phase": "Pending", "node": None, "restarts": 0, "age": "5m",
                   "reason": "Unschedulable: 0/2 nodes"}]}
    out = io.StringIO()
    format.print_status(status, out)
    lines = out.getvalue().splitlines()
    assert lines[1] == "PHASE     Pending: node rank 1: Unschedulable: 0/2 nodes"
    assert lines[-2].split() == ["0-1", "0", "leo-u-0-a", "Running", "n1", "0", "5m"]
    assert lines[-1].split()[:4] == ["2-3", "1", "leo-u-1-b", "Pending"]
    assert "(Unschedulable: 0/2 nodes)" in lines[-1]


def test_status_without_permission_to_read_events_still_says_why_it_waits():
    s = spec()
    api = FakeAPI()
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=io.StringIO())
    api.objects[("v1", "Pod", "default", "leo-u-0-abcde")] = pod("leo-u", 0, conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}])
    api.forbidden = {"Event"}
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    # the missing right is named: a reason from events (e.g. a quota) would need it
    assert (result["phase"], result["reason"]) == ("Pending", "Unschedulable: 0/1 nodes (not allowed to list events)")
    api.forbidden = {"Pod"}
    with pytest.raises(kapi.KubeError, match="Forbidden"):
        cluster.status(fake_cluster(api), "leo-u", progress=False)


# ------------------------------------------------------------------ as a real control plane behaves
# (issue 11: each test reproduces what was seen on kube-apiserver/scheduler/controller-manager 1.31)


def submitted(s=None, api=None, **values):
    s = s or spec(**values)
    api = api or FakeAPI()
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=io.StringIO())
    return s, api


def put_pod(api, p):
    p = {"apiVersion": "v1", "kind": "Pod", **p}
    return api.put(p)["metadata"]["name"]


def scheduler_event(pod_name, type_, reason, message, when):
    """As the 1.31 scheduler writes them: only `eventTime` is set."""
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod_name}.{reason.lower()}", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": "default"},
            "type": type_, "reason": reason, "message": message, "eventTime": when,
            "firstTimestamp": None, "lastTimestamp": None, "reportingComponent": "default-scheduler"}


def set_job_status(api, name, **status):
    api.objects[("batch/v1", "Job", "default", name)]["status"] = status


def test_status_forgets_a_scheduling_failure_once_the_pod_is_bound():
    """Bug 1: 'FailedScheduling: 0/2 nodes are available' for a pod already on a node."""
    _, api = submitted()
    name = put_pod(api, pod("leo-u", 0, node="node-1", state={"waiting": {"reason": "ContainerCreating"}},
                            conditions=[{"type": "PodScheduled", "status": "True"}]))
    api.put(scheduler_event(name, "Warning", "FailedScheduling",
                            "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910.",
                            "2026-01-01T00:00:01.000000Z"))
    api.put(scheduler_event(name, "Normal", "Scheduled", f"Successfully assigned default/{name} to node-1",
                            "2026-01-01T00:00:30.000000Z"))
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    assert (result["phase"], result["reason"]) == ("Pending", "ContainerCreating")
    assert result["ranks"][0]["reason"] == "ContainerCreating"


def test_warnings_before_the_binding_are_stale_and_later_ones_count():
    bound = pod("j", 0, node="n1", conditions=[{"type": "PodScheduled", "status": "True"}])
    events = [scheduler_event("j-0-abcde", "Warning", "Unschedulable", "gang not ready", "2026-01-01T00:00:01Z"),
              scheduler_event("j-0-abcde", "Normal", "Scheduled", "assigned", "2026-01-01T00:00:02Z")]
    assert kstate.pod_problem(bound, events) is None
    events.append(scheduler_event("j-0-abcde", "Warning", "FailedMount", "secret not found", "2026-01-01T00:00:03Z"))
    assert kstate.pod_problem(bound, events) == "FailedMount: secret not found"
    # repeated events: the newest is the series' last observation
    older = {**events[-1], "reason": "FailedAttachVolume", "series": {"lastObservedTime": "2026-01-01T00:09:00Z"}}
    assert kstate.pod_problem(bound, [*events, older]) == "FailedAttachVolume: secret not found"


def test_logs_follow_returns_when_a_rank_restarted_before_attaching(monkeypatch):
    """Bug 2: the exit check waited for the old pod of a restarted rank, never streamed."""
    _, api = submitted()
    old = put_pod(api, pod("leo-u", 0, "Failed", suffix="old01", created="2026-01-01T00:00:00Z",
                           state={"terminated": {"exitCode": 1, "reason": "Error"}}))
    new = put_pod(api, pod("leo-u", 0, "Succeeded", suffix="new02", created="2026-01-01T00:05:00Z",
                           state={"terminated": {"exitCode": 0, "reason": "Completed"}}))
    api.logs = {old: ["[rank 0] attempt 1"], new: ["[rank 0] attempt 2", "[rank 0] done"]}
    set_job_status(api, "leo-u", succeeded=1, failed=1, conditions=[{"type": "Complete", "status": "True"}])
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) > 20:
            raise AssertionError("logs -f does not return")

    monkeypatch.setattr(k8s_logs.time, "sleep", sleep)
    out = io.StringIO()
    assert cluster.logs(fake_cluster(api), "leo-u", follow=True, all_ranks=True, out=out, err=io.StringIO(),
                        poll=0) == 0
    assert out.getvalue().splitlines() == ["[rank 0] attempt 2", "[rank 0] done"]


def test_plain_jobs_work_for_a_user_whom_volcano_is_forbidden():
    """Bug 3: submit, list, status and cancel queried batch.volcano.sh and died on its 403."""
    api = FakeAPI()
    api.forbidden = {"batch.volcano.sh", "scheduling.volcano.sh"}
    s, _ = submitted(api=api)
    put_pod(api, pod("leo-u", 0, "Running", node="n1"))
    c = fake_cluster(api)
    assert [item["name"] for item in cluster.list_jobs(c, progress=False)] == ["leo-u"]
    assert cluster.status(c, "leo-u", progress=False)["phase"] == "Running"
    with pytest.raises(jobs.JobNotFoundError):
        cluster.status(c, "no-such-job", progress=False)
    assert cluster.cancel(c, "leo-u") == ("job leo-u cancelled in namespace default: deleted Job leo-u, "
                                          "Service leo-u, ConfigMap leo-u-config, 1 pod(s)")
    assert api.job_objects() == []
    again = cluster.cancel(c, "leo-u")
    assert again.startswith("no job 'leo-u' in namespace default: nothing to cancel (a Volcano Job leo-u "
                            "could not be looked for (Forbidden")
    # a Volcano job needs Volcano: there the 403 is the answer
    with pytest.raises(kapi.KubeError, match="Forbidden"):
        submitted(spec(scheduler="volcano"), api=api)


def test_cancel_goes_on_after_a_failure_and_says_what_it_could_not_delete():
    """Bug 3: cancel deleted the Job, hit a 403 and left the rest with only the error."""
    _, api = submitted()
    put_pod(api, pod("leo-u", 0, "Running", node="n1"))
    api.forbidden = {"Service"}
    with pytest.raises(LaunchError) as err:
        cluster.cancel(fake_cluster(api), "leo-u")
    assert str(err.value).startswith(
        "job leo-u only partly cancelled in namespace default: deleted Job leo-u, ConfigMap leo-u-config, "
        "1 pod(s); could NOT delete Service leo-u (Forbidden: services.core is forbidden")
    assert [o["kind"] for o in api.job_objects()] == ["Service"]


def test_logs_when_the_kubelet_cannot_be_reached_fall_back_to_the_published_logs(tmp_path):
    """Bug 4: the error went to stdout with exit code 0, and no fallback."""
    train = tmp_path / "train"
    (train / "leo-u" / "logs").mkdir(parents=True)
    (train / "leo-u" / "logs" / "rank-0.log").write_text("step 1\nstep 2\n")
    _, api = submitted(train_url=train.as_uri())
    name = put_pod(api, pod("leo-u", 0, "Running", node="node-1"))
    api.logs[name] = kapi.KubeError(500, "InternalError", 'Get "https://10.0.0.5:10250/containerLogs/default/'
                                    f'{name}/leo": dial tcp 10.0.0.5:10250: connect: connection refused')
    out, err = io.StringIO(), io.StringIO()
    assert cluster.logs(fake_cluster(api), "leo-u", out=out, err=err) == 1
    assert out.getvalue().splitlines() == ["[rank 0] step 1", "[rank 0] step 2"]
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"leo-launch: error: cannot read the log of pod {name}: InternalError: ")
    assert "connection refused (HTTP 500)" in lines[0]
    assert lines[1] == f"leo-launch: showing the logs published under {(train / 'leo-u').as_uri()} instead"


def test_a_second_cancel_does_not_delete_terminating_pods_again():
    """Bug 5: pods on a node without kubelet stay Terminating; cancel said 'deleted 1 pod(s)' again."""
    _, api = submitted()
    api.terminating = True
    put_pod(api, pod("leo-u", 0, "Running", node="gone-node"))
    assert cluster.cancel(fake_cluster(api), "leo-u").endswith("ConfigMap leo-u-config, 1 pod(s)")
    assert cluster.cancel(fake_cluster(api), "leo-u") == (
        "no job 'leo-u' in namespace default: nothing to cancel (1 pod(s) still terminating)")


def test_the_status_table_of_a_kubernetes_job_without_pods_is_headed_pod():
    """Bug 5: headed PID (the local backend's) while no pod existed yet."""
    _, api = submitted()
    out = io.StringIO()
    format.print_status(cluster.status(fake_cluster(api), "leo-u", progress=False), out)
    header = next(line for line in out.getvalue().splitlines() if line.startswith("RANK"))
    assert header.split()[:4] == ["RANK", "NODE", "RANK", "POD"]


def test_exit_code_2_fails_the_job_before_the_job_controller_marks_it(monkeypatch):
    """Bug 5: --wait printed 'Restarting: ... (bad configuration, not retried)' first."""
    _, api = submitted()
    put_pod(api, pod("leo-u", 0, "Failed", node="n1", state={"terminated": {"exitCode": 2, "reason": "Error"}}))
    set_job_status(api, "leo-u", failed=1)  # no Failed/FailureTarget condition yet
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) > 5:
            raise AssertionError("--wait goes on waiting")

    monkeypatch.setattr(jobs.time, "sleep", sleep)
    out, err = io.StringIO(), io.StringIO()
    assert jobs.wait_and_report(cluster.KubernetesBackend(fake_cluster(api)), "leo-u", out=out, err=err) == 1
    assert "Restarting" not in err.getvalue()
    assert out.getvalue() == ("job leo-u: Failed (node rank 0 (leo-u-0-abcde) exit code 2 "
                              "(bad configuration, not retried))\n")
    # exit code 1 is retried: restarting
    api.objects[("v1", "Pod", "default", "leo-u-0-abcde")]["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 1, "reason": "Error"}}
    assert cluster.status(fake_cluster(api), "leo-u", progress=False)["phase"] == "Restarting"


def test_status_shows_the_termination_message_of_a_failed_pod():
    """Issue 22 item 17: 'exit code 1' alone; the pod's termination message says why."""
    s, api = submitted(max_restarts=0)
    pod_template = next(o for o in render(s) if o["kind"] == "Job")["spec"]["template"]["spec"]
    assert pod_template["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    put_pod(api, pod("leo-u", 0, "Failed", node="n1", state={"terminated": {
        "exitCode": 1, "reason": "Error",
        "message": "error: data_url s3://bkt/leo: no objects under this prefix (retriable)\n"}}))
    set_job_status(api, "leo-u", failed=1, conditions=[
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    assert result["reason"] == ("BackoffLimitExceeded; last failure: node rank 0 (leo-u-0-abcde) exit code 1: "
                                "error: data_url s3://bkt/leo: no objects under this prefix (retriable)")
    assert result["ranks"][0]["reason"].endswith("no objects under this prefix (retriable)")
    # FallbackToLogsOnError: the kubelet's tail of the log; its last line is kept
    api.objects[("v1", "Pod", "default", "leo-u-0-abcde")]["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "[rank 0] step 3\n[rank 1] step 3\n"}}
    assert cluster.status(fake_cluster(api), "leo-u", progress=False)["ranks"][0]["reason"] == \
        "exit code 137 (OOMKilled): [rank 1] step 3"


def test_restarts_count_a_failed_pod_before_its_replacement_exists():
    """Bug 5: RESTARTS lagged by one until the Job controller made the new pod."""
    _, api = submitted(cards=4, nodes=2)
    put_pod(api, pod("leo-u", 0, "Running", node="n1"))
    put_pod(api, pod("leo-u", 1, "Failed", node="n2", suffix="old01",
                     state={"terminated": {"exitCode": 1, "reason": "Error"}}))
    set_job_status(api, "leo-u", failed=1, active=1)
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    assert result["phase"] == "Restarting"
    assert (result["restarts"], [r["restarts"] for r in result["ranks"]]) == (1, [0, 0, 1, 1])
    put_pod(api, pod("leo-u", 1, "Pending", suffix="new02", created="2026-01-01T00:05:00Z"))
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    assert (result["restarts"], [r["restarts"] for r in result["ranks"]]) == (1, [0, 0, 1, 1])


def test_restarts_come_from_the_job_controllers_count_when_the_failed_pods_are_gone():
    """Issue 22 item 18: RESTARTS counted surviving pods; the Job's status.failed counts
    the deleted ones too (backoffLimit is what the controller counts)."""
    _, api = submitted(max_restarts=3)
    put_pod(api, pod("leo-u", 0, "Running", node="n1", suffix="new03", created="2026-01-01T00:09:00Z"))
    set_job_status(api, "leo-u", failed=2, active=1)  # two replaced pods, deleted since
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    assert (result["phase"], result["restarts"], result["max_restarts"]) == ("Running", 2, 3)
    # the failure that ends the job is not a restart
    set_job_status(api, "leo-u", failed=4, conditions=[
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    assert cluster.status(fake_cluster(api), "leo-u", progress=False)["restarts"] == 3


def test_logs_all_tail_keeps_the_last_lines_of_each_rank():
    """Bug 5: --all --tail N kept the last N lines of the merged stream (all from one pod)."""
    _, api = submitted(cards=4, nodes=2)
    p0 = put_pod(api, pod("leo-u", 0, "Running", node="a"))
    p1 = put_pod(api, pod("leo-u", 1, "Running", node="b"))
    api.logs = {p0: ["[node 0] staging", "[rank 0] step 1", "[rank 1] step 1", "[rank 0] step 2", "[rank 1] step 2"],
                p1: ["[node 1] staging", "[rank 2] step 1", "[rank 3] step 1", "[rank 2] step 2", "[rank 3] step 2"]}
    out = io.StringIO()
    assert cluster.logs(fake_cluster(api), "leo-u", all_ranks=True, tail=1, out=out, err=io.StringIO()) == 0
    assert sorted(out.getvalue().splitlines()) == [  # and the last of each pod's node lines
        "[node 0] staging", "[node 1] staging",
        "[rank 0] step 2", "[rank 1] step 2", "[rank 2] step 2", "[rank 3] step 2"]
    out = io.StringIO()  # one rank: the last lines of its filtered stream, as before
    cluster.logs(fake_cluster(api), "leo-u", rank=3, tail=1, out=out, err=io.StringIO())
    assert out.getvalue().splitlines() == ["[rank 3] step 2"]


def test_logs_all_tail_keeps_a_rank_whose_last_line_is_older_than_the_others():
    """Issue 22 item 18: only tail * (cards per node + 1) lines of a pod were fetched, so a
    quiet rank (or a rank filtered out of a busy pod) lost its last lines."""
    _, api = submitted(cards=4, nodes=2)
    p0 = put_pod(api, pod("leo-u", 0, "Running", node="a"))
    p1 = put_pod(api, pod("leo-u", 1, "Running", node="b"))
    api.logs = {p0: ["[rank 1] stuck at step 3"] + [f"[rank 0] step {i}" for i in range(10)],
                p1: ["[rank 2] step 9", "[rank 3] step 9"]}
    out = io.StringIO()
    cluster.logs(fake_cluster(api), "leo-u", all_ranks=True, tail=1, out=out, err=io.StringIO())
    assert sorted(out.getvalue().splitlines()) == [
        "[rank 0] step 9", "[rank 1] stuck at step 3", "[rank 2] step 9", "[rank 3] step 9"]
    out = io.StringIO()
    cluster.logs(fake_cluster(api), "leo-u", rank=1, tail=1, out=out, err=io.StringIO())
    assert out.getvalue().splitlines() == ["[rank 1] stuck at step 3"]


@pytest.fixture
def bare_storage_env(monkeypatch, tmp_path):
    """No AWS credentials, profile, endpoint or shared files on this machine."""
    for key in list(__import__("os").environ):
        if key.startswith("AWS_") and key != "AWS_EC2_METADATA_DISABLED":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    opened = []

    def open_store(url, options=None):
        opened.append(url)
        raise LaunchError("storage reached")

    monkeypatch.setattr(metrics, "open_store", open_store)
    return opened


def test_status_and_list_read_remote_progress_only_when_storage_is_configured(bare_storage_env, monkeypatch,
                                                                              tmp_path):
    """Bug 6: each call went through boto3's default chain, which probes instance metadata."""
    _, api = submitted(train_url="s3://leo-runs/train")
    c = fake_cluster(api)
    assert cluster.status(c, "leo-u")["storage_error"] == metrics.NOT_CONFIGURED
    assert [item.get("storage_error") for item in cluster.list_jobs(c)] == [metrics.NOT_CONFIGURED]
    assert bare_storage_env == []  # storage was never asked
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert cluster.status(c, "leo-u")["storage_error"] == "storage reached"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert cluster.status(c, "leo-u")["storage_error"] == "storage reached"
    assert len(bare_storage_env) == 2


def test_a_jobs_storage_endpoint_counts_as_configured_storage(bare_storage_env):
    _, api = submitted(train_url="obs://leo-runs/train", storage_endpoint="https://obs.cn-north-4.myhuaweicloud.com")
    assert cluster.status(fake_cluster(api), "leo-u")["storage_error"] == "storage reached"
    assert metrics.storage_configured(None, {"HOME": "/nonexistent", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert not metrics.storage_configured(None, {"HOME": "/nonexistent"})


def test_no_test_can_ask_for_instance_metadata(request):
    assert "no_instance_metadata" in request.fixturenames  # tests/conftest.py, autouse
    assert __import__("os").environ.get("AWS_EC2_METADATA_DISABLED") == "true"


def test_a_job_past_its_max_runtime_says_deadline_exceeded():
    """Issue 23: activeDeadlineSeconds of the Job (batch/v1's condition) or of a pod
    (Volcano's --max-runtime) is said plainly, not as the API's reason word."""
    _, api = submitted(max_runtime=3600)
    set_job_status(api, "leo-u", failed=2, conditions=[
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline"}])
    result = cluster.status(fake_cluster(api), "leo-u", progress=False)
    assert (result["phase"], result["reason"]) == (
        "Failed", "deadline exceeded (--max-runtime): Job was active longer than specified deadline")
    set_job_status(api, "leo-u", active=1)  # Volcano's way: each pod's own deadline
    killed = pod("leo-u", 0, "Failed", state={"terminated": {"exitCode": 137, "reason": "Error"}})
    killed["status"].update(reason="DeadlineExceeded",
                            message="Pod was active on the node longer than the specified deadline")
    put_pod(api, killed)
    ranks = cluster.status(fake_cluster(api), "leo-u", progress=False)["ranks"]
    assert ranks[0]["reason"] == \
        "deadline exceeded (--max-runtime): Pod was active on the node longer than the specified deadline"
