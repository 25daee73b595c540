"""Issue 21 item 2: commands that name a job (pull, report, status, logs) reach its outputs
with the job's own storage settings (endpoint, region, addressing); flags override them."""

from __future__ import annotations

import argparse
import io

import pytest

from launcher.backends import job_outputs
from launcher.backends import kubernetes as k8s
from launcher.cli import main as cli
from launcher.k8s import state as kstate
from launcher.render.render import render
from launcher.spec.jobspec import build_job_spec
from launcher.storage import StorageSettings, add_storage_arguments
from tests.launcher.fake_cluster import FakeAPI, fake_cluster


def flags(*argv):
    parser = argparse.ArgumentParser()
    add_storage_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_the_jobs_settings_one_by_one():
    job = StorageSettings("http://10.0.0.1:8333", "cn-north-4", True)
    assert job.options(flags()).endpoint == "http://10.0.0.1:8333"
    both = job.options(flags("--storage-endpoint", "http://10.0.0.2:9000", "--storage-region", "eu-west-101"))
    assert (both.endpoint, both.region, both.path_style) == ("http://10.0.0.2:9000", "eu-west-101", True)
    assert StorageSettings(region="cn-north-4").options().resolved_endpoint("obs", {}) == \
        "https://obs.cn-north-4.myhuaweicloud.com"


def test_a_kubernetes_jobs_settings_come_from_its_configmap_else_its_pods():
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, name="leo-r",
                          train_url="obs://leo-runs/train", storage_region="cn-north-4",
                          set_overrides=["total_examples_per_class=20"])
    api = FakeAPI()
    objects = render(spec)
    k8s.submit(fake_cluster(api), spec, objects, out=io.StringIO(), err=io.StringIO())
    found = k8s.KubernetesBackend(fake_cluster(api)).outputs("leo-r")
    assert found.url == "obs://leo-runs/train/leo-r"
    assert found.storage == StorageSettings(region="cn-north-4")
    job = next(o for o in objects if o["kind"] == "Job")
    assert kstate.job_info(job, "job").storage == StorageSettings(region="cn-north-4")  # no ConfigMap


@pytest.fixture
def no_region(s3_env, monkeypatch):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    return s3_env


def test_pull_and_report_by_name_use_the_jobs_endpoint(no_region, tmp_path, monkeypatch, capsys):
    server = no_region
    bucket = server.create_bucket("leo-jobstorage")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    job = tmp_path / "state" / "leo-launch" / "jobs" / "leo-named"
    job.mkdir(parents=True)
    # obs:// whose endpoint and addressing only the job knows (as `submit --storage-endpoint`)
    (job / "job.yaml").write_text(f"name: leo-named\ntrain_url: obs://{bucket}/train\n"
                                  f"storage_endpoint: {server.endpoint}\nstorage_path_style: true\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "accuracy": 0.5}\n')
    assert cli.main(["push", str(tmp_path / "out"), f"obs://{bucket}/train/leo-named",
                     "--storage-endpoint", server.endpoint, "--path-style"]) == 0
    capsys.readouterr()
    assert cli.main(["pull", "leo-named", "--tree", "--to", str(tmp_path / "back")]) == 0, capsys.readouterr().err
    assert (tmp_path / "back" / "metrics.jsonl").read_text().startswith('{"step": 1')
    assert cli.main(["report", "leo-named", "-o", "json"]) == 0, capsys.readouterr().err
    assert job_outputs("leo-named").storage.endpoint == server.endpoint
    # a flag still wins: a wrong endpoint on the command line is used (and fails)
    assert cli.main(["pull", "leo-named", "--tree", "--to", str(tmp_path / "x"),
                     "--storage-endpoint", "http://127.0.0.1:9", "--storage-timeout", "2"]) == 1
