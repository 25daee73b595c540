"""Server-side dry-run (issue 23) against the in-memory API: every object is sent with
dryRun=All before anything is created, nothing is stored, and admission's refusals (an
object-count ResourceQuota, a policy webhook) come back as one line per object."""

from __future__ import annotations

import io

import pytest

from launcher.backends import kubernetes as cluster
from launcher.errors import LaunchError
from launcher.k8s import api as kapi
from launcher.k8s.dryrun import dry_run
from launcher.render.render import render
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster


def spec(**values):
    return build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, name="leo-dry", **values)


def quota(hard):
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team", "namespace": "default"},
            "spec": {"hard": hard}}


def test_a_dry_run_stores_nothing_and_admits_a_clean_job():
    api = FakeAPI()
    objects = render(spec())
    answer = dry_run(api, objects)
    assert (answer.refusals, answer.warnings, answer.ignored) == ([], [], None)
    assert [c[0] for c in api.calls if c[0] in ("create", "dry-run")] == ["dry-run"] * len(objects)
    assert api.job_objects() == []


def test_a_quota_and_a_webhook_refuse_one_line_per_object():
    api = FakeAPI()
    api.put(quota({"count/jobs.batch": "0", "count/configmaps": "5"}))
    api.webhooks.append(lambda obj: "Service must carry label team" if obj["kind"] == "Service" else None)
    answer = dry_run(api, render(spec()))
    assert answer.refusals == [
        'Service leo-dry: Forbidden: admission webhook "validate.policy.example" denied the request: '
        "Service must carry label team (HTTP 403)",
        'Job leo-dry: Forbidden: jobs.batch "leo-dry" is forbidden: exceeded quota: team, requested: '
        "count/jobs.batch=1, used: count/jobs.batch=0, limited: count/jobs.batch=0 (HTTP 403)"]
    assert all("\n" not in line for line in answer.refusals)


@pytest.mark.parametrize("scheduler", ["job", "volcano", "jobset"])
def test_submit_dry_runs_every_flavour_and_creates_nothing_when_refused(scheduler):
    api = FakeAPI()
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "jobs.batch.volcano.sh"}})
    api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "jobsets.jobset.x-k8s.io"}})
    api.put({"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue", "metadata": {"name": "default"},
             "status": {"state": "Open"}})
    s = spec(scheduler=scheduler)
    objects = render(s)
    job = objects[-1]
    plural = kapi.PLURALS[job["kind"]]
    api.put(quota({f"count/{plural}.{job['apiVersion'].split('/')[0]}": "0"}))
    api.warn = lambda obj: ["would violate PodSecurity \"restricted:latest\": nothing"] if obj is job else []
    err = io.StringIO()
    with pytest.raises(LaunchError) as raised:
        cluster.submit(fake_cluster(api), s, objects, out=io.StringIO(), err=err)
    assert str(raised.value) == (f"server-side dry-run (context test): the API server refused 1 of {len(objects)} "
                                 "object(s) (above); nothing was created")
    lines = err.getvalue().splitlines()
    assert [line for line in lines if "refused" in line] == [
        f"leo-launch: dry-run: refused {job['kind']} leo-dry: Forbidden: {plural}.{job['apiVersion'].split('/')[0]} "
        f'"leo-dry" is forbidden: exceeded quota: team, requested: count/{plural}.{job["apiVersion"].split("/")[0]}=1, '
        f"used: count/{plural}.{job['apiVersion'].split('/')[0]}=0, limited: "
        f"count/{plural}.{job['apiVersion'].split('/')[0]}=0 (HTTP 403)"]
    assert not [c for c in api.calls if c[0] == "create"]
    assert {o["kind"] for o in api.job_objects()} == {"CustomResourceDefinition", "Queue", "ResourceQuota"}
    del api.objects[("v1", "ResourceQuota", "default", "team")]
    err = io.StringIO()
    cluster.submit(fake_cluster(api), s, objects, out=io.StringIO(), err=err)
    assert err.getvalue() == (f"leo-launch: warning: dry-run: {job['kind']} leo-dry: would violate PodSecurity "
                              '"restricted:latest": nothing\n')
    assert [c[0] for c in api.calls if c[0] in ("create", "dry-run")][-2 * len(objects):] == \
        ["dry-run"] * len(objects) + ["create"] * len(objects)


def test_a_server_that_ignores_dry_run_is_undone_and_said():
    class Ignoring(FakeAPI):
        def create(self, obj, *, dry_run=False):
            return super().create(obj)  # an emulator that stores anyway

    api = Ignoring()
    answer = dry_run(api, render(spec()))
    assert answer.ignored == ("the API server stored ConfigMap leo-dry-config despite dryRun=All (deleted it "
                              "again); admission not asked")
    assert api.job_objects() == []


def test_the_client_wrapper_sends_dry_run_all_and_reads_warnings():
    seen = {}

    class Headers(dict):
        def getlist(self, key):
            return ['299 - "would violate PodSecurity"'] if key == "Warning" and seen["query"] else []

    class Response:
        status, data, headers = 201, b"{}", Headers()

    class Client:
        def call_api(self, path, method, query_params=(), **_):
            seen.update(path=path, method=method, query=list(query_params))
            return Response()

    api = kapi.KubernetesAPI(Client(), "https://k8s")
    api.create(render(spec())[0], dry_run=True)
    assert seen == {"path": "/api/v1/namespaces/default/configmaps", "method": "POST", "query": [("dryRun", "All")]}
    assert api.warnings == ["would violate PodSecurity"]
    api.create(render(spec())[0])
    assert seen["query"] == [] and api.warnings == []
