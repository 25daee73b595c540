"""Issue 21 items 1 and 3: what the pods need to reach storage is checked before anything
is created. `--storage-region` reaches the pods; obs:// the pods could not resolve, and
local paths on Kubernetes, are refused by render/submit (one line, exit 2), and the
bootstrap makes the same check with its own environment."""

from __future__ import annotations

import io

import pytest
import yaml

from launcher.backends.kubernetes import KubernetesBackend
from launcher.cli import main as cli
from launcher.errors import FieldError, UsageError
from launcher.pod import bootstrap as bs
from launcher.spec import contract
from launcher.spec.jobspec import JobSpec, build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster
from tests.launcher.pod.test_bootstrap import write_config

BASE = ["--exp", "mini_5shot", "--accel", "cpu", "--cards", "2", "--storage-secret", "creds"]
NO_REGION = {"OBS_REGION": "", "AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_ENDPOINT_URL": "",
             "AWS_ENDPOINT_URL_S3": ""}


@pytest.fixture
def bare_env(monkeypatch):
    for key in NO_REGION:
        monkeypatch.delenv(key, raising=False)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pod_env(objects):
    job = next(o for o in objects if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {v["name"]: v.get("value") for v in container["env"]}


def test_the_region_reaches_the_pods_and_job_yaml(capsys, bare_env):
    code, out, err = run_cli(capsys, "render", *BASE, "--data-url", "obs://leo-data/mini",
                             "--train-url", "obs://leo-runs/train", "--storage-region", "cn-north-4")
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    env = pod_env(objects)
    assert env["OBS_REGION"] == env["AWS_REGION"] == "cn-north-4"
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    spec = JobSpec.from_yaml(config["data"][contract.JOB_FILE])
    assert spec.storage_region == "cn-north-4"
    assert spec.storage.options().resolved_endpoint("obs", {}) == "https://obs.cn-north-4.myhuaweicloud.com"


def test_path_style_reaches_the_pods(capsys, bare_env):
    code, out, _ = run_cli(capsys, "render", *BASE, "--data-url", "s3://leo-data/mini", "--path-style",
                           "--storage-endpoint", "http://10.0.0.1:8333")
    assert code == 0 and pod_env(list(yaml.safe_load_all(out)))["LEO_STORAGE_PATH_STYLE"] == "1"


@pytest.mark.parametrize(("flags", "field", "message"), [
    (["--storage-region", "CN_North"], "storage_region", "--storage-region 'CN_North': a region is"),
    (["--keep-checkpoints", "0"], "keep_checkpoints", "--keep-checkpoints must be at least 1, got 0"),
])
def test_bad_storage_options_name_the_field_and_the_cli_the_flag(capsys, bare_env, flags, field, message):
    code, out, err = run_cli(capsys, "render", *BASE, "--data-url", "s3://leo-data/mini", *flags)
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err
    values = {"experiment": "mini_5shot", "accelerator": "cpu", "cards": 2, field: flags[1]}
    with pytest.raises(FieldError) as raised:
        JobSpec.from_dict({**values, "name": "leo-x"})
    assert raised.value.fields == (field,)


def test_path_style_in_a_job_file_must_be_a_boolean():
    with pytest.raises(FieldError, match="storage_path_style must be true or false"):
        JobSpec.from_dict({"experiment": "mini_5shot", "accelerator": "cpu", "cards": 2, "name": "leo-x",
                           "storage_path_style": "yes"})


@pytest.mark.parametrize("command", [["render"], ["submit", "--backend", "k8s", "--dry-run"]])
def test_obs_without_region_or_endpoint_is_refused_before_anything(capsys, bare_env, monkeypatch, command):
    # the user's shell having OBS_REGION does not help: the pods do not get it
    monkeypatch.setenv("OBS_REGION", "cn-north-4")
    code, out, err = run_cli(capsys, *command, *BASE, "--data-url", "obs://leo-data/mini",
                             "--train-url", "obs://leo-runs/train")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "obs://leo-data/mini" in err and "--storage-region" in err


def test_submit_to_a_cluster_creates_nothing_without_region(bare_env):
    api = FakeAPI()
    backend = KubernetesBackend(fake_cluster(api))
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, storage_secret="creds",
                          data_url="obs://leo-data/mini", train_url="obs://leo-runs/train")
    with pytest.raises(UsageError, match="needs a region"):
        backend.submit(backend.plan(spec), out=io.StringIO(), err=io.StringIO())
    assert api.job_objects() == [] and not [c for c in api.calls if c[0] == "create"]


@pytest.mark.parametrize("flag, value", [("--train-url", "runs"), ("--train-url", "/abs/runs"),
                                         ("--data-url", "file:///data/mini"), ("--init", "/w/leo.ckpt")])
def test_kubernetes_refuses_local_paths(capsys, flag, value):
    urls = {"--data-url": "s3://leo-data/mini", "--train-url": "s3://leo-runs/train", flag: value}
    argv = [item for pair in urls.items() for item in pair]
    for command in (["render"], ["submit", "--backend", "k8s", "--dry-run"]):
        code, out, err = run_cli(capsys, *command, *BASE, *argv)
        assert code == 2 and out == "", err
        assert err.count("\n") == 1 and "local path" in err and "s3://" in err and "--backend local" in err


def test_local_dry_run_shows_the_local_plan_with_the_shells_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEO_LOCAL_ROOT", str(tmp_path / "state"))
    code, out, err = run_cli(capsys, "submit", "--backend", "local", "--dry-run", *BASE,
                             "--data-url", str(tmp_path / "data"), "--train-url", "runs")
    assert code == 0, err
    assert "kind:" not in out and str(tmp_path / "runs") in out


def test_the_local_backend_checks_with_this_machines_environment(capsys, bare_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LEO_LOCAL_ROOT", str(tmp_path / "state"))
    argv = ["submit", "--backend", "local", "--dry-run", *BASE, "--data-url", "obs://leo-data/mini"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "needs a region" in err and err.count("\n") == 1
    monkeypatch.setenv("OBS_REGION", "cn-north-4")  # local workers inherit it
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err


def test_the_bootstrap_refuses_first_with_its_own_environment(tmp_path):
    write_config(tmp_path / "cfg", data_url="obs://leo-data/mini", train_url="obs://leo-runs/train")
    env = {"LEO_CONFIG_DIR": str(tmp_path / "cfg"), "LEO_CACHE_DIR": str(tmp_path / "cache"),
           "LEO_NODE_RANK": "0", "LEO_MASTER_ADDR": "127.0.0.1"}
    boot = bs.Bootstrap(env, io.StringIO())
    with pytest.raises(UsageError, match="needs a region"):
        boot.run()
    assert not (tmp_path / "cache").exists()  # nothing staged, nothing made
