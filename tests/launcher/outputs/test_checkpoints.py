"""Checkpoint publication, pull, resume and staging against a real S3 server (and on
file:// where no server is needed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import shutil
import zipfile
from pathlib import Path

import pytest

from launcher.cli import main as cli
from launcher.outputs.checkpoints import (
    MANIFEST,
    pull,
    resume_from_remote,
    verify_checkpoint,
)
from launcher.outputs.publish import Publisher
from launcher.pod.stage import (
    MARKER,
    stage,
)
from launcher.storage import (
    IntegrityError,
    StorageError,
    StorageOptions,
    list_objects,
)
from launcher.storage.files import walk_files

MB = 1024 * 1024


# ----------------------------------------------------- a trainer, simulated


def write_checkpoint(out: Path, step: int, accuracy: float | None = None, *, big: int = 0) -> Path:
    """What leo_core.train does: a step dir renamed into place, pointers replaced
    atomically, older steps other than latest and best deleted."""
    ckpt = out / "checkpoints"
    tmp = ckpt / f".tmp-step-{step}"
    tmp.mkdir(parents=True)
    (tmp / "weights.npz").write_bytes(os.urandom(3000 + step))
    (tmp / "optimizer.npz").write_bytes(os.urandom(big or 2000))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    final = ckpt / f"step-{step}"
    tmp.rename(final)
    pointers = {"latest": {"step": step, "path": f"step-{step}"}}
    best = _pointer(ckpt / "best.json")
    if accuracy is not None and (best is None or accuracy > best["accuracy"]):
        pointers["best"] = {"step": step, "path": f"step-{step}", "accuracy": accuracy}
    for which, pointer in pointers.items():
        (ckpt / f".{which}.tmp").write_text(json.dumps(pointer))
        os.replace(ckpt / f".{which}.tmp", ckpt / f"{which}.json")
    keep = {p["path"] for p in (_pointer(ckpt / "latest.json"), _pointer(ckpt / "best.json")) if p}
    for old in ckpt.glob("step-*"):
        if old.name not in keep:
            shutil.rmtree(old)
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
    return final


def _pointer(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def remote_pointer(server, bucket: str, job: str, which: str) -> dict:
    body = server.client().get_object(Bucket=bucket, Key=f"{job}/checkpoints/{which}.json")["Body"]
    return json.loads(body.read())


@pytest.fixture
def job(s3_env, tmp_path):
    bucket = s3_env.create_bucket("leo-" + secrets.token_hex(4))
    options = StorageOptions(endpoint=s3_env.endpoint, path_style=True, max_attempts=2, part_size=8 * MB)
    return {"bucket": bucket, "url": f"s3://{bucket}/train/job-1", "options": options,
            "out": tmp_path / "out", "logs": tmp_path / "logs", "server": s3_env}


# ------------------------------------------------------------ publication


@pytest.mark.integration
def test_publish_order_pointers_metrics_and_logs(job):
    out, logs = job["out"], job["logs"]
    logs.mkdir()
    (logs / "rank-0.log").write_text("step 100\n")
    (logs / "rank-1.log").write_text("step 100\n")
    write_checkpoint(out, 100, accuracy=0.61)
    with Publisher(out, job["url"], logs_dir=logs, options=job["options"]) as publisher:
        sent: list[str] = []
        publisher.store.client.meta.events.register(
            "provide-client-params.s3.PutObject", lambda params, **_: sent.append(params["Key"]))
        report = publisher.poll()
        assert report.checkpoints == ["step-100"] and report.pointers == ["latest", "best"]
        prefix = "train/job-1/checkpoints/"
        step_keys = [k for k in sent if k.startswith(prefix + "step-100/")]
        assert step_keys[-1] == prefix + "step-100/" + MANIFEST and len(step_keys) == 4
        assert sent.index(prefix + "latest.json") > sent.index(prefix + "step-100/" + MANIFEST)
        assert sent.index(prefix + "best.json") > sent.index(prefix + "step-100/" + MANIFEST)
        assert {"train/job-1/metrics.jsonl", "train/job-1/logs/rank-0.log",
                "train/job-1/logs/rank-1.log"} <= set(sent)

        sent.clear()
        assert publisher.poll().checkpoints == [] and sent == []  # nothing changed, nothing sent

        write_checkpoint(out, 200, accuracy=0.55)  # not better: best stays on step-100
        (logs / "rank-0.log").write_text("step 100\nstep 200\n")
        with open(out / "metrics.jsonl", "a") as metrics:
            metrics.write('{"step": 2')  # a line being written is not published
        report = publisher.poll()
        assert report.checkpoints == ["step-200"] and report.pointers == ["latest"]
        assert "train/job-1/logs/rank-1.log" not in sent
        publisher.put_json("result.json", {"accuracy": 0.7, "step": 200})
    server, bucket = job["server"], job["bucket"]
    assert remote_pointer(server, bucket, "train/job-1", "latest") == {"step": 200, "path": "step-200"}
    assert remote_pointer(server, bucket, "train/job-1", "best")["path"] == "step-100"
    metrics = server.client().get_object(Bucket=bucket, Key="train/job-1/metrics.jsonl")["Body"].read()
    assert metrics.decode().splitlines()[-1] == '{"step": 200, "loss": 0.005}'
    objects = list_objects(job["url"], options=job["options"])
    assert "result.json" in objects and "checkpoints/step-200/MANIFEST.json" in objects


@pytest.mark.integration
def test_failed_upload_leaves_pointer_on_previous_checkpoint(job, tmp_path):
    out = job["out"]
    write_checkpoint(out, 100, accuracy=0.6)
    with Publisher(out, job["url"], options=job["options"]) as publisher:
        publisher.poll()
        write_checkpoint(out, 200, accuracy=0.7, big=20 * MB)  # the optimizer goes multipart
        parts = []

        def fail_parts(params, **_):  # the small files go up, the multipart one breaks
            parts.append(params["PartNumber"])
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        events = publisher.store.client.meta.events
        events.register("provide-client-params.s3.UploadPart", fail_parts)
        with pytest.raises(StorageError, match="cannot reach the storage endpoint"):
            publisher.poll()
        events.unregister("provide-client-params.s3.UploadPart", fail_parts)
        assert parts

        server, bucket = job["server"], job["bucket"]
        assert remote_pointer(server, bucket, "train/job-1", "latest")["path"] == "step-100"
        assert remote_pointer(server, bucket, "train/job-1", "best")["path"] == "step-100"
        objects = list_objects(job["url"], options=job["options"])
        assert "checkpoints/step-200/weights.npz" in objects  # some objects went up...
        assert "checkpoints/step-200/MANIFEST.json" not in objects  # ...but no manifest
        assert "checkpoints/step-200/optimizer.npz" not in objects
        pulled = pull(job["url"], "latest", tmp_path / "pulled", options=job["options"])
        assert pulled.step == 100 and verify_checkpoint(pulled.path)

        report = publisher.poll()  # the next tick completes it
        assert report.checkpoints == ["step-200"] and set(report.pointers) == {"latest", "best"}
    pulled = pull(job["url"], "best", tmp_path / "pulled", options=job["options"])
    assert pulled.step == 200 and pulled.pointer["accuracy"] == 0.7
    assert (tmp_path / "pulled" / "step-200" / "optimizer.npz").stat().st_size == 20 * MB
    assert json.loads((tmp_path / "pulled" / "best.json").read_text())["step"] == 200


@pytest.mark.integration
def test_pull_refuses_a_tampered_checkpoint_and_leaves_nothing(job, tmp_path, capsys):
    write_checkpoint(job["out"], 300, accuracy=0.7)
    with Publisher(job["out"], job["url"], options=job["options"]) as publisher:
        publisher.final()
    key = "train/job-1/checkpoints/step-300/weights.npz"
    size = (job["out"] / "checkpoints/step-300/weights.npz").stat().st_size
    job["server"].client().put_object(Bucket=job["bucket"], Key=key, Body=os.urandom(size))
    dest = tmp_path / "ckpt"
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        pull(job["url"], "best", dest, options=job["options"])
    assert not (dest / "step-300").exists() and not (dest / "best.json").exists()
    assert [p.name for p in dest.iterdir()] == []
    code = cli.main(["pull", job["url"], "--to", str(dest), "--storage-endpoint",
                     job["server"].endpoint, "--path-style"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "sha256 mismatch" in err and "Traceback" not in err


@pytest.mark.integration
def test_pull_missing_pointer_and_missing_manifest(job, tmp_path, capsys):
    code = cli.main(["pull", job["url"], "--checkpoint", "latest", "--to", str(tmp_path / "c"),
                     "--storage-endpoint", job["server"].endpoint, "--path-style"])
    err = capsys.readouterr().err
    assert code == 1 and "no latest checkpoint" in err and err.count("\n") == 1
    client = job["server"].client()
    client.put_object(Bucket=job["bucket"], Key="train/job-1/checkpoints/latest.json",
                      Body=b'{"step": 5, "path": "step-5"}')
    client.put_object(Bucket=job["bucket"], Key="train/job-1/checkpoints/step-5/weights.npz", Body=b"w")
    with pytest.raises(StorageError, match="has no MANIFEST.json"):
        pull(job["url"], "latest", tmp_path / "c", options=job["options"])


@pytest.mark.integration
def test_cli_pull_by_job_name(job, tmp_path, monkeypatch, capsys):
    write_checkpoint(job["out"], 100, accuracy=0.5)
    with Publisher(job["out"], job["url"], options=job["options"]) as publisher:
        publisher.final()
    state = tmp_path / "state"
    (state / "leo-launch/jobs/job-1").mkdir(parents=True)
    (state / "leo-launch/jobs/job-1/job.yaml").write_text(f"train_url: s3://{job['bucket']}/train\n")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.chdir(tmp_path)
    code = cli.main(["pull", "job-1", "--storage-endpoint", job["server"].endpoint, "--path-style"])
    out = capsys.readouterr().out
    assert code == 0 and "step 100" in out and "accuracy 50.00%" in out
    assert verify_checkpoint(tmp_path / "job-1" / "step-100")
    assert json.loads((tmp_path / "job-1" / "best.json").read_text())["step"] == 100


@pytest.mark.integration
def test_resume_from_remote(job, tmp_path):
    out, logs = job["out"], job["logs"]
    logs.mkdir()
    (logs / "rank-0.log").write_text("first attempt\n")
    with Publisher(out, job["url"], logs_dir=logs, options=job["options"]) as publisher:
        write_checkpoint(out, 100, accuracy=0.8)
        publisher.poll()
        write_checkpoint(out, 200, accuracy=0.6)
        write_checkpoint(out, 300, accuracy=0.5)
        publisher.poll()
        with open(out / "metrics.jsonl", "a") as metrics:  # logged after the last checkpoint
            metrics.write('{"step": 350, "loss": 0.1}\n')
        publisher.final()

    fresh, fresh_logs = tmp_path / "pod2", tmp_path / "pod2-logs"
    assert resume_from_remote(job["url"], fresh, logs_dir=fresh_logs, options=job["options"]) == 300
    ckpt = fresh / "checkpoints"
    assert json.loads((ckpt / "latest.json").read_text()) == {"step": 300, "path": "step-300"}
    assert json.loads((ckpt / "best.json").read_text())["path"] == "step-100"
    for step in (100, 300):
        assert verify_checkpoint(ckpt / f"step-{step}")
        assert (ckpt / f"step-{step}/weights.npz").read_bytes() == \
            (out / f"checkpoints/step-{step}/weights.npz").read_bytes()
    steps = [json.loads(line)["step"] for line in (fresh / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300]
    assert (fresh_logs / "rank-0.log").read_text() == "first attempt\n"
    # A second call finds the local copy complete and downloads nothing.
    assert resume_from_remote(job["url"], fresh, options=job["options"]) == 300
    empty = f"s3://{job['bucket']}/train/never-ran"
    assert resume_from_remote(empty, tmp_path / "pod3", options=job["options"]) is None


def test_publish_to_a_local_directory(tmp_path):
    """The local backend's train_url is a path: the same protocol on file://."""
    out, remote = tmp_path / "out", tmp_path / "remote" / "job-1"
    write_checkpoint(out, 10, accuracy=0.3)
    with Publisher(out, str(remote)) as publisher:
        publisher.final()
    assert json.loads((remote / "checkpoints/latest.json").read_text())["step"] == 10
    pulled = pull(str(remote), "best", tmp_path / "c")
    assert pulled.step == 10 and verify_checkpoint(pulled.path)


def test_background_thread_publishes_and_stops(tmp_path):
    out, remote = tmp_path / "out", tmp_path / "remote"
    publisher = Publisher(out, str(remote))
    publisher.start(0.05)
    try:
        write_checkpoint(out, 1, accuracy=0.1)
        import time

        deadline = time.monotonic() + 30
        while not (remote / "checkpoints/latest.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        publisher.close()
    assert publisher._thread is None and publisher.last_error is None


# ------------------------------------------------------------------ staging


def make_embeddings(root: Path) -> dict[str, bytes]:
    content = {f"miniImageNet/center/{s}_embeddings.pkl": os.urandom(5000) for s in ("train", "val", "test")}
    for key, data in content.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return content


def _stage_worker(data_url: str, cache: str, endpoint: str, log: str) -> None:
    import launcher.pod.stage as staging

    real = staging.sync_down

    def counted(*args, **kwargs):
        with open(log, "a") as stream:
            stream.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    staging.sync_down = counted
    options = StorageOptions(endpoint=endpoint, path_style=True)
    root = stage(data_url, cache, options=options, timeout=120)
    with open(log + ".roots", "a") as stream:
        stream.write(f"{root}\n")


@pytest.mark.integration
def test_stage_prefix_once_per_node(job, tmp_path):
    content = make_embeddings(tmp_path / "src" / "embeddings")
    data_url = f"s3://{job['bucket']}/datasets/leo"
    cli.main(["push", str(tmp_path / "src"), data_url, "--storage-endpoint", job["server"].endpoint,
              "--path-style"])
    cache, log = tmp_path / "cache", tmp_path / "copies.log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_stage_worker, args=(data_url, str(cache), job["server"].endpoint, str(log)))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(log.read_text().splitlines()) == 1  # one copier, two waiters
    roots = set(Path(str(log) + ".roots").read_text().splitlines())
    assert roots == {str(cache / "data" / "embeddings")}
    staged = {k: p.read_bytes() for k, p in walk_files(cache / "data" / "embeddings").items()}
    assert staged == content
    assert json.loads((cache / MARKER).read_text())["data_url"] == data_url


@pytest.mark.integration
@pytest.mark.parametrize("top", ["embeddings/", ""])
def test_stage_zip_object(job, tmp_path, top):
    content = make_embeddings(tmp_path / "src")
    archive = tmp_path / "embeddings.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for key in content:
            zf.write(tmp_path / "src" / key, top + key)
    job["server"].client().upload_file(str(archive), job["bucket"], "datasets/embeddings.zip")
    data_url = f"obs://{job['bucket']}/datasets/embeddings.zip"
    root = stage(data_url, tmp_path / "cache", options=job["options"])
    assert {k: p.read_bytes() for k, p in walk_files(root).items()} == content
    assert stage(data_url, tmp_path / "cache", options=job["options"]) == root
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".leo-tmp")]
    assert leftovers == []
