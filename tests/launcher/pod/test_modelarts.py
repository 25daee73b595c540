"""The ModelArts-style entry, `python -m launcher.bootstrap --data_url=… --train_url=…`: the
arguments it takes and ignores, and one short job end to end on this machine (tiny synthetic
data in the session's S3 server standing in for OBS, one CPU process, a few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.errors import UsageError
from launcher.pod import bootstrap, modelarts
from launcher.pod.node import load_job, paths_from_env
from launcher.spec import contract
from tests.msrun_util import free_port


def prepared(tmp_path, *argv, **env):
    environ, notes = modelarts.prepare(list(argv), {contract.ENV_CACHE_DIR: str(tmp_path / "cache"), **env})
    job = yaml.safe_load(Path(environ[contract.ENV_CONFIG_DIR], contract.JOB_FILE).read_text())
    return environ, notes, job


def test_the_modelarts_flags_make_a_one_node_job(tmp_path):
    environ, notes, job = prepared(
        tmp_path, "--data_url=obs://bkt/embeddings", "--train_url=obs://bkt/runs", "--enable_modelarts=True",
        "--checkpoint_url", "obs://bkt/leo_ms_init.ckpt", "--device_target=CPU", "--device_num=2",
        "--init_method=tcp://x:1", "--save_path=./ckpt")
    assert (job["experiment"], job["accelerator"], job["cards"], job["nodes"]) == ("mini_1shot", "cpu", 2, 1)
    assert (job["data_url"], job["train_url"], job["name"]) == ("obs://bkt/embeddings", "obs://bkt/runs",
                                                                 "leo-mini-1shot-cpu2")
    assert environ[contract.ENV_CONFIG_DIR] == str(tmp_path / "cache" / "modelarts" / "config")
    assert (environ[contract.ENV_NODE_RANK], environ[contract.ENV_MASTER_ADDR]) == ("0", "127.0.0.1")
    experiment = yaml.safe_load((tmp_path / "cache/modelarts/config" / contract.EXPERIMENT_FILE).read_text())
    assert experiment["name"] == "mini_1shot"
    assert job["init_url"] == "obs://bkt/leo_ms_init.ckpt"  # the ModelZoo's checkpoint_url: initial weights
    assert [n.split(" is ignored")[0] for n in notes[:-1]] == \
        ["note: --enable_modelarts", "note: --init_method", "note: --save_path"]
    assert notes[-1] == ("ModelArts-style job leo-mini-1shot-cpu2: mini_1shot on 2 cpu process(es); outputs "
                         "under obs://bkt/runs/leo-mini-1shot-cpu2/")


def test_dash_spellings_and_the_modelzoo_experiment_flags(tmp_path):
    _, _, job = prepared(tmp_path, "--data-url", "/data", "--train-url", "/runs", "--dataset_name=tieredImageNet",
                         "--num_tr_examples_per_class=5", "--name", "t5", "--steps", "7",
                         LEO_ACCELERATOR="ascend")
    assert (job["experiment"], job["accelerator"], job["name"]) == ("tiered_5shot", "ascend", "t5")
    assert job["overrides"] == {"num_steps_limit": "7"}


@pytest.mark.parametrize("flag, steps", [
    ("--enable_profiling=True", 5), ("--enable_profiling=true", 5), ("--enable-profiling=TRUE", 5),
    ("--enable_profiling=False", None), (None, None),
])
def test_enable_profiling_is_submit_profile(tmp_path, flag, steps):
    """The ModelZoo's --enable_profiling (True/False, as its ast.literal_eval parses them)
    is `leo-launch submit --profile`: the job the bootstrap loads profiles every rank."""
    argv = ["--data_url=/d", "--train_url=/runs", "--device_target=CPU"] + ([flag] if flag else [])
    environ, notes, job = prepared(tmp_path, *argv)
    assert job.get("profile_steps") == steps
    spec, _ = load_job(paths_from_env(environ))
    assert spec.profile_steps == steps
    assert not any("enable" in note for note in notes)  # used, not ignored


@pytest.mark.parametrize("argv, message", [
    (["--train_url=/runs"], "the following arguments are required: --data_url"),
    (["--data_url=/d", "--device_target=TPU"], "unknown accelerator 'tpu'"),
    (["--data_url=/d", "--device_target=Ascend", "--device_num=16"], "Ascend nodes take 1, 2, 4 or 8 cards"),
    (["--data_url=/d", "--dataset_name=omniglot"], "--dataset_name 'omniglot'"),
    (["--data_url=/d", "--enable_profiling=yes"], "argument --enable_profiling/--enable-profiling: expected "
                                                  "True or False, got 'yes'"),
])
def test_bad_arguments_are_usage_errors(tmp_path, argv, message):
    with pytest.raises(UsageError, match=message):
        modelarts.prepare(argv, {contract.ENV_CACHE_DIR: str(tmp_path)})
    assert not (tmp_path / "modelarts").exists()


def test_a_bad_argument_is_one_error_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(contract.ENV_CACHE_DIR, str(tmp_path))
    assert bootstrap.main(["--data_url=/d", "--enable_profiling=1x"]) == contract.EXIT_BAD_CONFIG == 2
    out = capsys.readouterr()
    assert out.out.strip().splitlines() == [
        "[node ?] error: python -m launcher.bootstrap: argument --enable_profiling/--enable-profiling: expected "
        "True or False, got '1x' (bad configuration: not retrying)"]
    assert not (tmp_path / "modelarts").exists()


@pytest.fixture
def obs(s3_server, tmp_path):
    """Tiny embeddings in an S3 bucket (OBS speaks the same API), and a clean environment."""
    from leo_core.synthetic import write_dataset

    write_dataset(tmp_path / "tiny", "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    s3_server.create_bucket("leo-ma-data")
    s3_server.create_bucket("leo-ma-runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OBS_", "LEO_", "MS_", "KUBE"))}
    env.update(s3_server.env())
    env.update(AWS_ENDPOINT_URL=s3_server.endpoint, KUBECONFIG=str(tmp_path / "none"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    push = subprocess.run([sys.executable, "-m", "launcher", "push", str(tmp_path / "tiny"), "s3://leo-ma-data/tiny"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr
    return env


@pytest.mark.e2e
def test_a_modelarts_style_job_runs_end_to_end(obs, tmp_path):
    env = {**obs, contract.ENV_CACHE_DIR: str(tmp_path / "cache"), contract.ENV_MASTER_PORT: str(free_port()),
           contract.ENV_EVAL_TASKS: "4", contract.ENV_PUBLISH_INTERVAL: "1"}
    argv = ["--data_url=s3://leo-ma-data/tiny", "--train_url=s3://leo-ma-runs/train", "--enable_modelarts=True",
            "--device_target=CPU", "--exp=mini_5shot", "--steps=2", "--name=ma", "--set=total_examples_per_class=20",
            "--set=checkpoint_steps=2", "--set=num_validation_batches=1", "--set=metavalid_batch_size=4",
            "--set=metatest_batch_size=4"]
    proc = subprocess.run([sys.executable, "-m", "launcher.bootstrap", *argv], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "[node 0] note: --enable_modelarts is ignored" in out
    assert "[node 0] ModelArts-style job ma: mini_5shot on 1 cpu process(es); outputs under " \
           "s3://leo-ma-runs/train/ma/" in out
    assert "[node 0] staging s3://leo-ma-data/tiny" in out and "[node 0] done" in out
    pulled = tmp_path / "pulled"
    pull = subprocess.run([sys.executable, "-m", "launcher", "pull", "s3://leo-ma-runs/train/ma", "--format", "ckpt",
                           "--to", str(pulled)], env=obs, capture_output=True, text=True, timeout=120)
    assert pull.returncode == 0, pull.stderr
    (step,) = pulled.glob("step-*")
    assert sorted(p.name for p in step.iterdir()) == ["MANIFEST.json", "leo.ckpt", "state.json"]
    tree = subprocess.run([sys.executable, "-m", "launcher", "pull", "s3://leo-ma-runs/train/ma", "--tree",
                           "--to", str(tmp_path / "tree")], env=obs, capture_output=True, text=True, timeout=120)
    assert tree.returncode == 0, tree.stderr
    result = json.loads((tmp_path / "tree" / "result.json").read_text())
    assert result["job"] == "ma" and result["tasks"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert yaml.safe_load((tmp_path / "tree" / "job.yaml").read_text())["data_url"] == "s3://leo-ma-data/tiny"
