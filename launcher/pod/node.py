"""What one node of a job works out before it runs: its paths, the resolved job, its node
rank, the master's address, the rank table (Ascend), and the checks of its configuration.
A configuration that cannot run raises `BadConfig` (exit code 2, not retried)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError, UsageError
from launcher.outputs.layout import LOGS_DIR, PROFILE_DIR
from launcher.pod import rendezvous as rdv
from launcher.pod.logrelay import Output
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec import ranktable as rt
from launcher.spec.contract import ENV_EVAL_TASKS, ENV_WORK_DIR

EVAL_BATCHES = 50  # meta-test: 50 batches of metatest_batch_size tasks (the original's 10,000)


class BadConfig(UsageError):
    """The job cannot run as configured: exit code 2, not retried."""


class Terminated(BaseException):
    """SIGTERM/SIGINT arrived: unwind (cleanup and a last publication run in `finally`)."""


# ------------------------------------------------------------------ the bootstrap


@dataclasses.dataclass
class Paths:
    config_dir: Path
    cache: Path
    work: Path

    @property
    def job_file(self) -> Path:
        return self.config_dir / contract.JOB_FILE

    @property
    def experiment_file(self) -> Path:
        return self.config_dir / contract.EXPERIMENT_FILE

    @property
    def out(self) -> Path:
        return self.work / "out"

    @property
    def logs(self) -> Path:
        return self.work / LOGS_DIR

    @property
    def profile(self) -> Path:
        return self.work / PROFILE_DIR  # `leo_core.train --profile`: rank-<r>/ of this node's ranks

    @property
    def msrun_logs(self) -> Path:
        return self.work / "msrun"

    @property
    def previous_logs(self) -> Path:
        return self.work / "previous-logs"

    @property
    def nothing(self) -> Path:
        return self.work / "nothing"  # the out dir of non-zero nodes' publishers


def paths_from_env(env: Mapping[str, str]) -> Paths:
    config_dir = Path(env.get(contract.ENV_CONFIG_DIR) or contract.CONFIG_DIR)
    cache = Path(env.get(contract.ENV_CACHE_DIR) or contract.CACHE_DIR)
    work = Path(env.get(ENV_WORK_DIR) or cache / "job")
    return Paths(config_dir, cache, work)


def load_job(paths: Paths) -> tuple[js.JobSpec, Any]:
    """The job's spec and experiment config (BadConfig when unreadable or invalid)."""
    from leo_core.config import ConfigError, load_config_file

    try:
        text = paths.job_file.read_text()
    except OSError as err:
        raise BadConfig(f"cannot read the job spec {paths.job_file}: {err.strerror or err} "
                        f"(is the job's ConfigMap mounted at {paths.config_dir}?)") from err
    try:
        spec = js.JobSpec.from_yaml(text)
    except UsageError as err:
        raise BadConfig(f"{paths.job_file}: {err}") from err
    try:
        config = load_config_file(paths.experiment_file)
    except ConfigError as err:
        raise BadConfig(str(err)) from err
    if config.name != spec.experiment:
        raise BadConfig(f"{paths.experiment_file} is experiment {config.name!r} but the job is "
                        f"{spec.experiment!r}")
    return spec, config


def node_rank_of(spec: js.JobSpec, env: Mapping[str, str]) -> int:
    if spec.rank_table == "file":
        node = env.get("NODE_NAME", "")
        if not node:
            raise BadConfig("NODE_NAME is not set: an inventory job finds its node rank by node name")
        rank = spec.inventory_rank(node)
    else:
        rank = js.node_rank_from_env(env)
    if not 0 <= rank < spec.nodes:
        raise BadConfig(f"node rank {rank} is outside 0..{spec.nodes - 1}")
    return rank


# ------------------------------------------------------------------ under the ascend-operator


@dataclasses.dataclass(frozen=True)
class OperatorCluster:
    """MindSpore's cluster as the ascend-operator describes it to an AscendJob pod.

    The operator runs one Scheduler pod (`MS_ROLE=MS_SCHED`, `MS_SCHED_HOST` = its own IP)
    and Worker pods (`MS_ROLE=MS_WORKER`, `MS_SCHED_HOST` = the ClusterIP of the Service
    `<job>-scheduler-0`). So the scheduler pod runs MindSpore's scheduler role and nothing
    else, and workers join it: msrun starts a scheduler only when `--master_addr` is an
    address of its own host, which a Service IP never is."""

    role: str  # contract.ASCENDJOB_SCHEDULER or contract.ASCENDJOB_WORKER
    sched_host: str
    sched_port: int
    worker_num: int
    local_worker: int | None  # NPUs of this pod (None: not injected)
    node_rank: int | None  # MS_NODE_RANK


_ROLES = {"MS_SCHED": contract.ASCENDJOB_SCHEDULER, "MS_WORKER": contract.ASCENDJOB_WORKER}


def operator_cluster(spec: js.JobSpec, env: Mapping[str, str]) -> OperatorCluster | None:
    """The operator's variables of an AscendJob pod, checked against the job (None for other
    schedulers). A pod of an AscendJob without them was not started by the operator."""
    if not spec.flavour.operator_cluster:
        return None
    role = env.get(contract.OPERATOR_ROLE, "").strip()
    if not role:
        raise BadConfig(f"{contract.OPERATOR_ROLE} is not set: an AscendJob's pods get MindSpore's cluster "
                        f"variables from the ascend-operator (in the container named "
                        f"{contract.ASCENDJOB_CONTAINER!r}); is the operator running?")
    if role not in _ROLES:
        raise BadConfig(f"{contract.OPERATOR_ROLE}={role!r}: expected MS_SCHED or MS_WORKER "
                        "(a parameter-server role is not used by LEO)")
    host = env.get(contract.OPERATOR_SCHED_HOST, "").strip()
    if not host:
        raise BadConfig(f"{contract.OPERATOR_SCHED_HOST} is not set by the ascend-operator")

    def number(var: str, minimum: int, maximum: int | None = None, required: bool = True) -> int | None:
        text = env.get(var, "").strip()
        if not text and not required:
            return None
        if not text.isdigit() or int(text) < minimum or (maximum is not None and int(text) > maximum):
            raise BadConfig(f"{var}={text!r} from the ascend-operator is not a valid number")
        return int(text)

    port = number(contract.OPERATOR_SCHED_PORT, 1, 65535)
    workers = number(contract.OPERATOR_WORKER_NUM, 1)
    local = number(contract.OPERATOR_LOCAL_WORKER, 0, required=False)
    rank = number(contract.OPERATOR_NODE_RANK, 0, required=False)
    if workers != spec.world_size:
        raise BadConfig(f"the ascend-operator says {contract.OPERATOR_WORKER_NUM}={workers} but the job has "
                        f"{spec.world_size} cards: do the Worker pods request "
                        f"{spec.cards_per_node} {spec.resource_name} each?")
    if workers < 2:  # MindSpore forms no cluster for one process (the job refuses this too)
        raise BadConfig(f"{contract.OPERATOR_WORKER_NUM}={workers}: an AscendJob needs at least 2 workers")
    cluster = OperatorCluster(_ROLES[role], host, port, workers, local, rank)  # type: ignore[arg-type]
    if cluster.role == contract.ASCENDJOB_WORKER:
        if local is not None and local != spec.cards_per_node:
            raise BadConfig(f"{contract.OPERATOR_LOCAL_WORKER}={local} but the job runs {spec.cards_per_node} "
                            "processes per node")
        if host == env.get("POD_IP"):
            raise BadConfig(f"{contract.OPERATOR_SCHED_HOST} is this worker pod's own address: msrun would "
                            "start a second MindSpore scheduler here")
    return cluster


def scheduler_launch(spec: js.JobSpec, cluster: OperatorCluster, paths: Paths, base_env: Mapping[str, str],
                     *, python: str, device: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of the Scheduler pod's one process: the training script in
    MindSpore's scheduler role, as msrun starts it on its master node (`init()` serves the
    cluster and ends the process when the workers are done; no data is read)."""
    import importlib.util

    script = importlib.util.find_spec("leo_core.train").origin
    cmd = [python, str(script), "--config", str(paths.experiment_file), "--data-root", str(paths.cache),
           "--out", str(paths.work / "scheduler"), "--device", device]
    env = {k: v for k, v in base_env.items() if k != "RANK_TABLE_FILE"}  # not mounted on this pod
    env.update({
        "MS_ROLE": "MS_SCHED",
        "MS_SCHED_HOST": cluster.sched_host,
        "MS_SCHED_PORT": str(cluster.sched_port),
        "MS_WORKER_NUM": str(cluster.worker_num),
        "MS_TOPO_TIMEOUT": str(spec.cluster_timeout),  # what msrun's --cluster_time_out sets
        "RANK_ID": "0",
    })
    return cmd, env


def check_data_root(root: Path, config: Any) -> None:
    """Every split the experiment reads is there (else: bad data_url, exit 2)."""
    base = root / config.dataset_name / config.embedding_crop
    missing = [name for name in ("train", "val", "test")
               if not (base / f"{name}_embeddings.pkl").is_file()]
    if missing:
        raise BadConfig(f"the staged data has no {base.relative_to(root)}/{missing[0]}_embeddings.pkl: "
                        f"data_url does not hold {config.dataset_name} {config.embedding_crop} embeddings")


def resolve_master(addr: str, timeout: float, sleep: Any = time.sleep) -> str:
    """The master's IP address; waits for its DNS name (the headless Service publishes the
    pod's address only once the pod exists)."""
    try:
        return str(ipaddress.ip_address(addr.strip("[]")))
    except ValueError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.getaddrinfo(addr, None, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
        except OSError as err:
            if time.monotonic() >= deadline:
                raise LaunchError(f"the master address {addr} did not resolve within "
                                  f"{timeout:.0f} s: {err}") from err
            sleep(2.0)


def log_every(config: Any) -> int:
    """Progress lines: ten per validation period, at most every 100 steps."""
    return max(1, min(100, config.checkpoint_steps // 10))


def eval_tasks(config: Any, env: Mapping[str, str]) -> int:
    value = env.get(ENV_EVAL_TASKS, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise BadConfig(f"{ENV_EVAL_TASKS}={value!r} is not a positive number")
        return int(value)
    return EVAL_BATCHES * config.metatest_batch_size


def prepare_rank_table(spec: js.JobSpec, node_rank: int, env: Mapping[str, str], master_ip: str,
                       out: Output, *, config_dir: Path | None = None) -> str | None:
    """Ascend: the HCCL rank table's path for msrun (None for NVIDIA and CPU)."""
    if spec.accelerator != "ascend":
        return None
    mode = spec.rank_table
    if mode == "none":  # MindSpore's dynamic cluster builds the communication domain itself
        return None
    if mode == "file":
        path = (config_dir or Path(contract.CONFIG_DIR)) / contract.RANK_TABLE_FILE
        try:
            rt.validate_table(json.loads(path.read_text()), servers=spec.nodes,
                              devices_per_server=spec.cards_per_node)
        except (OSError, ValueError) as err:
            raise BadConfig(f"rank table {path}: {err}") from err
        return str(path)
    if mode == "controller":
        out.node(f"waiting for the hccl-controller to complete {contract.CONTROLLER_RANK_TABLE_PATH}")
        rdv.wait_for_controller_table(contract.CONTROLLER_RANK_TABLE_PATH, servers=spec.nodes,
                                     devices_per_server=spec.cards_per_node,
                                     timeout=spec.cluster_timeout)
        return contract.CONTROLLER_RANK_TABLE_PATH
    # dynamic: every node sends its fragment to node 0's rendezvous
    annotation = env.get(contract.ENV_ASCEND_DEVICES, "").strip()
    if annotation:
        fragment = rt.fragment_from_annotation(annotation, contract.ASCEND_DEVICE_ANNOTATION)
    else:
        server_id = env.get("HOST_IP") or env.get("POD_IP") or master_ip
        visible = env.get("ASCEND_VISIBLE_DEVICES", "").strip()
        devices = rt.parse_visible_devices(visible) if visible else list(range(spec.cards_per_node))
        try:
            text = Path(rt.HCCN_CONF).read_text()
        except OSError as err:
            if spec.ascend_driver_mount == "runtime":  # the pod mounts no hccn.conf then
                raise BadConfig(
                    f"no device-plugin annotation ({contract.ASCEND_DEVICE_ANNOTATION}) to take the NPU "
                    f"IPs from, and --ascend-driver-mount runtime mounts no {rt.HCCN_CONF}: the Ascend "
                    "device plugin must annotate the pods, or use --rank-table controller or an inventory "
                    "file, or --ascend-driver-mount hostpath") from err
            raise BadConfig(f"no device-plugin annotation and cannot read {rt.HCCN_CONF}: "
                            f"{err.strerror or err}") from err
        fragment = rt.fragment_from_hccn_conf(text, server_id, devices)
    out.node(f"exchanging rank-table fragments with {spec.nodes} node(s) via {master_ip}:{spec.ranktable_port}")
    table = rdv.dynamic_table(fragment, job=spec.name, node_rank=node_rank, nodes=spec.nodes,
                             master_addr=master_ip, port=spec.ranktable_port,
                             timeout=spec.cluster_timeout)
    path = Path(contract.DYNAMIC_RANK_TABLE_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rt.dumps(table))
    return str(path)


