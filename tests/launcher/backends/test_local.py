"""The local backend: the supervisor's restart rules with a stand-in bootstrap (fast), and
end to end with real processes — `leo-launch submit --backend local --accel cpu --cards 2`
on tiny synthetic data in a local SeaweedFS, a worker killed mid-run, the restart that
resumes from the checkpoint, logs, status, pull; and cancel mid-run leaving no process.

The e2e tests share one tiny dataset and the session's SeaweedFS; every CLI call runs as
a subprocess with its own XDG_STATE_HOME and no Kubernetes configuration.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.backends import local as lb
from launcher.backends import localjob, supervisor
from launcher.backends.base import JobExistsError
from launcher.errors import UsageError
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec

TINY = ["--set", "total_examples_per_class=20", "--set", "num_validation_batches=1",
        "--set", "metavalid_batch_size=4", "--set", "metatest_batch_size=4",
        "--set", "checkpoint_steps=3"]


def spec(**values):
    values.setdefault("data_url", "/data")
    values.setdefault("train_url", "/train")
    values.setdefault("set_overrides", ["total_examples_per_class=20"])
    return build_job_spec(experiment="mini_5shot", accelerator=values.pop("accelerator", "cpu"),
                          cards=values.pop("cards", 2), name=values.pop("name", "leo-s"), **values)


# ------------------------------------------------------------------ the supervisor's rules


def supervise(tmp_path, script, **values):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    path, _ = lb.create_job_dir(spec(**values), env)
    code = supervisor.Supervisor(path, command=[sys.executable, "-c", script]).run()
    return code, lb.status(path.name, environ=env, progress=False), (path / localjob.OUTPUT_LOG).read_text()


def test_a_retriable_failure_is_restarted_with_the_attempt_counted(tmp_path):
    code, status, output = supervise(
        tmp_path, "import os, sys; print('[node 0] try', os.environ['LEO_ATTEMPT']); "
                  "sys.exit(0 if os.environ['LEO_ATTEMPT'] == '2' else 1)")
    assert code == 0
    assert (status["phase"], status["restarts"], status["exit_code"]) == ("Succeeded", 2, 0)
    assert [r["phase"] for r in status["ranks"]] == ["Succeeded", "Succeeded"]
    assert "[node 0] attempt 3 of 4" in output and "[node 0] try 2" in output


def test_bad_configuration_is_not_retried_and_restarts_are_bounded(tmp_path):
    code, status, output = supervise(tmp_path / "a", "import sys; sys.exit(2)")
    assert (code, status["phase"], status["restarts"]) == (2, "Failed", 0)
    assert status["reason"].startswith("bad configuration (exit code 2, not retried)")
    code, status, output = supervise(tmp_path / "b", "import sys; sys.exit(1)", max_restarts=1)
    assert (code, status["phase"], status["restarts"]) == (1, "Failed", 1)
    assert status["reason"] == "failed 2 time(s) (--max-restarts 1); last exit code 1"
    assert output.count("attempt ") == 2


def test_what_the_local_backend_refuses(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path)}
    with pytest.raises(UsageError, match="use --accel cpu"):
        lb.submit(spec(accelerator="nvidia", cards=8), environ=env)
    with pytest.raises(UsageError, match="runs one node"):
        lb.submit(spec(cards=4, nodes=2), environ=env)
    with pytest.raises(UsageError, match="needs --data-url"):
        lb.submit(spec(data_url=None), environ=env)
    lb.create_job_dir(spec(), env)
    with pytest.raises(JobExistsError, match="a local job named 'leo-s' exists already"):
        lb.create_job_dir(spec(), env)


def test_a_full_state_disk_ends_the_job_failed_with_the_reason(tmp_path, monkeypatch):
    # issue 22 item 8: ENOSPC while the bootstrap runs (writing state.json)
    import errno as errno_

    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    path, _ = lb.create_job_dir(spec(), env)
    real = supervisor.write_json

    def full_disk(target, obj, **kwargs):
        if obj.get("bootstrap_pid"):
            raise OSError(errno_.ENOSPC, "No space left on device", str(path / ".state.json.tmp"))
        real(target, obj, **kwargs)

    monkeypatch.setattr(supervisor, "write_json", full_disk)
    sup = supervisor.Supervisor(path, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    assert sup.run() == 1 and time.monotonic() - started < 30
    assert sup.current.poll() is not None  # the bootstrap was stopped
    status = lb.status(path.name, environ=env, progress=False)
    assert status["phase"] == "Failed"
    assert status["reason"].startswith(f"no space left on {path}")


def test_submit_refuses_urls_inside_the_state_folder(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path)}
    inside = str(localjob.jobs_root(env) / "leo-a" / "work")
    for values in ({"train_url": inside}, {"data_url": f"file://{inside}"}):
        with pytest.raises(UsageError, match="inside the launcher's state folder"):
            lb.submit(spec(**values), environ=env)
    assert not localjob.jobs_root(env).exists()  # nothing half-created


def test_cancel_keeps_another_jobs_outputs_inside_its_folder(tmp_path):
    # Job B's --train-url inside job A's state folder (submitted before submit refused it).
    env = {"XDG_STATE_HOME": str(tmp_path)}
    a, _ = lb.create_job_dir(spec(name="leo-a"), env)
    lb.create_job_dir(spec(name="leo-b", train_url=str(a / "work" / "out")), env)
    published = a / "work" / "out" / "leo-b"
    (published / "checkpoints").mkdir(parents=True)
    (published / "result.json").write_text("{}")
    message = lb.cancel("leo-a", environ=env, grace=0.1)
    assert "kept" in message and str(published) in message
    assert (published / "result.json").is_file()


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def e2e(s3_server, tmp_path_factory):
    """Tiny synthetic embeddings pushed to SeaweedFS with `leo-launch push`; an env for
    CLI subprocesses (credentials and endpoint of that server only, no cluster)."""
    from leo_core.synthetic import write_dataset

    root = tmp_path_factory.mktemp("local-e2e")
    write_dataset(root / "tiny", "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    for bucket in ("leo-e2e-data", "leo-e2e-runs"):
        if bucket not in s3_server.buckets:  # other modules use this fixture on the same server
            s3_server.create_bucket(bucket)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "OBS_", "LEO_", "MS_", "KUBE"))}
    env.update(s3_server.env())
    env.update(AWS_ENDPOINT_URL=s3_server.endpoint, XDG_STATE_HOME=str(root / "state"),
               KUBECONFIG=str(root / "no-kubeconfig"), LEO_PUBLISH_INTERVAL="1", GLOG_v="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    proc = leo(env, "push", root / "tiny", "s3://leo-e2e-data/tiny")
    assert proc.returncode == 0, proc.stderr
    return {"env": env, "root": root, "s3": s3_server}


def leo(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(e2e, name, steps):
    proc = leo(e2e["env"], "submit", "--backend", "local", "--accel", "cpu", "--cards", "2",
               "--exp", "mini_5shot", "--steps", steps, *TINY, "--name", name, "--max-restarts", "2",
               "--data-url", "s3://leo-e2e-data/tiny", "--train-url", "s3://leo-e2e-runs/train")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def mark_of(e2e, name):
    state = json.loads((localjob.job_dir(name, e2e["env"]) / localjob.STATE_FILE).read_text())
    return f"{name}:{state['token']}"


def job_procs(e2e, name, mark=None):
    return localjob.job_processes().get(mark or mark_of(e2e, name), [])


def wait(condition, timeout, what, e2e, name):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    log = localjob.job_dir(name, e2e["env"]) / localjob.OUTPUT_LOG
    tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else "(no output)"
    raise AssertionError(f"{what} within {timeout} s; the job's output ends with:\n{tail}")


def cleanup(e2e, name):
    lb.cancel(name, environ=e2e["env"], grace=1)


@pytest.mark.e2e
def test_a_killed_worker_restarts_the_job_which_resumes_and_succeeds(e2e, tmp_path):
    env, name = e2e["env"], "e2e-restart"
    started = submit(e2e, name, 12)
    try:
        assert "job e2e-restart started on this machine" in started.stdout
        supervisor = int((localjob.job_dir(name, env) / localjob.PID_FILE).read_text())
        assert psutil.pid_exists(supervisor)  # it outlived the CLI that started it
        latest = localjob.job_dir(name, env) / "work" / "out" / "checkpoints" / "latest.json"

        def checkpointed_and_running():
            workers = localjob.workers_by_rank(job_procs(e2e, name))
            if latest.exists() and len(workers) == 2:
                return workers
            return None

        workers = wait(checkpointed_and_running, 300, "no checkpoint with both workers alive", e2e, name)
        killed_at = json.loads(latest.read_text())["step"]
        assert killed_at < 12
        workers[1].kill()

        def finished():
            status = lb.status(name, environ=env, progress=False)
            return status if status["phase"] in ("Succeeded", "Failed") else None

        final = wait(finished, 420, "the job did not finish", e2e, name)
        assert final["phase"] == "Succeeded", final
        # nothing of it is left running: the supervisor writes "Succeeded" and then exits,
        # so under load it may still be on its way out when status reads the state
        wait(lambda: not job_procs(e2e, name), 30, "processes of the job still run after it ended",
             e2e, name)

        proc = leo(env, "status", name, "-o", "json")
        status = json.loads(proc.stdout)
        assert (status["phase"], status["restarts"], status["step"]) == ("Succeeded", 1, 12)
        assert status["result"]["accuracy"] > 0.2 and status["result"]["tasks"] == 200  # chance: 1/5
        assert status["outputs_url"] == f"s3://leo-e2e-runs/train/{name}"

        logs = leo(env, "logs", name).stdout
        assert "[node 0] attempt 2 of 3" in logs
        resumed = [line for line in logs.splitlines() if line.startswith("[rank 0] resumed from")]
        assert len(resumed) == 1, logs
        step = int(re.search(r" at step (\d+) ", resumed[0]).group(1))
        assert killed_at <= step < 12  # (a checkpoint could land between reading and killing)
        assert "[rank 1]" not in logs and "[rank 0] done: best validation accuracy" in logs
        everything = leo(env, "logs", name, "--all").stdout
        assert "[rank 1]" in everything
        only_one = leo(env, "logs", name, "--rank", "1", "--tail", "5").stdout.splitlines()
        assert len(only_one) == 5 and not any(line.startswith("[rank 0]") for line in only_one)

        # the metrics continue from the checkpoint instead of starting again at step 1
        client = e2e["s3"].client()
        metrics = client.get_object(Bucket="leo-e2e-runs", Key=f"train/{name}/metrics.jsonl")["Body"].read()
        records = [json.loads(line) for line in metrics.decode().splitlines()]
        assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
        # validation at step 0 too (the untrained model is best until beaten), as the original
        assert [r["step"] for r in records if r["kind"] == "validation"] == [0, 3, 6, 9, 12]
        result = json.loads(client.get_object(Bucket="leo-e2e-runs", Key=f"train/{name}/result.json")["Body"].read())
        assert result["accuracy"] > 0.2 and result["job"] == name

        pulled = leo(env, "pull", name, "--checkpoint", "best", "--to", tmp_path / "best")
        assert pulled.returncode == 0, pulled.stderr
        best = json.loads((tmp_path / "best" / "best.json").read_text())
        assert (tmp_path / "best" / best["path"] / "weights.npz").is_file()

        listed = json.loads(leo(env, "list", "-o", "json").stdout)
        assert [(j["name"], j["phase"]) for j in listed if j["name"] == name] == [(name, "Succeeded")]
    finally:
        cleanup(e2e, name)


@pytest.mark.e2e
def test_cancel_mid_run_leaves_no_process_behind(e2e):
    env, name = e2e["env"], "e2e-cancel"
    submit(e2e, name, 500)
    mark = mark_of(e2e, name)
    try:
        wait(lambda: len(localjob.workers_by_rank(job_procs(e2e, name, mark))) == 2, 240,
             "the two workers did not start", e2e, name)
        procs = job_procs(e2e, name, mark)
        pids = {p.pid for p in procs}
        groups = {os.getpgid(p.pid) for p in procs}
        assert len(pids) >= 5  # supervisor, bootstrap, msrun, its scheduler, two workers
        assert len(groups) >= 3  # the workers lead groups of their own

        proc = leo(env, "cancel", name, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"job {name} cancelled: stopped ")

        def alive(pid):
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        assert not [pid for pid in pids if alive(pid)]
        assert not job_procs(e2e, name, mark)
        in_groups = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) in groups and alive(p.pid):
                    in_groups.append(p.pid)
            except (OSError, psutil.Error):
                continue
        assert not in_groups
        assert not localjob.job_dir(name, env).exists()
        again = leo(env, "cancel", name)
        assert again.returncode == 0 and "nothing to cancel" in again.stdout
        gone = leo(env, "status", name)
        assert gone.returncode == 1 and "unknown job 'e2e-cancel'" in gone.stderr
    finally:
        if localjob.job_dir(name, env).exists():
            cleanup(e2e, name)
        from launcher.util.procs import kill_marked

        kill_marked(contract.ENV_LOCAL_JOB, mark)


@pytest.mark.e2e
def test_profile_publishes_the_profile_of_every_rank_under_the_train_url(e2e, tmp_path):
    """`submit --profile`: both ranks run MindSpore's profiler (2 steps after the 2 that
    compile) and the job publishes profile/rank-0/ and profile/rank-1/, no raw data."""
    env, name = {**e2e["env"], "LEO_EVAL_TASKS": "8"}, "e2e-profile"
    try:
        proc = leo(env, "submit", "--backend", "local", "--accel", "cpu", "--cards", "2", "--exp", "mini_5shot",
                   "--steps", 4, *TINY, "--name", name, "--profile", "--profile-steps", 2, "-f",
                   "--data-url", "s3://leo-e2e-data/tiny", "--train-url", "s3://leo-e2e-runs/train", timeout=420)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
        assert f"profile of rank(s) 0, 1 published to s3://leo-e2e-runs/train/{name}/profile/" in proc.stdout
        client = e2e["s3"].client()
        prefix = f"train/{name}/profile/"
        listed = client.list_objects_v2(Bucket="leo-e2e-runs", Prefix=prefix)["Contents"]
        keys = {item["Key"][len(prefix):] for item in listed}
        assert {"rank-0/op_summary.txt", "rank-0/trace_view.json", "rank-1/op_summary.txt",
                "rank-1/trace_view.json"} <= keys
        assert {k.split("/")[1] for k in keys} <= {"op_summary.txt", "trace_view.json", "cpu_op_detail_info_0.csv",
                                                   "cpu_op_type_info_0.csv", "cpu_op_detail_info_1.csv",
                                                   "cpu_op_type_info_1.csv"}, keys
        summary = client.get_object(Bucket="leo-e2e-runs", Key=prefix + "rank-1/op_summary.txt")["Body"].read()
        assert "2 steps; per step:" in summary.decode()
        pulled = leo(env, "pull", name, "--profile", "--to", tmp_path / "profile")
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "profile" / "rank-1" / "op_summary.txt").read_bytes() == summary
    finally:
        cleanup(e2e, name)
