"""`--init URL`: initial weights named in the job, staged by the bootstrap like data_url and
handed to `leo_core.train --init` (which uses them only when there is nothing to resume)."""

from __future__ import annotations

import io
import os
import secrets

import pytest

from launcher.errors import UsageError
from launcher.pod import bootstrap as bs
from launcher.pod.node import BadConfig
from launcher.spec import jobspec as js
from launcher.spec.jobspec import build_job_spec
from tests.launcher.pod.test_bootstrap import write_config
from tests.launcher.pod.test_operator import fake_popen  # noqa: F401 - a fixture used below


def test_the_job_names_a_ckpt_or_npz_file():
    spec = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, init_url="obs://bkt/leo_ms_init.ckpt",
                          set_overrides=["total_examples_per_class=20"])
    assert js.JobSpec.from_yaml(spec.to_yaml()).init_url == "obs://bkt/leo_ms_init.ckpt"
    plain = build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2)
    assert "init_url" not in plain.to_dict()  # job.yaml stays readable by bootstraps without --init
    for bad, message in (("obs://bkt/weights.pt", "must name a .ckpt or .npz file"),
                         ("obs://B/x.ckpt", "bucket 'B' is not valid")):
        with pytest.raises(UsageError, match=f"init_url '{bad}': .*{message}"):
            build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, init_url=bad)


def boot(tmp_path, **values):
    write_config(tmp_path / "cfg", data_url=str(tmp_path / "data"), **values)
    env = {"LEO_CONFIG_DIR": str(tmp_path / "cfg"), "LEO_CACHE_DIR": str(tmp_path / "cache"), "LEO_NODE_RANK": "1",
           "LEO_MASTER_ADDR": "127.0.0.1", "PATH": os.environ.get("PATH", "")}
    return bs.Bootstrap(env, io.StringIO())


def test_a_local_init_file_goes_to_train_py(tmp_path, fake_popen, monkeypatch):  # noqa: F811
    init = tmp_path / "leo_ms_init.ckpt"
    init.write_bytes(b"weights")
    boot_ = boot(tmp_path, init_url=str(init), nodes=2)
    monkeypatch.setattr(boot_, "stage_data", lambda spec, config: tmp_path / "data")
    assert boot_.run() == 0
    ((cmd, _),) = fake_popen
    assert cmd[cmd.index("--init") + 1] == str(init) and "--resume" in cmd


def test_without_init_train_py_gets_none(tmp_path, fake_popen, monkeypatch):  # noqa: F811
    boot_ = boot(tmp_path, nodes=2)
    monkeypatch.setattr(boot_, "stage_data", lambda spec, config: tmp_path / "data")
    assert boot_.run() == 0
    assert "--init" not in fake_popen[0][0]


def test_a_missing_local_init_file_is_bad_configuration(tmp_path):
    boot_ = boot(tmp_path, init_url=str(tmp_path / "nowhere.npz"))
    spec = js.JobSpec.from_yaml((tmp_path / "cfg" / "job.yaml").read_text())
    with pytest.raises(BadConfig, match="init_url .*nowhere.npz: no such file"):
        boot_.stage_init(spec)


@pytest.mark.integration
def test_an_init_object_is_downloaded_verified_into_the_cache(s3_env, tmp_path):
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    data = os.urandom(4096)
    s3_env.client().put_object(Bucket=bucket, Key="init/leo_ms_init.ckpt", Body=data)
    boot_ = boot(tmp_path, init_url=f"s3://{bucket}/init/leo_ms_init.ckpt", storage_endpoint=s3_env.endpoint)
    spec = js.JobSpec.from_yaml((tmp_path / "cfg" / "job.yaml").read_text())
    path = boot_.stage_init(spec)
    assert path == tmp_path / "cache" / "init" / "leo_ms_init.ckpt" and path.read_bytes() == data
    missing = boot(tmp_path / "m", init_url=f"s3://{bucket}/init/none.ckpt", storage_endpoint=s3_env.endpoint)
    with pytest.raises(BadConfig, match="init_url: .*none.ckpt"):
        missing.stage_init(js.JobSpec.from_yaml((tmp_path / "m" / "cfg" / "job.yaml").read_text()))


def test_the_jobs_seed_goes_to_train_py(tmp_path, fake_popen, monkeypatch):  # noqa: F811
    """A sweep's seeds must change the run: the job's seed is train.py's --seed."""
    boot_ = boot(tmp_path, nodes=2, seed=3)
    monkeypatch.setattr(boot_, "stage_data", lambda spec, config: tmp_path / "data")
    assert boot_.run() == 0
    cmd = fake_popen[0][0]
    assert cmd[cmd.index("--seed") + 1] == "3"
