"""The /cache size of a submitted job follows what it will stage (issue 23): measured on a
real S3 server (SeaweedFS) with this machine's credentials at submit, the documented
default when storage cannot be read."""

from __future__ import annotations

import secrets

from launcher.backends.kubernetes import KubernetesBackend
from launcher.spec import disk
from launcher.spec.jobspec import build_job_spec
from launcher.storage import StorageOptions, open_store
from tests.launcher.fake_cluster import FakeAPI, fake_cluster
from tests.launcher.render.pod_security import pod_templates

MB = 2**20


def _cache(plan):
    pod = pod_templates(plan.objects[-1])[0].spec
    storage = pod["containers"][0]["resources"]["requests"]["ephemeral-storage"]
    return next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"]["sizeLimit"], storage


def _spec(**values):
    return build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, name="leo-disk", **values)


def test_submit_measures_the_data_and_the_weights(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)  # this machine's endpoint and credentials
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    with open_store(f"s3://{bucket}", StorageOptions(progress=False)) as store:
        store.put_bytes("data/miniImageNet/center/train_embeddings.pkl", b"x" * (3 * MB))
        store.put_bytes("data/miniImageNet/center/val_embeddings.pkl", b"x" * MB)
        store.put_bytes("weights/init.npz", b"x" * (2 * MB))
        store.put_bytes("other/not-staged.bin", b"x" * (5 * MB))
    spec = _spec(data_url=f"s3://{bucket}/data", init_url=f"s3://{bucket}/weights/init.npz")
    plan = KubernetesBackend(fake_cluster(FakeAPI()), "default").plan(spec)
    expected = disk.cache_size(4 * MB, 2 * MB)
    assert plan.spec.cache_size == expected == "5Gi"
    assert _cache(plan) == ("5Gi", "7Gi")
    assert plan.notes == ("/cache size 5Gi: 0.0 GiB to stage, plus room to unpack and work",)
    given = KubernetesBackend(fake_cluster(FakeAPI()), "default").plan(_spec(data_url=f"s3://{bucket}/data",
                                                                             cache_size="100Gi"))
    assert _cache(given) == ("100Gi", "102Gi") and given.notes == ()


def test_unreadable_storage_falls_back_to_the_default_with_a_note(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    spec = _spec(data_url=f"s3://leo-missing-{secrets.token_hex(4)}/data")
    plan = KubernetesBackend(fake_cluster(FakeAPI()), "default").plan(spec)
    assert plan.spec.cache_size is None and _cache(plan) == (disk.DEFAULT_CACHE_SIZE, "34Gi")
    (note,) = plan.notes
    assert note.startswith("/cache size not measured (") and note.endswith("32Gi (set it with --cache-size)")
    local = KubernetesBackend(fake_cluster(FakeAPI()), "default").plan(_spec())
    assert _cache(local) == (disk.MIN_CACHE_SIZE, "6Gi") and local.notes == ()
