"""The decisions of the Kubernetes backend, without HTTP: phases, pending reasons, ranks,
rollback and cancel over an in-memory `ClusterAPI`, configuration discovery, and the
helpers shared with the local backend."""

from __future__ import annotations

import io
import json

import pytest

from launcher import backends
from launcher.backends import base as jobs
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
    assert info.storage_endpoint == "https://obs.cn-north-4.myhuaweicloud.com"
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
    assert api.objects == {}


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
    assert list(api.objects.values()) == [foreign]
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
        kapi.resource_path("v1", "Node", None)


# ------------------------------------------------------------------ shared helpers


def test_metrics_summary_takes_the_latest_step_and_the_best_validation():
    data = (b'{"step": 3, "kind": "train"}\n{"step": 3, "kind": "validation", "accuracy": 0.5}\n'
            b'{"step": 6, "kind": "validation", "accuracy": 0.4}\n{"step": 7, "kind": "tr')
    assert metrics.summarize_metrics(data) == {"step": 6, "best_accuracy": 0.5, "best_step": 3}
    assert metrics.summarize_metrics(b"") == {}


def test_read_progress_reports_unreachable_storage_instead_of_failing(tmp_path):
    assert metrics.read_progress((tmp_path / "none").as_uri()) == {}
    out = metrics.read_progress("s3://leo-bucket/x", endpoint="http://127.0.0.1:9")
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
    assert (result["phase"], result["reason"]) == ("Pending", "Unschedulable: 0/1 nodes")
    api.forbidden = {"Pod"}
    with pytest.raises(kapi.KubeError, match="Forbidden"):
        cluster.status(fake_cluster(api), "leo-u", progress=False)
