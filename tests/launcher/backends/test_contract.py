"""One contract, two backends: the same scenarios against the local backend (real
processes on this machine) and the Kubernetes backend (over the in-memory API) —
submit, submit again, status, list, logs, cancel, cancel again, unknown job.

The local job is given an empty data folder, so its real bootstrap starts, finds no
embeddings and fails as bad configuration within seconds: the whole path runs without
MindSpore training."""

from __future__ import annotations

import io
import secrets
import sys
import time

import pytest
import yaml

from launcher.backends.base import PHASES, JobExistsError, JobNotFoundError, JobStatus
from launcher.backends.kubernetes import KubernetesBackend
from launcher.backends.local import LocalBackend
from launcher.render.render import render
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "k8s"])
def backend(request, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if request.param == "local":
        env = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path),
               "PATH": __import__("os").environ["PATH"], "AWS_EC2_METADATA_DISABLED": "true"}
        made = LocalBackend(env)
    else:
        made = KubernetesBackend(fake_cluster(FakeAPI()))
    (tmp_path / "data").mkdir()
    urls = {"data_url": str(tmp_path / "data"), "train_url": str(tmp_path / "out")}
    if request.param == "k8s":  # pods cannot use this machine's paths: the test S3 server
        server = request.getfixturevalue("s3_env")
        bucket = server.create_bucket(f"leo-contract-{secrets.token_hex(4)}")
        urls = {"data_url": f"s3://{bucket}/data", "train_url": f"s3://{bucket}/out",
                "storage_endpoint": server.endpoint}
    made.test_spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1,
                                    name="leo-contract", **urls)
    yield made
    made.cancel("leo-contract")


def submit(backend):
    out, err = io.StringIO(), io.StringIO()
    backend.submit(backend.plan(backend.test_spec), out=out, err=err)
    return out.getvalue()


def test_plan_creates_nothing_and_submit_does_the_plan(backend):
    plan = backend.plan(backend.test_spec)
    assert plan.spec.name == "leo-contract"
    shown = list(yaml.safe_load_all(plan.text()))
    assert backend.list() == []  # planning created nothing
    if backend.name == "local":  # the command, its environment, the paths and the state folder
        (shown,) = shown
        assert shown["state_dir"] == str(plan.state_dir) and plan.state_dir.name == "leo-contract"
        assert shown["command"][1:3] == ["-m", "launcher.backends.supervisor"]
        assert shown["environment"]["LEO_LOCAL_JOB"] == f"leo-contract:{plan.token}"
        assert shown["paths"]["outputs"].endswith("/out/leo-contract")
    else:  # the manifests, exactly what render gives
        assert [o["kind"] for o in shown] == ["ConfigMap", "Service", "Job"]
        assert plan.objects == render(plan.spec)  # the spec as planned (e.g. its measured cache size)
    backend.submit(plan, out=io.StringIO(), err=io.StringIO())
    assert [s.name for s in backend.list()] == ["leo-contract"]
    if backend.name == "local":  # the planned folder and process mark, not new ones
        assert plan.state_dir.is_dir()
        assert (plan.state_dir / "state.json").read_text().count(plan.token) == 1


def test_submit_status_list_logs_cancel(backend):
    text = submit(backend)
    assert "leo-contract" in text
    with pytest.raises(JobExistsError, match="exists already"):
        submit(backend)
    status = backend.status("leo-contract")
    assert isinstance(status, JobStatus)
    assert status.name == "leo-contract" and status.backend == backend.name
    assert status.phase in PHASES
    data = status.to_dict()
    for key in ("name", "backend", "phase", "experiment", "cards", "ranks", "outputs_url"):
        assert key in data
    assert data["experiment"] == "mini_5shot" and data["cards"] == 1
    assert [s.name for s in backend.list()] == ["leo-contract"]
    assert backend.outputs("leo-contract").url.endswith("/out/leo-contract")
    if backend.name == "local":  # the real bootstrap: no embeddings → bad configuration
        deadline = time.monotonic() + 120
        while not backend.status("leo-contract").ended and time.monotonic() < deadline:
            time.sleep(0.5)
        assert backend.status("leo-contract").phase == "Failed"
    out = io.StringIO()
    assert backend.logs("leo-contract", all_ranks=True, out=out, err=io.StringIO()) == 0
    if backend.name == "local":
        assert "[node 0]" in out.getvalue()
    said = backend.cancel("leo-contract")
    assert "leo-contract" in said
    with pytest.raises(JobNotFoundError):
        backend.status("leo-contract")
    assert "nothing to cancel" in backend.cancel("leo-contract")
    assert backend.list() == []


def test_an_unknown_job(backend):
    with pytest.raises(JobNotFoundError):
        backend.status("no-such-job")
    with pytest.raises(JobNotFoundError):
        backend.outputs("no-such-job")
    with pytest.raises(JobNotFoundError):
        backend.logs("no-such-job", out=io.StringIO(), err=io.StringIO())
    assert "nothing to cancel" in backend.cancel("no-such-job")


def test_a_status_key_jobstatus_has_no_field_for_is_an_error(backend, monkeypatch):
    """A backend's status or list entry with a key JobStatus lacks is a programming error
    (a misspelt or new field), not something to drop without a word."""
    module = sys.modules[type(backend).__module__]
    entry = {"name": "leo-contract", "backend": backend.name, "phase": "Running", "stepp": 3}
    monkeypatch.setattr(module, "status", lambda *args, **kwargs: dict(entry))
    monkeypatch.setattr(module, "list_jobs", lambda *args, **kwargs: [dict(entry)])
    with pytest.raises(TypeError, match="stepp"):
        backend.status("leo-contract")
    with pytest.raises(TypeError, match="stepp"):
        backend.list()
