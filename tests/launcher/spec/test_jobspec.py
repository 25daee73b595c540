"""JobSpec: defaults, validation, plain-data round trip and the in-pod helpers."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from launcher.errors import UsageError
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec.jobspec import (
    JobSpec,
    Toleration,
    build_job_spec,
)
from tests.launcher.render_helpers import write_inventory


def spec(**values) -> JobSpec:
    values.setdefault("experiment", "mini_5shot")
    values.setdefault("accelerator", "ascend")
    values.setdefault("cards", 8)
    return build_job_spec(**values)


def test_defaults_are_resolved():
    s = spec(cards=8)
    assert (s.name, s.namespace, s.nodes, s.cards_per_node) == ("leo-mini-5shot-ascend8", "default", 1, 8)
    assert s.image == "leo-launch:ascend" and s.rank_table == "dynamic" and s.scheduler == "job"
    assert (s.cpu, s.memory, s.shm_size) == ("32", "128Gi", "16Gi")
    assert s.max_restarts == 3 and s.master_port == 8118 and s.ranktable_port == 8119
    assert s.nccl_socket_ifname is None
    n = spec(accelerator="nvidia", cards=4)
    assert n.nccl_socket_ifname == "eth0" and n.rank_table is None and n.image == "leo-launch:nvidia"
    c = spec(accelerator="cpu", cards=2)
    assert (c.cpu, c.memory, c.shm_size) == ("2", "8Gi", "1Gi")
    # the images' non-root user; Ascend mounts the host's driver as MindCluster's samples do
    assert (s.run_as_user, s.run_as_group, s.ascend_driver_mount) == (1000, 1000, "hostpath")
    assert (n.run_as_user, n.run_as_group, n.ascend_driver_mount) == (1000, 1000, None)


@pytest.mark.parametrize(("cards", "nodes"), [(1, 1), (8, 1), (10, 2), (16, 2), (32, 4), (64, 8)])
def test_nodes_default_to_cards_over_eight_rounded_up(cards, nodes):
    s = spec(accelerator="nvidia", cards=cards, set_overrides=[f"metatrain_batch_size={max(cards, 12)}"])
    assert s.nodes == nodes


def test_to_dict_from_dict_and_yaml_round_trip(tmp_path):
    inventory = write_inventory(tmp_path / "nodes.yaml", 2, 4)
    s = spec(cards=8, nodes=2, rank_table=str(inventory), name="leo-a", namespace="team-a",
             data_url="obs://leo-data/mini", train_url="s3://leo-out/runs", storage_secret="obs-creds",
             storage_endpoint="https://obs.cn-north-4.myhuaweicloud.com", steps=500,
             set_overrides=["outer_lr=0.001", "train_on_val=true"], node_selectors=["host-arch=huawei-arm"],
             tolerations=["dedicated=ai:NoSchedule", "spot"], priority_class="high", queue="research",
             max_restarts=5, cpu="60", memory="400Gi", shm_size="64Gi", run_as_user=2000, run_as_group=3000,
             ascend_driver_mount="runtime")
    data = s.to_dict()
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain data only
    assert JobSpec.from_dict(data) == s
    assert JobSpec.from_yaml(s.to_yaml()) == s
    assert data["overrides"] == {"outer_lr": "0.001", "train_on_val": "true", "num_steps_limit": "500"}
    assert data["inventory"][1]["name"] == "npu-node-1"
    assert (data["run_as_user"], data["run_as_group"], data["ascend_driver_mount"]) == (2000, 3000, "runtime")
    # a job.yaml written before these keys existed loads with their defaults
    old = {k: v for k, v in data.items() if k not in ("run_as_user", "run_as_group", "ascend_driver_mount")}
    assert (JobSpec.from_dict(old).run_as_user, JobSpec.from_dict(old).ascend_driver_mount) == (1000, "hostpath")
    assert data["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists"}]
    assert "AWS_SECRET_ACCESS_KEY" not in s.to_yaml() and "obs-creds" in s.to_yaml()
    config = s.experiment_config()
    assert (config.num_steps_limit, config.outer_lr, config.train_on_val) == (500, 0.001, True)


def test_the_spec_is_immutable_and_replace_revalidates():
    s = spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cards = 16  # type: ignore[misc]
    assert dataclasses.replace(s, scheduler="volcano").pod_hostname(0) == "leo-mini-5shot-ascend8-worker-0"
    with pytest.raises(UsageError, match="exceed metatrain_batch_size"):
        dataclasses.replace(s, cards=16, nodes=None)


def test_from_dict_rejects_unknown_keys_and_versions():
    data = spec().to_dict()
    with pytest.raises(UsageError, match="did you mean cards"):
        JobSpec.from_dict({**data, "card": 8})
    with pytest.raises(UsageError, match="version 9"):
        JobSpec.from_dict({**data, "version": 9})
    with pytest.raises(UsageError, match="not valid YAML"):
        JobSpec.from_yaml("name: [")


def test_world_size_larger_than_the_global_meta_batch_is_rejected_with_a_hint():
    with pytest.raises(UsageError, match=r"--set metatrain_batch_size=16"):
        spec(accelerator="nvidia", cards=16)
    with pytest.raises(UsageError, match="worker processes exceed"):
        spec(accelerator="cpu", cards=16)
    assert spec(accelerator="cpu", cards=12).world_size == 12
    assert spec(accelerator="nvidia", cards=16, set_overrides=["metatrain_batch_size=16"]).nodes == 2


def test_steps_override_num_steps_limit_after_set():
    s = spec(set_overrides=["num_steps_limit=10"], steps=42)
    assert s.experiment_config().num_steps_limit == 42


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"experiment": "mini5shot"}, "did you mean mini_5shot"),
        ({"experiment": "imagenet"}, "unknown experiment 'imagenet'"),
        ({"accelerator": "gpu"}, "did you mean nvidia"),
        ({"accelerator": "tpu_v5"}, "unknown accelerator"),
        ({"cards": 0}, "cards must be at least 1"),
        ({"cards": 12, "nodes": 5, "set_overrides": ["metatrain_batch_size=12"]}, "do not split evenly"),
        ({"cards": 12, "nodes": 2}, "Ascend nodes take 1, 2, 4 or 8 cards each, not 6"),
        ({"cards": 12}, "try --nodes 3"),
        ({"cards": 2, "nodes": 3}, "exceeds --cards"),
        ({"accelerator": "nvidia", "cards": 34, "nodes": 2, "set_overrides": ["metatrain_batch_size=34"]},
         "17 cards per node"),
        ({"name": "Bad_Name"}, "DNS-1035"),
        ({"name": "1job"}, "DNS-1035"),
        ({"name": "x" * 62}, "at most 61"),
        ({"name": "x" * 56, "scheduler": "volcano"}, "at most 54"),
        ({"namespace": "Team"}, "DNS-1123 label"),
        ({"set_overrides": ["outer_lr"]}, "key=value"),
        ({"set_overrides": ["no_such_key=1"]}, "unknown config key"),
        ({"set_overrides": ["metatrain_batch_size=big"]}, "expects an integer"),
        ({"set_overrides": ["name=other"]}, "unknown config key 'name'"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"node_selectors": ["novalue"]}, "key=value"),
        ({"node_selectors": ["bad key=x"]}, "key name"),
        ({"node_selectors": ["zone=" + "v" * 64]}, "at most 63"),
        ({"tolerations": ["=x:NoSchedule"]}, "key=value:Effect"),
        ({"tolerations": ["k=v:Sometimes"]}, "effect must be one of"),
        ({"tolerations": ["k=v w:NoSchedule"]}, "value must consist"),
        ({"data_url": "s3://UPPER/x"}, "bucket 'UPPER'"),
        ({"data_url": "s3://ab/x"}, "3-63"),
        ({"data_url": "obs://-bucket/x"}, "starting and ending"),
        ({"train_url": "gs://bucket/x"}, "unknown scheme 'gs://'"),
        ({"train_url": "file://relative/path"}, "absolute path"),
        ({"train_url": "s3://bucket/a\nb"}, "control characters"),
        ({"data_url": ""}, "must not be empty"),
        ({"storage_secret": "Bad_Secret"}, "a Secret name"),
        ({"storage_endpoint": "ftp://obs.example.com"}, "http:// or https://"),
        ({"storage_endpoint": "https://host:99999"}, "Port out of range"),
        ({"image": "Bad Image"}, "not a valid image reference"),
        ({"image": "UPPER/leo:1"}, "not a valid image reference"),
        ({"image": "leo:tag\n"}, "control characters"),
        ({"rank_table": "/no/such/inventory.yaml"}, "no such inventory file"),
        ({"accelerator": "nvidia", "rank_table": "dynamic"}, "--accel ascend only"),
        ({"rank_table": "controller"}, "needs --scheduler volcano"),
        ({"priority_class": "High"}, "DNS-1123 subdomain"),
        ({"queue": "a.b"}, "DNS-1123 label"),
        ({"max_restarts": -1}, "at least 0"),
        ({"cpu": "lots"}, "cpu 'lots' is not a positive"),
        ({"memory": "0"}, "memory '0' is not a positive"),
        ({"shm_size": "-1Gi"}, "shm_size"),
        ({"master_port": 80}, "master_port must be at least 1024"),
        ({"cluster_timeout": 0}, "cluster_timeout"),
        ({"hccl_connect_timeout": 9000}, "at most 7200"),
        ({"nccl_ib_hca": "mlx5_0"}, "--nccl-ib-hca applies to --accel nvidia only"),
        ({"accelerator": "nvidia", "nccl_debug": "LOUD"}, "nccl_debug must be one of"),
        ({"accelerator": "nvidia", "nccl_socket_ifname": "eth0;rm -rf /"}, "interface names"),
        ({"run_as_user": 0}, "run_as_user 0: the pods run as non-root"),
        ({"run_as_group": 0}, "run_as_group 0: the pods run as non-root"),
        ({"run_as_user": 2**31}, "run_as_user must be at most 2147483647"),
        ({"run_as_group": "staff"}, "run_as_group expects a whole number"),
        ({"ascend_driver_mount": "host"}, "choose hostpath .* or runtime"),
        ({"accelerator": "nvidia", "ascend_driver_mount": "runtime"}, "--ascend-driver-mount applies to --accel ascend only"),
        ({"profile": True, "profile_steps": 0}, "profile_steps must be at least 1"),
        ({"profile": True, "profile_steps": 101}, "profile_steps must be at most 100"),
        ({"profile": True, "profile_steps": "some"}, "profile_steps expects a whole number"),
        ({"profile_steps": 3}, "--profile-steps applies with --profile only"),
    ],
)
def test_bad_values_raise_one_line_usage_errors(values, message):
    with pytest.raises(UsageError, match=message) as info:
        spec(**values)
    assert "\n" not in str(info.value)


def test_inventory_must_match_the_job(tmp_path):
    two = write_inventory(tmp_path / "two.yaml", 2, 8)
    with pytest.raises(UsageError, match="lists 2 nodes but the job has 4"):
        spec(cards=32, rank_table=str(two), set_overrides=["metatrain_batch_size=32"])
    with pytest.raises(UsageError, match="lists 8 devices but the job uses 4"):
        spec(cards=8, nodes=2, rank_table=str(two))
    s = spec(cards=16, rank_table=str(two), set_overrides=["metatrain_batch_size=16"])
    assert s.rank_table == "file" and s.inventory_rank("npu-node-1") == 1
    with pytest.raises(UsageError, match="not in the job's inventory"):
        s.inventory_rank("elsewhere")


def test_name_length_leaves_room_for_pod_host_names():
    s = spec(accelerator="nvidia", cards=32, name="x" * 60, set_overrides=["metatrain_batch_size=32"])
    assert len(s.pod_hostname(s.nodes - 1)) == 62
    with pytest.raises(UsageError, match=r"<name>-3 must fit 63"):
        spec(accelerator="nvidia", cards=32, name="x" * 62, set_overrides=["metatrain_batch_size=32"])


def test_toleration_forms():
    assert Toleration.parse("k=v:NoExecute").to_dict() == {"key": "k", "operator": "Equal", "value": "v",
                                                            "effect": "NoExecute"}
    assert Toleration.parse("example.com/gpu:NoSchedule").to_dict() == {
        "key": "example.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert Toleration.parse("k=v").to_dict() == {"key": "k", "operator": "Equal", "value": "v"}
    assert Toleration.parse("k").to_dict() == {"key": "k", "operator": "Exists"}
    with pytest.raises(UsageError, match="Exists takes no value"):
        Toleration.from_dict({"key": "k", "operator": "Exists", "value": "v"})


def test_master_address_and_msrun_arguments():
    s = spec(accelerator="nvidia", cards=16, name="leo-a", namespace="ml", set_overrides=["metatrain_batch_size=16"])
    assert s.master_addr == "leo-a-0.leo-a.ml.svc"
    assert s.msrun_args(1, log_dir="/cache/logs") == [
        "--worker_num", "16", "--local_worker_num", "8", "--master_addr", "leo-a-0.leo-a.ml.svc",
        "--master_port", "8118", "--node_rank", "1", "--log_dir", "/cache/logs", "--join", "True",
        "--cluster_time_out", "1800"]
    v = dataclasses.replace(s, scheduler="volcano")
    assert v.master_addr == "leo-a-worker-0.leo-a.ml.svc"
    assert v.msrun_args(0, log_dir="/l", master_addr="10.1.2.3", rank_table_file="/t.json")[-2:] == [
        "--rank_table_file", "/t.json"]
    with pytest.raises(UsageError, match="outside 0..1"):
        s.msrun_args(2, log_dir="/l")


def test_node_rank_comes_from_the_first_variable_set():
    assert js.node_rank_from_env({"LEO_NODE_RANK": "3", "VC_TASK_INDEX": "1"}) == 3
    assert js.node_rank_from_env({"LEO_NODE_RANK": "", "JOB_COMPLETION_INDEX": "2"}) == 2
    assert js.node_rank_from_env({"VC_TASK_INDEX": "1"}) == 1
    with pytest.raises(UsageError, match="no node rank"):
        js.node_rank_from_env({})
    with pytest.raises(UsageError, match="not a node rank"):
        js.node_rank_from_env({"VC_TASK_INDEX": "one"})


def test_contract_constants():
    assert contract.JOB_PATH == "/etc/leo-launch/job.yaml"
    assert contract.EXPERIMENT_PATH == "/etc/leo-launch/experiment.yaml"
    assert contract.FILE_RANK_TABLE_PATH == "/etc/leo-launch/hccl.json"
    assert (contract.CACHE_DIR, contract.SHM_DIR) == ("/cache", "/dev/shm")
    assert contract.BOOTSTRAP_COMMAND == ("python", "-m", "launcher.bootstrap")
    assert (contract.EXIT_SUCCESS, contract.EXIT_BAD_CONFIG, contract.NON_RETRIABLE_EXIT_CODES) == (0, 2, (2,))
    assert js.DEFAULT_IMAGES == {"ascend": "leo-launch:ascend", "nvidia": "leo-launch:nvidia",
                                 "cpu": "leo-launch:cpu"}
    assert js.DOCKERFILES["ascend"] == "images/ascend/Dockerfile"


def test_profile_steps_default_to_five_and_travel_in_job_yaml():
    """`--profile` reaches the pods through job.yaml (the ConfigMap's JOB_FILE)."""
    s = spec(profile=True)
    assert s.profile_steps == js.DEFAULT_PROFILE_STEPS == 5
    assert JobSpec.from_yaml(s.to_yaml()).profile_steps == 5
    assert JobSpec.from_yaml(spec(profile=True, profile_steps=2).to_yaml()).profile_steps == 2
    assert spec().profile_steps is None
    assert "profile_steps" not in spec().to_dict()  # job.yaml stays readable by bootstraps without it
    with pytest.raises(UsageError, match="profile_steps expects a whole number"):
        JobSpec.from_dict({**s.to_dict(), "profile_steps": True})
