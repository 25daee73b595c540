"""The CLI of render, submit --dry-run, experiments: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.render import render
from launcher.spec.jobspec import build_job_spec
from tests.launcher.render_helpers import run_cli, write_inventory

ROOT = Path(__file__).resolve().parents[3]
BASE = ["--exp", "mini_5shot", "--accel", "ascend", "--cards", "8"]


def no_registry(image: str, accel: str) -> str:
    """The warning about an image without a registry host (the default images have none)."""
    return (f"leo-launch: warning: image {image} names no registry host: nodes can only run it from "
            f"their local image cache; build and push it (make image-{accel} IMAGE_REPO=REGISTRY/leo-launch; "
            f"docker push REGISTRY/leo-launch:{accel}) and pass --image REGISTRY/leo-launch:{accel}\n")


def test_render_prints_the_validated_manifests(capsys):
    code, out, err = run_cli(capsys, ["render", *BASE, "--train-url", "s3://leo-out/runs",
                                      "--storage-secret", "creds", "--steps", "50"])
    assert code == 0 and err == no_registry("leo-launch:ascend", "ascend")
    docs = list(yaml.safe_load_all(out))
    expected = render.render_validated(build_job_spec(
        experiment="mini_5shot", accelerator="ascend", cards=8, train_url="s3://leo-out/runs",
        storage_secret="creds", steps=50))
    assert docs == expected
    assert out.startswith("---\n") and out.count("\n---\n") == 2
    assert yaml.safe_load(docs[0]["data"]["experiment.yaml"])["num_steps_limit"] == 50


def test_render_security_options(capsys):
    code, out, err = run_cli(capsys, ["render", *BASE, "--train-url", "s3://leo-out/runs", "--storage-secret", "creds", "--run-as-user", "1500",
                                      "--run-as-group", "1600", "--ascend-driver-mount", "runtime"])
    assert code == 0 and err == no_registry("leo-launch:ascend", "ascend")
    pod = list(yaml.safe_load_all(out))[-1]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1500 and pod["securityContext"]["fsGroup"] == 1600
    assert not [v for v in pod["volumes"] if "hostPath" in v]


def test_render_warns_about_missing_outputs_and_credentials(capsys):
    code, out, err = run_cli(capsys, ["render", *BASE, "--data-url", "obs://leo-data/mini",
                                      "--storage-region", "cn-north-4"])
    assert code == 0 and out
    assert "no --train-url" in err and "without --storage-secret" in err


def test_render_with_profile_puts_it_in_job_yaml_and_warns_when_the_job_is_too_short(capsys):
    code, out, err = run_cli(capsys, ["render", *BASE, "--train-url", "s3://leo-out/runs", "--storage-secret", "creds", "--profile", "--profile-steps", "3",
                                      "--image", "localhost:5000/leo-launch:ascend"])
    assert code == 0 and err == ""
    job = yaml.safe_load(next(yaml.safe_load_all(out))["data"]["job.yaml"])
    assert job["profile_steps"] == 3
    code, out, err = run_cli(capsys, ["render", *BASE, "--train-url", "s3://leo-out/runs", "--storage-secret", "creds", "--profile", "--steps", "4",
                                      "--image", "swr.cn-north-4.myhuaweicloud.com/leo/leo-launch:ascend"])
    assert code == 0 and yaml.safe_load(next(yaml.safe_load_all(out))["data"]["job.yaml"])["profile_steps"] == 5
    assert err == ("leo-launch: warning: --profile-steps 5: the job trains 4 step(s), so at most 2 are "
                   "profiled (the first 2 compile)\n")


def test_render_to_a_directory(tmp_path, capsys):
    inventory = write_inventory(tmp_path / "nodes.yaml", 2)
    argv = ["render", "--exp", "tiered_5shot", "--accel", "ascend", "--cards", "16", "--set",
            "metatrain_batch_size=16", "--rank-table", str(inventory), "--name", "leo-t", "--train-url", "s3://leo-out/runs",
            "--storage-secret", "creds", "--out-dir", str(tmp_path / "out"), "--image", "registry.example.com/leo-launch:ascend"]
    code, out, err = run_cli(capsys, argv)
    assert code == 0 and err == ""
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["00-configmap-leo-t-config.yaml", "01-service-leo-t.yaml", "02-job-leo-t.yaml"]
    assert out.splitlines() == [str(f) for f in files]
    assert "hccl.json" in yaml.safe_load(files[0].read_text())["data"]


def test_submit_dry_run_prints_exactly_what_render_prints(tmp_path, capsys):
    argv = [*BASE, "--scheduler", "volcano", "--queue", "research", "--train-url", "s3://leo-out/runs", "--storage-secret", "creds"]
    rendered = run_cli(capsys, ["render", *argv])
    submitted = run_cli(capsys, ["submit", "--dry-run", "--backend", "k8s", *argv])
    assert rendered == submitted and rendered[0] == 0
    code, out, err = run_cli(capsys, ["submit", "--dry-run", "--backend", "k8s", *argv, "--out-dir", str(tmp_path / "out")])
    assert code == 0 and len(list((tmp_path / "out").iterdir())) == 3


@pytest.mark.parametrize("backend", ["auto", "k8s", "local"])
def test_submit_without_data_url_is_refused_before_any_backend_starts(capsys, backend):
    code, out, err = run_cli(capsys, ["submit", *BASE, "--train-url", "s3://leo-out/runs", "--storage-secret", "creds", "--backend", backend,
                                      "--wait", "--follow"])
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "submit needs --data-url" in err


BAD_INPUTS = [
    (["--exp", "mini5shot"], "did you mean mini_5shot"),
    (["--exp", "omniglot"], "unknown experiment"),
    (["--accel", "gpu"], "did you mean nvidia"),
    (["--cards", "12", "--nodes", "5"], "do not split evenly"),
    (["--cards", "12", "--nodes", "2", "--set", "metatrain_batch_size=12"], "Ascend nodes take 1, 2, 4 or 8"),
    (["--cards", "2", "--nodes", "4"], "every node needs at least one card"),
    (["--cards", "16"], "--set metatrain_batch_size=16"),
    (["--name", "My_Job"], "DNS-1035"),
    (["--name", "x" * 70], "at most 61"),
    (["--namespace", "Prod"], "DNS-1123"),
    (["--set", "metatrain_batch_size"], "key=value"),
    (["--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["--set", "dropout_rate=2"], "dropout_rate must be in [0, 1)"),
    (["--node-selector", "zone"], "key=value"),
    (["--node-selector", "zone=a b"], "value must consist"),
    (["--toleration", "k=v:Always"], "effect must be one of"),
    (["--toleration", ":NoSchedule"], "not of the form"),
    (["--data-url", "s3://My_Bucket/x"], "bucket 'My_Bucket'"),
    (["--train-url", "gs://bucket/x"], "unknown scheme"),
    (["--train-url", "file://out"], "absolute path"),
    (["--data-url", "s3://bucket/a\nb"], "control characters"),
    (["--storage-secret", "my_secret"], "a Secret name"),
    (["--storage-endpoint", "obs.example.com"], "http:// or https://"),
    (["--image", "leo launch"], "not a valid image reference"),
    (["--rank-table", "missing.yaml"], "no such inventory file"),
    (["--rank-table", "controller"], "needs --scheduler volcano"),
    (["--accel", "cpu", "--rank-table", "dynamic"], "--accel ascend only"),
    (["--cards", "abc"], "invalid int value"),
    (["--scheduler", "slurm"], "invalid choice"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--max-restarts", "-2"], "--max-restarts must be at least 0"),
    (["--memory", "lots"], "--memory 'lots'"),
    (["--nccl-debug", "INFO"], "--accel nvidia only"),
    (["--accel", "nvidia", "--nccl-ib-hca", "mlx5 0"], "interface names"),
    (["--run-as-user", "0"], "--run-as-user 0: the pods run as non-root"),
    (["--run-as-group", "root"], "invalid int value"),
    (["--ascend-driver-mount", "cdi"], "choose hostpath"),
    (["--accel", "cpu", "--ascend-driver-mount", "runtime"], "--accel ascend only"),
    (["--unknown-flag"], "unrecognized arguments"),
    (["--profile-steps", "3"], "--profile-steps applies with --profile only"),
    (["--profile", "--profile-steps", "0"], "--profile-steps must be at least 1"),
    (["--profile", "--profile-steps", "1000"], "--profile-steps must be at most 100"),
    (["--profile", "--profile-steps", "two"], "invalid int value"),
]


@pytest.mark.parametrize("command", ["render", "submit --dry-run"])
@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS, ids=[" ".join(a)[:40] for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, command, extra, message):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, [*command.split(), *BASE, *extra, "--out-dir", str(out_dir)])
    assert code == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("leo-launch") and message in err, err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_missing_required_flags_exit_2_with_one_line(capsys):
    code, out, err = run_cli(capsys, ["render", "--accel", "cpu"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "--exp" in err and "--cards" in err


def test_a_directory_of_another_render_is_left_alone(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run_cli(capsys, ["render", *BASE, "--name", "first", "--train-url", "s3://leo-out/o", "--storage-secret", "creds",
                            "--out-dir", str(out_dir)])[0] == 0
    before = {p.name: p.read_text() for p in out_dir.iterdir()}
    code, out, err = run_cli(capsys, ["render", *BASE, "--name", "second", "--out-dir", str(out_dir)])
    assert code == 2 and len(err.splitlines()) == 1 and "another render" in err
    assert {p.name: p.read_text() for p in out_dir.iterdir()} == before


def test_experiments_table_and_json(capsys):
    code, out, err = run_cli(capsys, ["experiments"])
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["NAME", "DATASET", "WAYS"]
    assert [line.split()[0] for line in lines[1:]] == ["glyphs_1shot", "glyphs_5shot", "mini_1shot",
                                                       "mini_5shot", "tiered_1shot", "tiered_5shot"]
    assert lines[6].split()[1:4] == ["tieredImageNet", "5", "5"]
    code, out, err = run_cli(capsys, ["experiments", "-o", "json"])
    data = json.loads(out)
    assert code == 0 and [d["name"] for d in data][3] == "mini_5shot"
    assert data[0]["num_tr_examples_per_class"] == 1 and data[1]["metatrain_batch_size"] == 12
    code, out, err = run_cli(capsys, ["experiments", "-o", "yaml"])
    assert code == 2 and len(err.splitlines()) == 1


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_imports_no_mindspore_boto3_or_kubernetes_client():
    result = _run("-X", "importtime", "-m", "launcher", "--help")
    assert result.returncode == 0 and "render" in result.stdout and "ranktable" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "launcher.cli" in imported  # the measurement works
    heavy = sorted(m for m in imported
                   if m.split(".")[0] in ("mindspore", "boto3", "botocore", "kubernetes", "kubernetes_validate"))
    assert heavy == []


def test_the_module_entry_point_end_to_end(tmp_path):
    result = _run("-m", "launcher", "render", "--exp", "mini_1shot", "--accel", "cpu", "--cards", "2",
                  "--train-url", "s3://leo-out/runs", "--storage-secret", "creds", "--image", "registry.example.com/leo:cpu")
    assert result.returncode == 0 and result.stderr == ""
    assert [d["kind"] for d in yaml.safe_load_all(result.stdout)] == ["ConfigMap", "Service", "Job"]
    bad = _run("-m", "launcher", "render", "--exp", "mini_1shot", "--accel", "cpu", "--cards", "99")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1
