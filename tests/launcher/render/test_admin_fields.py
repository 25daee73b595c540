"""What a cluster admin looks for in every rendered pod (issue 23): disk, lifetime, registry
access, the service account and --pod-overrides, on every flavour and accelerator; the
rendered sets stay valid and at the Pod Security level they claim."""

from __future__ import annotations

import pytest
import yaml

from launcher.errors import UsageError
from launcher.render import render
from launcher.spec import disk, podsecurity
from launcher.spec import jobspec as js
from launcher.spec.jobspec import JobSpec, build_job_spec
from tests.launcher.render.pod_security import check_objects, pod_templates
from tests.launcher.render_helpers import env_of, run_cli

# every flavour, with accelerators it runs (AscendJob: Ascend only, at least 2 cards)
FLAVOURS = [(accel, scheduler) for scheduler in js.SCHEDULERS for accel in ("ascend", "nvidia", "cpu")
            if scheduler != "ascendjob" or accel == "ascend"]
IDS = [f"{s}-{a}" for a, s in FLAVOURS]
OVERRIDES = {
    "runtimeClassName": "kata",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"leo-launch/job": "leo-admin"}}}],
    "volumes": [{"name": "extra", "emptyDir": {"sizeLimit": "1Gi"}}],
    "containers": [
        {"name": "leo", "env": [{"name": "EXTRA", "value": "1"}],
         "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]},
        {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "infinity"],
         "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}},
    ],
}


def _spec(accel: str, scheduler: str, **values) -> JobSpec:
    if accel == "ascend":
        values.setdefault("ascend_driver_mount", "runtime")
        values.setdefault("rank_table", "none" if scheduler == "ascendjob" else "dynamic")
    return build_job_spec(experiment="mini_5shot", accelerator=accel, cards=16, name="leo-admin",
                          scheduler=scheduler, set_overrides=["metatrain_batch_size=16"], **values)


def _job(objects):
    return objects[-1]


def _lifetime(obj) -> tuple[object, object]:
    """(ttlSecondsAfterFinished, activeDeadlineSeconds) where each flavour keeps them."""
    spec = obj["spec"]
    kind = obj["kind"]
    if obj["apiVersion"].startswith("batch.volcano.sh/"):  # a per-pod deadline only
        deadlines = {t.spec.get("activeDeadlineSeconds") for t in pod_templates(obj)}
        assert len(deadlines) == 1
        return spec.get("ttlSecondsAfterFinished"), deadlines.pop()
    if kind == "AscendJob":
        run = spec["runPolicy"]
        return run.get("ttlSecondsAfterFinished"), run.get("activeDeadlineSeconds")
    if kind == "JobSet":
        job = spec["replicatedJobs"][0]["template"]["spec"]
        return spec.get("ttlSecondsAfterFinished"), job.get("activeDeadlineSeconds")
    return spec.get("ttlSecondsAfterFinished"), spec.get("activeDeadlineSeconds")


@pytest.mark.parametrize(("accel", "scheduler"), FLAVOURS, ids=IDS)
def test_defaults_bound_disk_and_lifetime_on_every_flavour(accel, scheduler):
    spec = _spec(accel, scheduler, data_url="s3://bucket/embeddings")
    objects = render.render_validated(spec)
    assert _lifetime(_job(objects)) == (js.DEFAULT_TTL_AFTER_FINISHED, None)
    for template in pod_templates(_job(objects)):
        pod = template.spec
        assert "activeDeadlineSeconds" not in pod
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod and "imagePullSecrets" not in pod
        cache = next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"]
        resources = pod["containers"][0]["resources"]
        storage = resources["requests"]["ephemeral-storage"]
        assert resources["limits"]["ephemeral-storage"] == storage
        if "Scheduler" in template.where:  # stages nothing
            assert cache == {"sizeLimit": "1Gi"}
        else:  # remote data of unknown size: the documented default, plus the container's share
            assert cache == {"sizeLimit": disk.DEFAULT_CACHE_SIZE}
            assert storage == "34Gi"


@pytest.mark.parametrize(("accel", "scheduler"), FLAVOURS, ids=IDS)
def test_admin_options_reach_every_pod(accel, scheduler):
    spec = _spec(accel, scheduler, cache_size="50Gi", ttl_after_finished=3600, max_runtime=7200,
                 image_pull_secrets=("swr", "mirror"), service_account="trainer", automount_token=True,
                 pod_overrides=OVERRIDES)
    objects = render.render_validated(spec)  # the strict schemas accept the merged pods
    assert _lifetime(_job(objects)) == (3600, 7200)
    templates = pod_templates(_job(objects))
    assert len(templates) == (2 if scheduler == "ascendjob" else 1)
    for template in templates:
        pod = template.spec
        assert pod["serviceAccountName"] == "trainer" and pod["automountServiceAccountToken"] is True
        assert pod["imagePullSecrets"] == [{"name": "swr"}, {"name": "mirror"}]
        assert pod["runtimeClassName"] == "kata" and pod["topologySpreadConstraints"][0]["maxSkew"] == 1
        names = [c["name"] for c in pod["containers"]]
        assert names[-1] == "sidecar" and len(names) == 2  # merged by name: leo stays one container
        main = pod["containers"][0]
        assert main["command"] == ["python", "-m", "launcher.bootstrap"]
        assert env_of(main)["EXTRA"] == "1" and "LEO_JOB_NAME" in env_of(main)
        assert {"name": "extra", "mountPath": "/extra"} in main["volumeMounts"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert {"cache", "extra", "leo-config"} <= set(volumes)
        if "Scheduler" not in template.where:
            assert volumes["cache"]["emptyDir"] == {"sizeLimit": "50Gi"}
            assert main["resources"]["requests"]["ephemeral-storage"] == "52Gi"
    # the user's sidecar is as restricted as ours: the claimed level holds
    assert podsecurity.pod_security_level(spec) == "restricted"
    assert not any(check_objects(objects, "restricted").values())


@pytest.mark.parametrize(("accel", "scheduler"), FLAVOURS, ids=IDS)
@pytest.mark.parametrize(("fragment", "owned"), [
    ({"containers": [{"name": "leo", "command": ["sh"]}]}, "containers[leo].command"),
    ({"containers": [{"name": "leo", "env": [{"name": "LEO_JOB_NAME", "value": "x"}]}]},
     "containers[leo].env[LEO_JOB_NAME]"),
    ({"volumes": [{"name": "cache", "emptyDir": {}}]}, "volumes[cache]"),
    ({"containers": [{"name": "leo", "volumeMounts": [{"name": "mine", "mountPath": "/etc/leo-launch"}]}]},
     "mountPath /etc/leo-launch"),
    ({"restartPolicy": "Always"}, "restartPolicy"),
])
def test_launcher_owned_fields_are_refused_in_one_line(accel, scheduler, fragment, owned):
    spec = _spec(accel, scheduler, pod_overrides=fragment)
    with pytest.raises(UsageError) as err:
        render.render(spec)
    if scheduler == "ascendjob":  # the fragment's `leo` is AscendJob's `ascend` container
        owned = owned.replace("containers[leo]", "containers[ascend]")
    assert owned in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("--pod-overrides: spec.")


def test_the_rank_table_mount_is_owned():
    spec = _spec("ascend", "volcano", rank_table="controller",
                 pod_overrides={"containers": [{"name": "leo", "volumeMounts": [
                     {"name": "ascend-910-config", "mountPath": "/x"}]}]})
    with pytest.raises(UsageError, match=r"volumeMounts\[ascend-910-config\]"):
        render.render(spec)


def test_merged_pods_are_validated_like_any_render():
    spec = _spec("nvidia", "job", pod_overrides={"runtimeClassName": 7})
    with pytest.raises(Exception, match="runtimeClassName"):
        render.render_validated(spec)


@pytest.mark.parametrize(("fragment", "says"), [
    ([1, 2], "non-empty mapping"),
    ({"spec": {"runtimeClassName": "x"}}, "not a whole pod"),
    ({"volumes": [{"emptyDir": {}}]}, "volumes[0] needs a name"),
    ({"containers": {"name": "x"}}, "containers must be a list"),
])
def test_malformed_overrides_are_refused(fragment, says):
    with pytest.raises(UsageError, match=r"--pod-overrides: .*" + says.replace("[", r"\[").replace("]", r"\]")):
        _spec("cpu", "job", pod_overrides=fragment)


def test_overrides_round_trip_through_the_job_file():
    spec = _spec("cpu", "volcano", pod_overrides=OVERRIDES, max_runtime=60, ttl_after_finished=None,
                 image_pull_secrets=("swr",), cache_size="8Gi")
    again = JobSpec.from_yaml(spec.to_yaml())
    assert again == spec and again.pod_overrides == OVERRIDES and again.ttl_after_finished is None
    plain = _spec("cpu", "job")
    assert not {"pod_overrides", "ttl_after_finished", "max_runtime", "cache_size"} & set(plain.to_dict())


@pytest.mark.parametrize(("argv", "says"), [
    (["--cache-size", "lots"], "--cache-size 'lots' is not a positive Kubernetes quantity"),
    (["--max-runtime", "soon"], "--max-runtime 'soon': expected a duration"),
    (["--max-runtime", "0"], "--max-runtime must be at least 1"),
    (["--ttl-after-finished", "400d"], "--ttl-after-finished must be at most"),
    (["--image-pull-secret", "Bad_Name"], "--image-pull-secret 'Bad_Name'"),
    (["--service-account", "a/b"], "--service-account 'a/b'"),
])
def test_bad_admin_flags_exit_2_in_one_line(capsys, argv, says):
    code, out, err = run_cli(capsys, ["render", "--exp", "mini_5shot", "--accel", "cpu", "--cards", "2", *argv])
    assert code == 2 and out == "" and says in err and len(err.strip().splitlines()) == 1


def test_cli_flags_and_the_overrides_file(capsys, tmp_path):
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump({"runtimeClassName": "gvisor"}))
    code, out, err = run_cli(capsys, [
        "render", "--exp", "mini_5shot", "--accel", "cpu", "--cards", "2", "--ttl-after-finished", "1d12h",
        "--max-runtime", "90m", "--image-pull-secret", "a", "--image-pull-secret", "b", "--service-account", "sa",
        "--cache-size", "10Gi", "--pod-overrides", str(path)])
    assert code == 0, err
    job = list(yaml.safe_load_all(out))[-1]
    assert (job["spec"]["ttlSecondsAfterFinished"], job["spec"]["activeDeadlineSeconds"]) == (129600, 5400)
    pod = job["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor" and pod["serviceAccountName"] == "sa"
    assert [s["name"] for s in pod["imagePullSecrets"]] == ["a", "b"]
    code, out, _ = run_cli(capsys, ["render", "--exp", "mini_5shot", "--accel", "cpu", "--cards", "2",
                                    "--ttl-after-finished", "none"])
    assert code == 0 and "ttlSecondsAfterFinished" not in out
    fifo = tmp_path / "fifo"
    import os

    os.mkfifo(fifo)
    code, out, err = run_cli(capsys, ["render", "--exp", "mini_5shot", "--accel", "cpu", "--cards", "2",
                                      "--pod-overrides", str(fifo)])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1  # the bounded reader refuses it


def test_cache_size_follows_what_is_staged():
    assert disk.cache_size(0) == "4Gi"
    assert disk.cache_size(13 * disk.GI, zipped=True) == "37Gi"  # the zip and its tree, +25%, + work
    assert disk.cache_size(13 * disk.GI, 1 * disk.GI) == "22Gi"
