"""Rendering: the whole matrix validates, per-accelerator wiring, quoting, and the validators."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from launcher import flavours
from launcher.errors import UsageError
from launcher.flavours import volcano
from launcher.render import check as mc
from launcher.render import render
from launcher.render.check import check_manifests
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec import ranktable as rt
from launcher.spec.jobspec import (
    JobSpec,
    build_job_spec,
)
from tests.launcher.render_helpers import by_kind, env_of, pod_template, write_inventory

EXPERIMENTS = ("mini_1shot", "mini_5shot", "tiered_1shot", "tiered_5shot")
CARDS = (1, 2, 8, 16, 32)
SCHEDULERS = ("job", "volcano")


@pytest.fixture(scope="module")
def inventories(tmp_path_factory) -> dict[tuple[int, int], str]:
    """Static inventories for every (nodes, cards per node) of the Ascend matrix."""
    base = tmp_path_factory.mktemp("inventories")
    out = {}
    for cards in CARDS:
        nodes = -(-cards // 8)
        out[(nodes, cards // nodes)] = str(write_inventory(base / f"n{nodes}-c{cards}.yaml", nodes, cards // nodes))
    return out


def _spec(accel: str, cards: int, scheduler: str = "job", experiment: str = "mini_5shot", **values) -> JobSpec:
    overrides = list(values.pop("set_overrides", []))
    if cards > 12:
        overrides.append(f"metatrain_batch_size={cards}")
    return build_job_spec(experiment=experiment, accelerator=accel, cards=cards, scheduler=scheduler,
                          set_overrides=overrides, **values)


MATRIX = [
    *[("ascend", c, s, m, e) for c, s, m, e in itertools.product(CARDS, SCHEDULERS, js.RANK_TABLE_MODES, EXPERIMENTS)],
    *[(a, c, s, None, e) for a, c, s, e in itertools.product(("nvidia", "cpu"), CARDS, SCHEDULERS, EXPERIMENTS)],
]


@pytest.mark.parametrize(("accel", "cards", "scheduler", "mode", "experiment"), MATRIX,
                         ids=["-".join(str(p) for p in row if p is not None) for row in MATRIX])
def test_matrix_renders_and_validates(inventories, accel, cards, scheduler, mode, experiment):
    nodes = -(-cards // 8)
    rank_table = inventories[(nodes, cards // nodes)] if mode == "file" else mode
    if mode == "controller" and scheduler == "job":
        with pytest.raises(UsageError, match="needs --scheduler volcano"):
            _spec(accel, cards, scheduler, experiment, rank_table=rank_table)
        return
    spec = _spec(accel, cards, scheduler, experiment, rank_table=rank_table)
    objects = render.render_validated(spec)  # raises ManifestError on any problem
    kinds = [flavours.describe_kind(o["apiVersion"], o["kind"]) for o in objects]
    expected = ["ConfigMap"] + (["ConfigMap"] if spec.uses_rings_config else [])
    expected += ["Service", "Job"] if scheduler == "job" else ["vcjob"]
    assert kinds == expected
    # the printed text is exactly the validated objects
    assert list(yaml.safe_load_all(render.dump(objects))) == objects
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels[contract.LABEL_APP] == "leo" and labels[contract.LABEL_MANAGED_BY] == "leo-launch"
        assert labels[contract.LABEL_JOB] == spec.name and labels[contract.LABEL_EXPERIMENT] == experiment
        assert labels[contract.LABEL_ACCEL] == accel
        assert obj["metadata"]["annotations"][contract.ANNOTATION_CARDS] == str(cards)
    template = pod_template(objects)
    assert template["metadata"]["labels"][contract.LABEL_JOB] == spec.name
    container = template["spec"]["containers"][0]
    env = env_of(container)
    assert (env[contract.ENV_WORLD_SIZE], env[contract.ENV_NODES]) == (str(cards), str(nodes))
    assert env[contract.ENV_CARDS_PER_NODE] == str(cards // nodes)
    config = yaml.safe_load(by_kind(objects)["ConfigMap"][0]["data"]["experiment.yaml"])
    assert config["name"] == experiment and config["metatrain_batch_size"] >= cards


@pytest.mark.parametrize(("accel", "cards", "scheduler"), [("cpu", 2, "job"), ("nvidia", 16, "volcano"),
                                                      ("ascend", 16, "volcano"), ("ascend", 16, "ascendjob")])
def test_profile_validates_and_changes_only_the_job_file(accel, cards, scheduler):
    """--profile travels in the ConfigMap's job.yaml; pods, services and the rest stay as they were."""
    plain = render.render_validated(_spec(accel, cards, scheduler))
    profiled = render.render_validated(_spec(accel, cards, scheduler, profile=True, profile_steps=3))
    config = by_kind(profiled)["ConfigMap"][0]
    assert JobSpec.from_yaml(config["data"][contract.JOB_FILE]).profile_steps == 3
    del config["data"][contract.JOB_FILE]
    del by_kind(plain)["ConfigMap"][0]["data"][contract.JOB_FILE]
    assert profiled == plain


def test_kubernetes_validate_itself_accepts_the_output():
    """Our cached validators use kubernetes-validate's schemas; cross-check with its own API."""
    for spec in (_spec("ascend", 16), _spec("nvidia", 32), _spec("cpu", 2)):
        for obj in render.render(spec):
            for version in mc.kubernetes_versions():
                assert kubernetes_validate.validate(obj, version, strict=True)
    newest = kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())
    assert mc.kubernetes_versions() == ("1.30", newest) and newest != "1.30"


# ----------------------------------------------------------------------------- per accelerator

def _resources(objects):
    return pod_template(objects)["spec"]["containers"][0]["resources"]


def test_batch_job_wiring():
    spec = _spec("nvidia", 16, name="leo-a", namespace="ml", max_restarts=2)
    objects = render.render_validated(spec)
    kinds = by_kind(objects)
    job, service = kinds["Job"][0], kinds["Service"][0]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["backoffLimit"] == 4  # 2 restarts of 2 pods
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob",
                        "onExitCodes": {"containerName": "leo", "operator": "In", "values": [2]}}
    assert rules[1]["action"] == "Ignore"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == "leo-a"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {contract.LABEL_JOB: "leo-a"}
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti == {"labelSelector": {"matchLabels": {contract.LABEL_JOB: "leo-a"}},
                    "topologyKey": "kubernetes.io/hostname"}
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "launcher.bootstrap"]
    env = env_of(container)
    assert env[contract.ENV_MASTER_ADDR] == "leo-a-0.leo-a.ml.svc" and env[contract.ENV_MASTER_PORT] == "8118"
    assert env[contract.ENV_NODE_RANK] == {"fieldRef": {"fieldPath":
                                                  "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    for var, path in (("POD_IP", "status.podIP"), ("NODE_NAME", "spec.nodeName"), ("HOST_IP", "status.hostIP")):
        assert env[var] == {"fieldRef": {"fieldPath": path}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "4Gi"}  # nothing remote to stage: the work folder
    assert volumes["leo-config"]["configMap"]["name"] == "leo-a-config"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"leo-config": "/etc/leo-launch", "podinfo": "/etc/podinfo", "dshm": "/dev/shm",
                      "cache": "/cache"}
    assert pod["automountServiceAccountToken"] is False


def test_nvidia_gpus_and_nccl():
    objects = render.render_validated(_spec("nvidia", 16))
    resources = _resources(objects)
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "8"
    env = env_of(pod_template(objects)["spec"]["containers"][0])
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert not {"NCCL_IB_HCA", "NCCL_DEBUG", "HCCL_CONNECT_TIMEOUT", "RANK_TABLE_FILE"} & set(env)
    tuned = render.render_validated(_spec("nvidia", 8, nccl_socket_ifname="^lo,docker", nccl_ib_hca="mlx5_0:1,mlx5_1:1",
                                          nccl_debug="INFO"))
    env = env_of(pod_template(tuned)["spec"]["containers"][0])
    assert (env["NCCL_SOCKET_IFNAME"], env["NCCL_IB_HCA"], env["NCCL_DEBUG"]) == ("^lo,docker", "mlx5_0:1,mlx5_1:1", "INFO")
    tolerations = pod_template(objects)["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_requests_equal_limits_and_no_accelerator_settings():
    objects = render.render_validated(_spec("cpu", 4, cpu="6", memory="20Gi"))
    both = {"cpu": "6", "memory": "20Gi", "ephemeral-storage": "6Gi"}
    assert _resources(objects) == {"requests": both, "limits": both}
    env = env_of(pod_template(objects)["spec"]["containers"][0])
    assert not [k for k in env if k.startswith(("NCCL_", "HCCL_"))]
    assert "tolerations" not in pod_template(objects)["spec"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_ascend_dynamic(scheduler):
    objects = render.render_validated(_spec("ascend", 32, scheduler))
    resources = _resources(objects)
    assert resources["requests"]["huawei.com/Ascend910"] == resources["limits"]["huawei.com/Ascend910"] == "8"
    pod = pod_template(objects)["spec"]
    env = env_of(pod["containers"][0])
    assert env["HCCL_CONNECT_TIMEOUT"] == "1200"
    assert env["HCCL_IF_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env[contract.ENV_ASCEND_DEVICES] == {"fieldRef": {"fieldPath":
                                                       f"metadata.annotations['{contract.ASCEND_DEVICE_ANNOTATION}']"}}
    assert env["RANK_TABLE_FILE"] == contract.DYNAMIC_RANK_TABLE_PATH and env[contract.ENV_RANKTABLE_PORT] == "8119"
    assert not [k for k in env if k.startswith("NCCL_")]
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports == {"msrun": 8118, "ranktable": 8119}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ascend-driver"]["hostPath"]["path"] == "/usr/local/Ascend/driver"
    assert volumes["hccn-conf"]["hostPath"] == {"path": "/etc/hccn.conf", "type": "File"}
    if scheduler == "job":
        service = by_kind(objects)["Service"][0]
        assert {p["name"] for p in service["spec"]["ports"]} == {"msrun", "ranktable"}


def test_ascend_file_mode_pins_pods_and_carries_the_table(inventories):
    spec = _spec("ascend", 16, rank_table=inventories[(2, 8)])
    objects = render.render_validated(spec)
    table = json.loads(by_kind(objects)["ConfigMap"][0]["data"]["hccl.json"])
    assert table == rt.build_table(rt.inventory_fragments(rt.load_inventory(inventories[(2, 8)])))
    pod = pod_template(objects)["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                            "values": ["npu-node-0", "npu-node-1"]}]}]
    env = env_of(pod["containers"][0])
    assert env["RANK_TABLE_FILE"] == "/etc/leo-launch/hccl.json" and contract.ENV_RANKTABLE_PORT not in env
    assert "hccn-conf" not in {v["name"] for v in pod["volumes"]}


def test_ascend_volcano_controller_mode_and_rings_config():
    spec = _spec("ascend", 16, "volcano", rank_table="controller", queue="research", max_restarts=5,
                 priority_class="high-priority")
    objects = render.render_validated(spec)
    rings = by_kind(objects)["ConfigMap"][1]
    assert rings["metadata"]["name"] == f"rings-config-{spec.name}"
    assert rings["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910"
    assert rings["data"] == {"hccl.json": '{"status":"initializing"}'}
    vcjob = by_kind(objects)["vcjob"][0]
    assert vcjob["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910"
    s = vcjob["spec"]
    assert (s["schedulerName"], s["minAvailable"], s["queue"], s["maxRetry"]) == ("volcano", 2, "research", 6)
    assert s["priorityClassName"] == "high-priority"
    assert s["plugins"] == {"svc": ["--publish-not-ready-addresses=true"], "env": []}
    assert s["policies"] == [{"event": "PodEvicted", "action": "RestartJob"},
                             {"event": "PodFailed", "action": "RestartJob"}]
    task = s["tasks"][0]
    assert (task["name"], task["replicas"]) == ("worker", 2)
    assert task["policies"] == [{"exitCode": 2, "action": "TerminateJob"}]
    pod = task["template"]["spec"]
    assert pod["schedulerName"] == "volcano" and pod["priorityClassName"] == "high-priority"
    assert task["template"]["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["ascend-910-config"] == "/user/serverid/devindex/config"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ascend-910-config"]["configMap"]["name"] == f"rings-config-{spec.name}"
    env = env_of(pod["containers"][0])
    assert env["RANK_TABLE_FILE"] == "/user/serverid/devindex/config/hccl.json"
    assert env[contract.ENV_MASTER_ADDR] == f"{spec.name}-worker-0.{spec.name}.default.svc"
    assert contract.ENV_NODE_RANK not in env  # Volcano's env plugin sets VC_TASK_INDEX


def test_storage_secret_is_referenced_never_copied():
    spec = _spec("nvidia", 2, data_url="obs://leo-data/mini", train_url="s3://leo-out/runs",
                 storage_secret="obs-creds", storage_endpoint="https://obs.cn-north-4.myhuaweicloud.com")
    objects = render.render_validated(spec)
    env = env_of(pod_template(objects)["spec"]["containers"][0])
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"secretKeyRef": {"name": "obs-creds", "key": key}}
    assert env[contract.ENV_DATA_URL] == "obs://leo-data/mini" and env[contract.ENV_TRAIN_URL] == "s3://leo-out/runs"
    assert env["AWS_ENDPOINT_URL"] == "https://obs.cn-north-4.myhuaweicloud.com"
    job_yaml = yaml.safe_load(by_kind(objects)["ConfigMap"][0]["data"]["job.yaml"])
    assert JobSpec.from_dict(job_yaml) == spec


def test_scheduling_options():
    spec = _spec("nvidia", 8, node_selectors=["accelerator-type=a100", "example.com/pool=train"],
                 tolerations=["dedicated=ml:NoSchedule", "nvidia.com/gpu=present:NoSchedule"], queue="team-q",
                 priority_class="batch-high")
    objects = render.render_validated(spec)
    pod = pod_template(objects)["spec"]
    assert pod["nodeSelector"] == {"accelerator-type": "a100", "example.com/pool": "train"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "batch-high"
    assert by_kind(objects)["Job"][0]["metadata"]["labels"][contract.KUEUE_QUEUE_LABEL] == "team-q"


# ----------------------------------------------------------------------------- quoting

HOSTILE = [
    's3://bucket/a"b\'c\\d',
    "s3://bucket/{{ job.name }}/{% raw %}{#",
    'obs://bucket/x: !!python/object/apply:os.system ["echo pwned"]',
    "file:///data/#comment &anchor *alias | > --- ... ? : - [ ] { } , %TAG !",
    "/plain/ü/😀/\u2028/\u00a0/\ufeff",
    "s3://bucket/null",
    "s3://bucket/- item",
    "yes",
    "0x1F",
    "~",
]


# object keys the pods' URL parser refuses ('\\', '#'): render refuses them too (issue 12)
REFUSED_URLS = {'s3://bucket/a"b\'c\\d', "s3://bucket/{{ job.name }}/{% raw %}{#"}


@pytest.mark.parametrize("value", sorted(REFUSED_URLS))
def test_urls_the_pods_would_refuse_are_refused_at_render(value):
    with pytest.raises(UsageError, match="not allowed"):
        _spec("ascend", 8, "volcano", data_url=value, train_url=value)


@pytest.mark.parametrize("value", [v for v in HOSTILE if v not in REFUSED_URLS])
def test_hostile_strings_stay_literal_and_valid(value):
    # the rendering itself: render_validated also refuses local paths (pods cannot read them)
    spec = _spec("ascend", 8, "volcano", data_url=value, train_url=value, storage_region="cn-north-4")
    objects = render.render(spec)
    check_manifests(objects)
    env = env_of(pod_template(objects)["spec"]["containers"][0])
    assert env[contract.ENV_DATA_URL] == value and env[contract.ENV_TRAIN_URL] == value
    text = render.dump(objects)
    assert list(yaml.safe_load_all(text)) == objects
    job_yaml = by_kind(objects)["ConfigMap"][0]["data"]["job.yaml"]
    assert JobSpec.from_yaml(job_yaml) == spec
    assert "!!python" not in text or "!!python" in value  # never a tag, only text


@pytest.mark.parametrize("value", [*HOSTILE, "line1\nline2: {{x}}\n  - !!binary x", "tab\there\r\n\x00\x1b[31m",
                                   "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16"), "", 7, True,
                                   None, ["a\nb", {"k: v": "x\ny"}]])
def test_the_q_filter_writes_one_literal_scalar(value):
    quoted = render.yaml_quote(value)
    assert "\n" not in quoted
    assert yaml.safe_load(quoted) == value
    assert yaml.safe_load(f"key: {quoted}\nother: 1") == {"key": value, "other": 1}
    assert json.loads(quoted) == value


def test_the_q_filter_refuses_what_it_cannot_quote():
    with pytest.raises(TypeError):
        render.yaml_quote(1.5)
    with pytest.raises(TypeError):
        render.yaml_quote({1: "x"})
    with pytest.raises(ValueError, match="surrogate"):
        render.yaml_quote("bad \udc80 byte")


def test_templates_quote_every_value_and_refuse_unquoted_output():
    expression = re.compile(r"\{\{(.*?)\}\}", re.S)
    templates = sorted(render.TEMPLATE_DIR.glob("*.j2"))
    assert {p.name for p in templates} >= {"configmap.yaml.j2", "service.yaml.j2", "job.yaml.j2", "vcjob.yaml.j2"}
    for path in templates:
        for match in expression.finditer(path.read_text()):
            assert re.search(r"\|\s*q\s*-?$", match.group(1).strip()), f"{path.name}: {{{{{match.group(1)}}}}}"
    import jinja2

    env = render.environment()
    with pytest.raises(TypeError, match="without the q filter"):
        env.from_string("name: {{ name }}").render(name="x")
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("name: {{ missing | q }}").render()


def test_a_hostile_value_reaching_a_template_stays_one_value():
    spec = _spec("cpu", 2)
    ctx = render.context(spec)
    evil = "a\nkind: Secret\n---\napiVersion: v1\n{{ 7*7 }} !!python/name:os.system"
    obj = render.render_template("configmap.yaml.j2", ctx, configmap={
        "name": "x", "labels": {"evil": evil}, "data": {"job.yaml": evil}})
    assert obj["kind"] == "ConfigMap"
    assert obj["metadata"]["labels"]["evil"] == evil and obj["data"]["job.yaml"] == evil
    assert mc.semantic_problems([obj])  # and the label syntax check catches it


# ----------------------------------------------------------------------------- output

def test_write_dir_one_file_per_object_and_refuses_a_foreign_render(tmp_path):
    objects = render.render_validated(_spec("ascend", 16, "volcano", name="leo-v"))
    paths = render.write_dir(objects, tmp_path / "out")
    assert [p.name for p in paths] == ["00-configmap-leo-v-config.yaml", "01-configmap-rings-config-leo-v.yaml",
                                       "02-vcjob-leo-v.yaml"]
    assert [yaml.safe_load(p.read_text()) for p in paths] == objects
    assert render.write_dir(objects, tmp_path / "out") == paths  # re-rendering the same job is fine
    other = render.render_validated(_spec("cpu", 2, name="leo-other"))
    with pytest.raises(UsageError, match="already holds 00-configmap-leo-v-config.yaml"):
        render.write_dir(other, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        render.write_dir(objects, tmp_path / "file")


# ----------------------------------------------------------------------------- the validators

@pytest.fixture(scope="module")
def job_objects():
    return render.render(_spec("nvidia", 16, storage_secret="creds"))


@pytest.fixture(scope="module")
def vcjob_objects():
    return render.render(_spec("ascend", 16, "volcano"))


def _job(objects):
    return next(o for o in objects if o["kind"] == "Job")


def _problems(objects):
    return "\n".join(mc.problems(objects))


def test_the_rendered_sets_are_clean(job_objects, vcjob_objects):
    assert mc.problems(job_objects) == [] and mc.problems(vcjob_objects) == []


def test_unknown_kinds_fail():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    text = _problems([widget])
    assert "unknown kind Widget" in text
    with pytest.raises(mc.ManifestError, match="unknown kind"):
        mc.check_manifests([widget])


def test_unknown_fields_fail_schema_and_model(job_objects):
    objects = copy.deepcopy(job_objects)
    _job(objects)["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8
    text = _problems(objects)
    assert "Kubernetes 1.30 schema" in text and "'gpus' was unexpected" in text
    assert f"Kubernetes {mc.kubernetes_versions()[-1]} schema" in text
    assert "client model V1Job: spec.template.spec.containers[0].gpus: unknown field" in text


def test_wrong_types_fail(job_objects):
    objects = copy.deepcopy(job_objects)
    _job(objects)["spec"]["completions"] = "2"
    assert "'2' is not of type 'integer'" in _problems(objects)
    assert mc.model_problems({"name": "x", "containerPort": "80"}, "V1ContainerPort") == [
        "client model V1ContainerPort: containerPort: '80' does not fit the model (read as 80)"]
    assert "must not be `None`" in mc.model_problems({"image": "x"}, "V1Container")[0]


def test_volcano_jobs_are_checked_against_the_crd_and_pod_schemas(vcjob_objects):
    objects = copy.deepcopy(vcjob_objects)
    vcjob = objects[-1]
    vcjob["spec"]["gang"] = True
    vcjob["spec"]["policies"][0]["event"] = "PodExploded"
    vcjob["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    vcjob["spec"]["tasks"][0]["template"]["spec"]["nodeName"] = 7
    text = _problems(objects)
    assert "Volcano CRD schema: spec: Additional properties are not allowed ('gang'" in text
    assert "'PodExploded' is not one of" in text
    assert "tasks[0].template: Kubernetes 1.30 schema: spec.nodeName: 7 is not of type" in text
    assert "limits.memory 'lots' is not a Kubernetes quantity" in text


def test_semantic_rules(job_objects):
    objects = copy.deepcopy(job_objects)
    job = _job(objects)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "4"
    container["resources"]["requests"]["memory"] = "1Ti"
    container["env"].append({"name": "LEO_JOB_NAME", "value": "dup"})
    container["env"].append({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}})
    pod["volumes"][0]["configMap"]["name"] = "missing-config"
    pod["subdomain"] = "nowhere"
    job["metadata"]["labels"]["bad key!"] = "x"
    job["metadata"]["labels"][contract.LABEL_MANAGED_BY] = "helm"
    job["spec"]["parallelism"] = 1
    objects[1]["spec"]["publishNotReadyAddresses"] = False
    objects[1]["spec"]["selector"] = {contract.LABEL_JOB: "other"}
    text = _problems(objects)
    for expected in (
        "extended resource nvidia.com/gpu must be equal in requests and limits",
        "request of memory exceeds its limit",
        "'LEO_JOB_NAME' is set twice",
        "fieldPath 'status.phase' is not supported",
        "mounts ConfigMap 'missing-config', which is not rendered",
        "subdomain 'nowhere' names no rendered Service",
        "metadata.labels bad key!=",
        "must have app.kubernetes.io/managed-by=leo-launch",
        "parallelism must equal completions",
        "publishNotReadyAddresses: true",
        "spec.selector matches no rendered pod template",
    ):
        assert expected in text, expected


def test_check_manifests_raises_one_line(job_objects):
    objects = copy.deepcopy(job_objects)
    _job(objects)["metadata"]["name"] = "Bad_Name"
    _job(objects)["metadata"]["labels"]["x"] = "bad value"
    with pytest.raises(mc.ManifestError) as info:
        mc.check_manifests(objects)
    assert "\n" not in str(info.value) and "more)" in str(info.value)
    assert info.value.exit_code == 1


def test_the_volcano_schema_is_the_vendored_copy():
    schema = volcano.FLAVOUR.schema
    assert schema == Path(mc.__file__).resolve().parents[1] / "schemas" / "volcano" / "batch.volcano.sh_jobs.yaml"
    notice = (schema.parent / "NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and "volcano-sh/volcano" in notice
    for path in Path(render.__file__).resolve().parents[1].rglob("*.py"):
        assert "shared/schemas" not in path.read_text(), path
