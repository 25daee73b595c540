"""JobSpec: one LEO training job, validated and immutable.

A JobSpec is what `render` turns into Kubernetes objects and what the in-pod
bootstrap (`python -m launcher.bootstrap`) and the local backend reload from
`job.yaml`: `to_dict()` / `from_dict()` round-trip through plain YAML-safe data.
It holds names, storage URLs and the *name* of the storage Secret, never
credentials.

The contract between the rendered manifests, the bootstrap and the images (labels,
paths, exit codes) is launcher.spec.contract; import it rather than repeating strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher import flavours
from launcher.errors import FieldError, UsageError
from launcher.spec import fields as fld
from launcher.spec import names as syn
from launcher.spec.contract import (
    ANNOTATION_CARDS,
    ANNOTATION_NODES,
    ANNOTATION_RANK_TABLE,
    ANNOTATION_SCHEDULER,
    APP_NAME,
    LABEL_ACCEL,
    LABEL_APP,
    LABEL_EXPERIMENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_SWEEP,
    MANAGER,
    NODE_RANK_ENV_VARS,
)
from launcher.spec.ranktable import (
    DEVICES_PER_SERVER,
    InventoryNode,
    RankTableError,
    build_table,
    inventory_fragments,
)
from launcher.spec.values import (
    _ACCEL_ALIASES,
    _NCCL_VALUE,
    Toleration,
    _check_node_selector,
    _text_problem,
    endpoint_problem,
    image_problem,
    parse_duration,
    storage_url_problem,
)
from launcher.storage.base import REGION_RE, StorageSettings, redact_endpoint, storage_problem
from launcher.util.userfile import load_yaml
from leo_core import profiling

# ------------------------------------------------------------------ accelerators, images
# Options, their defaults and bounds are declared in launcher.spec.fields; the names below
# are kept for the modules that import them from here.
ACCELERATORS = fld.ACCELERATORS
DEFAULT_IMAGES = {accel: f"leo-launch:{accel}" for accel in ACCELERATORS}
DOCKERFILES = {accel: f"images/{accel}/Dockerfile" for accel in ACCELERATORS}
RESOURCE_NAMES = {"ascend": "huawei.com/Ascend910", "nvidia": "nvidia.com/gpu"}
ASCEND_CARDS_PER_NODE = DEVICES_PER_SERVER  # HCCL's server sizes
MAX_CARDS_PER_NODE = {"ascend": 8, "nvidia": 16, "cpu": 64}
DEFAULT_CARDS_PER_NODE = 8  # --nodes defaults to ceil(cards / 8)
MAX_CARDS, MAX_NODES, MAX_STEPS = fld.MAX_CARDS, fld.MAX_NODES, fld.MAX_STEPS
MAX_CLUSTER_TIMEOUT = fld.MAX_CLUSTER_TIMEOUT
MAX_SEED = fld.MAX_SEED
SCHEDULERS = flavours.NAMES
# none: no rank table, MindSpore's dynamic cluster only (the ascend-operator's env mode)
RANK_TABLE_MODES = ("dynamic", "controller", "file", "none")
NCCL_DEBUG_LEVELS = fld.NCCL_DEBUG_LEVELS
DEFAULT_MASTER_PORT = fld.DEFAULT_MASTER_PORT
DEFAULT_CLUSTER_TIMEOUT = fld.DEFAULT_CLUSTER_TIMEOUT
DEFAULT_HCCL_CONNECT_TIMEOUT = fld.DEFAULT_HCCL_CONNECT_TIMEOUT
DEFAULT_MAX_RESTARTS = fld.DEFAULT_MAX_RESTARTS
DEFAULT_NCCL_SOCKET_IFNAME = fld.DEFAULT_NCCL_SOCKET_IFNAME
# The images' non-root user (build args LEO_UID and LEO_GID, HWHIAIUSER_GID for Ascend):
# the pods run as these ids unless --run-as-user/--run-as-group say otherwise.
IMAGE_USER = dict.fromkeys(ACCELERATORS, fld.IMAGE_ID)
IMAGE_GROUP = dict.fromkeys(ACCELERATORS, fld.IMAGE_ID)
MAX_ID = fld.MAX_ID
# Ascend's driver: hostPath mounts of the host's driver and hccn.conf (MindCluster's samples),
# or nothing, on nodes whose Ascend Docker Runtime injects the driver itself.
ASCEND_DRIVER_MOUNTS = fld.ASCEND_DRIVER_MOUNTS
DEFAULT_ASCEND_DRIVER_MOUNT = "hostpath"
DEFAULT_TTL_AFTER_FINISHED = fld.DEFAULT_TTL_AFTER_FINISHED
MAX_DURATION = fld.MAX_DURATION
MAX_IMAGE_PULL_SECRETS = fld.MAX_IMAGE_PULL_SECRETS

JOBSPEC_VERSION = 1
INIT_SUFFIXES = (".ckpt", ".npz")  # --init: what leo_core.train --init reads
# --profile: steps MindSpore's profiler records on every rank, bounded as leo_core.train
# bounds them (after PROFILE_SKIP steps that compile)
DEFAULT_PROFILE_STEPS = profiling.DEFAULT_STEPS
PROFILE_SKIP = profiling.SKIP_STEPS
MAX_PROFILE_STEPS = profiling.MAX_STEPS

# ------------------------------------------------------------------ the JobSpec

@dataclass(frozen=True)
class JobSpec:
    """One training job. Omitted values (None) are resolved to their defaults."""

    name: str
    experiment: str
    accelerator: str
    cards: int
    nodes: int | None = None
    namespace: str = "default"
    overrides: tuple[tuple[str, str], ...] = ()
    image: str | None = None
    data_url: str | None = None
    train_url: str | None = None
    storage_secret: str | None = None
    storage_endpoint: str | None = None
    storage_region: str | None = None  # OBS_REGION/AWS_REGION of the pods
    storage_path_style: bool | None = None  # LEO_STORAGE_PATH_STYLE of the pods
    init_url: str | None = None  # initial weights (.ckpt or .npz), staged like data_url
    scheduler: str = flavours.DEFAULT
    rank_table: str | None = None  # ascend: dynamic (default; ascendjob: none), controller, file or none
    inventory: tuple[InventoryNode, ...] = ()  # rank_table == "file"
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    priority_class: str | None = None
    queue: str | None = None
    max_restarts: int = DEFAULT_MAX_RESTARTS
    cpu: str | None = None  # per pod
    memory: str | None = None  # per pod
    shm_size: str | None = None  # /dev/shm size limit per pod
    master_port: int = DEFAULT_MASTER_PORT
    cluster_timeout: int = DEFAULT_CLUSTER_TIMEOUT
    hccl_connect_timeout: int = DEFAULT_HCCL_CONNECT_TIMEOUT
    nccl_socket_ifname: str | None = None  # nvidia: default eth0
    nccl_ib_hca: str | None = None
    nccl_debug: str | None = None
    run_as_user: int | None = None  # default: the image's user
    run_as_group: int | None = None  # default: the image's group (also the pods' fsGroup)
    ascend_driver_mount: str | None = None  # ascend: hostpath (default) or runtime
    profile_steps: int | None = None  # --profile: steps every rank profiles; None: no profiler
    cache_size: str | None = None  # /cache sizeLimit; None: launcher.spec.disk's default
    ttl_after_finished: int | None = DEFAULT_TTL_AFTER_FINISHED  # seconds; None: kept forever
    max_runtime: int | None = None  # activeDeadlineSeconds; None: no deadline
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None
    automount_token: bool = False  # automountServiceAccountToken
    pod_overrides: Mapping[str, Any] | None = field(default=None, hash=False)  # merged into every pod
    keep_checkpoints: int | None = None  # published steps kept; None: all
    seed: int = 0  # train.py --seed: the model's initialisation and the episodes drawn
    sweep: str | None = None  # the sweep this job is a trial of (leo-launch sweep)
    _config: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_experiment()
        self._check_accelerator()
        self._check_cards()
        self._check_names()
        self._check_storage()
        self._check_scheduling()
        self._check_resources()
        self._check_cluster()
        self._check_security()
        self._check_profile()
        self._check_admin()
        self._check_sweep()

    # -------------------------------------------------------------- validation
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_experiment(self) -> None:
        from leo_core.config import ConfigError, load_experiment

        if not isinstance(self.experiment, str) or not self.experiment:
            raise FieldError("experiment", "is required (see leo-launch experiments)")
        overrides = tuple((str(k), _override_text(v)) for k, v in _pairs(self.overrides, "overrides"))
        self._set("overrides", tuple(dict(overrides).items()))  # last one wins
        for key, value in self.overrides:
            if _text_problem(value):
                raise UsageError(f"--set {key}: value {_text_problem(value)}")
        try:
            config = load_experiment(self.experiment, [f"{k}={v}" for k, v in self.overrides])
        except ConfigError as err:
            raise UsageError(str(err)) from err
        self._set("_config", config)

    def _check_accelerator(self) -> None:
        if self.accelerator not in ACCELERATORS:
            text = str(self.accelerator).lower()
            close = [_ACCEL_ALIASES[text]] if text in _ACCEL_ALIASES else \
                difflib.get_close_matches(text, ACCELERATORS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown accelerator {self.accelerator!r}{hint}; "
                             f"choose {', '.join(ACCELERATORS)}")

    def _check_cards(self) -> None:
        cards = _int(self.cards, "cards")
        nodes = self.nodes
        if nodes is None:
            nodes = math.ceil(cards / DEFAULT_CARDS_PER_NODE)
        nodes = _int(nodes, "nodes")
        self._set("nodes", nodes)
        if nodes > cards:
            raise UsageError(f"--nodes {nodes} exceeds --cards {cards}: every node needs at least one card")
        if cards % nodes:
            raise UsageError(f"{cards} cards do not split evenly across {nodes} nodes; "
                             f"{self._split_hint(cards)}")
        per_node = cards // nodes
        if self.accelerator == "ascend" and per_node not in ASCEND_CARDS_PER_NODE:
            raise UsageError(f"Ascend nodes take 1, 2, 4 or 8 cards each, not {per_node} "
                             f"({cards} cards on {nodes} nodes); {self._split_hint(cards)}")
        limit = MAX_CARDS_PER_NODE[self.accelerator]
        if per_node > limit:
            raise UsageError(f"{per_node} cards per node is more than {limit} for {self.accelerator}; "
                             f"{self._split_hint(cards)}")
        batch = self._config.metatrain_batch_size
        if cards > batch:
            unit = "worker processes" if self.accelerator == "cpu" else "cards"
            raise UsageError(
                f"{cards} {unit} exceed metatrain_batch_size {batch} of {self.experiment}: the "
                f"global meta-batch is split across ranks; use fewer cards or "
                f"--set metatrain_batch_size={cards}")

    def _split_hint(self, cards: int) -> str:
        limit = MAX_CARDS_PER_NODE[self.accelerator]
        options = [n for n in range(1, cards + 1) if cards % n == 0 and cards // n <= limit
                   and (self.accelerator != "ascend" or cards // n in ASCEND_CARDS_PER_NODE)]
        if not options:
            return "choose a card count that is a multiple of 1, 2, 4 or 8 per node"
        return f"try --nodes {' or '.join(str(n) for n in options[:3])}"

    def _check_names(self) -> None:
        for problem in flavours.flavour_of(self.scheduler).spec_problems(self):
            raise UsageError(problem)
        if not isinstance(self.name, str):
            raise FieldError("name", "must be a string")
        longest = max((self.pod_hostname(self.nodes - 1), self.scheduler_hostname or ""), key=len)
        suffix = len(longest) - len(self.name)
        problem = syn.dns1035_label_problem(self.name, 63 - suffix)
        if problem:
            why = f" (pod host names {longest.replace(self.name, '<name>', 1)} must fit 63)" \
                if "characters" in problem else ""
            raise FieldError("name", f"{self.name!r} {problem}{why}")
        if not isinstance(self.namespace, str):
            raise FieldError("namespace", "must be a string")
        problem = syn.dns1123_label_problem(self.namespace)
        if problem:
            raise FieldError("namespace", f"{self.namespace!r} {problem}")
        image = DEFAULT_IMAGES[self.accelerator] if self.image is None else self.image
        problem = image_problem(image) if isinstance(image, str) else "must be a string"
        if problem:
            raise FieldError("image", f"{image!r} {problem}")
        self._set("image", image)

    def _check_storage(self) -> None:
        for attr in ("data_url", "train_url"):
            value = getattr(self, attr)
            if value is not None:
                problem = storage_url_problem(value) if isinstance(value, str) else "must be a string"
                if problem:
                    raise FieldError(attr, f"{value!r}: {problem}")
        if self.storage_secret is not None:
            problem = _name_problem(self.storage_secret, syn.dns1123_subdomain_problem)
            if problem:
                raise FieldError("storage_secret", f"{self.storage_secret!r} {problem} (a Secret name)")
        if self.init_url is not None:
            value = self.init_url
            problem = storage_url_problem(value) if isinstance(value, str) else "must be a string"
            if not problem and not value.lower().endswith(INIT_SUFFIXES):
                problem = "must name a .ckpt or .npz file (this project's or the ModelZoo port's names)"
            if problem:
                raise FieldError("init_url", f"{value!r}: {problem}")
        if self.storage_endpoint is not None:
            value = self.storage_endpoint
            problem = endpoint_problem(value) if isinstance(value, str) else "must be a string"
            if problem:
                raise FieldError("storage_endpoint", f"{redact_endpoint(value)!r} {problem}")
        if self.storage_region is not None and not (isinstance(self.storage_region, str)
                                                    and REGION_RE.match(self.storage_region)):
            raise FieldError("storage_region", f"{self.storage_region!r}: a region is 2-40 lowercase "
                             "letters, digits and '-' (e.g. cn-north-4)")
        if self.keep_checkpoints is not None:
            self._set("keep_checkpoints", _int(self.keep_checkpoints, "keep_checkpoints"))
        if self.storage_path_style is not None and not isinstance(self.storage_path_style, bool):
            raise FieldError("storage_path_style", "must be true or false")

    def _check_scheduling(self) -> None:
        self._set("node_selector", _pairs(self.node_selector, "node_selector"))
        _check_node_selector(self.node_selector)
        tolerations = tuple(t if isinstance(t, Toleration) else Toleration.from_dict(t)
                            for t in self.tolerations)
        for tol in tolerations:
            tol.check(f"--toleration {tol.key!r}")
        self._set("tolerations", tolerations)
        if self.priority_class is not None:
            problem = _name_problem(self.priority_class, syn.dns1123_subdomain_problem)
            if problem:
                raise FieldError("priority_class", f"{self.priority_class!r} {problem}")
        if self.queue is not None:
            problem = _name_problem(self.queue, syn.dns1123_label_problem)
            if problem:
                raise FieldError("queue", f"{self.queue!r} {problem}")
        self._set("max_restarts", _int(self.max_restarts, "max_restarts"))
        self._check_rank_table()

    def _check_rank_table(self) -> None:
        mode = self.rank_table
        if self.accelerator != "ascend":
            if mode is not None:
                raise UsageError(f"--rank-table applies to --accel ascend only, not {self.accelerator}")
            if self.inventory:
                raise UsageError("an inventory is for Ascend rank tables only")
            return
        flavour = self.flavour
        mode = mode or flavour.default_rank_table
        if mode not in RANK_TABLE_MODES:
            raise UsageError(f"unknown rank-table mode {mode!r}; use dynamic, controller, none or an inventory file")
        if flavour.rank_table_modes is not None and mode not in flavour.rank_table_modes:
            raise UsageError(f"--rank-table {mode} does not work with --scheduler {flavour.name} "
                             f"({flavour.rank_table_why}); use {', '.join(flavour.rank_table_modes)}")
        self._set("rank_table", mode)
        inventory = tuple(n if isinstance(n, InventoryNode) else InventoryNode.from_dict(n, "inventory node")
                          for n in self.inventory)
        self._set("inventory", inventory)
        if mode == "controller" and not flavour.controller_rank_table:
            able = [f.name for f in flavours.FLAVOURS.values() if f.controller_rank_table]
            raise UsageError(f"--rank-table controller needs --scheduler {' or '.join(able)} "
                             "(the hccl-controller or the ascend-operator fills rings-config)")
        if mode != "file":
            if inventory:
                raise UsageError(f"an inventory is only used with --rank-table FILE, not {mode}")
            return
        if len(inventory) != self.nodes:
            raise UsageError(f"the inventory lists {len(inventory)} nodes but the job has {self.nodes}; "
                             f"use --nodes {len(inventory)} or an inventory of {self.nodes} nodes")
        for node in inventory:
            if len(node.device_ips) != self.cards_per_node:
                raise UsageError(f"inventory node {node.name} lists {len(node.device_ips)} devices but the "
                                 f"job uses {self.cards_per_node} cards per node")

        try:
            build_table(inventory_fragments(inventory))
        except RankTableError as err:
            raise UsageError(f"inventory: {err}") from err

    def _check_resources(self) -> None:
        per_node = self.cards_per_node
        if self.accelerator == "cpu":
            defaults = (str(per_node), f"{4 * per_node}Gi", "1Gi")
        else:
            defaults = (str(4 * per_node), f"{16 * per_node}Gi", "16Gi")
        for attr, default in zip(("cpu", "memory", "shm_size"), defaults, strict=True):
            value = getattr(self, attr)
            value = default if value is None else value
            if not syn.is_quantity(value) or syn.parse_quantity(value) <= 0:
                raise FieldError(attr, f"{value!r} is not a positive Kubernetes quantity (e.g. 8, 500m, 16Gi)")
            self._set(attr, value)

    def _check_cluster(self) -> None:
        self._set("master_port", _int(self.master_port, "master_port"))
        self._set("cluster_timeout", _int(self.cluster_timeout, "cluster_timeout"))
        self._set("hccl_connect_timeout",
                  _int(self.hccl_connect_timeout, "hccl_connect_timeout"))
        nccl = {"--nccl-socket-ifname": self.nccl_socket_ifname, "--nccl-ib-hca": self.nccl_ib_hca}
        if self.accelerator != "nvidia":
            given = next((flag for flag, value in {**nccl, "--nccl-debug": self.nccl_debug}.items()
                          if value is not None), None)
            if given:
                raise UsageError(f"{given} applies to --accel nvidia only")
            return
        if self.nccl_socket_ifname is None:
            self._set("nccl_socket_ifname", DEFAULT_NCCL_SOCKET_IFNAME)
            nccl["--nccl-socket-ifname"] = DEFAULT_NCCL_SOCKET_IFNAME
        for flag, value in nccl.items():
            if value is not None and (not isinstance(value, str) or not _NCCL_VALUE.fullmatch(value)):
                raise UsageError(f"{flag} {value!r} must be interface names such as eth0, ^lo,docker or mlx5_0:1")
        if self.nccl_debug is not None and self.nccl_debug not in NCCL_DEBUG_LEVELS:
            raise FieldError("nccl_debug", f"must be one of {', '.join(NCCL_DEBUG_LEVELS)}")

    def _check_security(self) -> None:
        # 0 is root: runAsNonRoot refuses uid 0, and gid 0 would open root-group files
        for attr, default in (("run_as_user", IMAGE_USER), ("run_as_group", IMAGE_GROUP)):
            value = getattr(self, attr)
            value = _int(default[self.accelerator] if value is None else value, attr)
            if value < 1:
                raise FieldError(attr, f"{value}: the pods run as non-root; give the image's "
                                 f"non-root {'user' if attr == 'run_as_user' else 'group'} id (1 or more)")
            self._set(attr, value)
        mount = self.ascend_driver_mount
        if self.accelerator != "ascend":
            if mount is not None:
                raise UsageError(f"--ascend-driver-mount applies to --accel ascend only, not {self.accelerator}")
            return
        mount = DEFAULT_ASCEND_DRIVER_MOUNT if mount is None else mount
        if mount not in ASCEND_DRIVER_MOUNTS:
            raise FieldError("ascend_driver_mount", f"{mount!r}: choose hostpath (the host's driver "
                             "and hccn.conf) or runtime (nodes with Ascend Docker Runtime)")
        self._set("ascend_driver_mount", mount)

    def _check_profile(self) -> None:
        if self.profile_steps is not None:
            self._set("profile_steps", _int(self.profile_steps, "profile_steps"))

    def _check_admin(self) -> None:
        """Disk, lifetime, registry access, service account, pod overrides (issue 23)."""
        from launcher.spec import disk, overrides

        if self.cache_size is not None:
            problem = disk.size_problem(self.cache_size)
            if problem:
                raise FieldError("cache_size", f"{self.cache_size!r} {problem}")
        for attr, none in (("ttl_after_finished", True), ("max_runtime", False)):
            value = getattr(self, attr)
            if isinstance(value, str):  # a job file's or a flag's duration text (24h, none)
                value = parse_duration(value, attr, none=none)
            self._set(attr, None if value is None else _int(value, attr))
        secrets = self.image_pull_secrets or ()
        if isinstance(secrets, str):
            secrets = (secrets,)
        secrets = tuple(secrets)
        if len(secrets) > MAX_IMAGE_PULL_SECRETS:
            raise FieldError("image_pull_secrets", f"takes at most {MAX_IMAGE_PULL_SECRETS} Secrets")
        for name in secrets:
            problem = _name_problem(name, syn.dns1123_subdomain_problem)
            if problem:
                raise FieldError("image_pull_secrets", f"{name!r} {problem} (a Secret name)")
        self._set("image_pull_secrets", tuple(dict.fromkeys(secrets)))
        if self.service_account is not None:
            problem = _name_problem(self.service_account, syn.dns1123_subdomain_problem)
            if problem:
                raise FieldError("service_account", f"{self.service_account!r} {problem}")
        if not isinstance(self.automount_token, bool):
            raise FieldError("automount_token", "must be true or false")
        if self.pod_overrides is not None:
            overrides.check(self.pod_overrides)

    def _check_sweep(self) -> None:
        self._set("seed", _int(self.seed, "seed"))
        if self.sweep is not None:
            problem = _name_problem(self.sweep, syn.dns1035_label_problem)
            if problem:
                raise UsageError(f"sweep name {self.sweep!r} {problem}")

    # -------------------------------------------------------------- derived values
    @property
    def cards_per_node(self) -> int:
        return self.cards // self.nodes

    @property
    def world_size(self) -> int:
        return self.cards

    @property
    def resource_name(self) -> str | None:
        return RESOURCE_NAMES.get(self.accelerator)

    @property
    def service_name(self) -> str:
        """The headless Service (batch Job) or Volcano svc-plugin Service of the pods."""
        return self.name

    @property
    def flavour(self) -> flavours.Flavour:
        """The job flavour of `scheduler` (launcher.flavours): what kind runs the pods."""
        return flavours.flavour_of(self.scheduler)

    def pod_hostname(self, node_rank: int) -> str:
        return self.flavour.pod_hostname(self, node_rank)

    @property
    def scheduler_hostname(self) -> str | None:
        """A pod of its own for MindSpore's scheduler role (its flavour's), if any."""
        return self.flavour.scheduler_hostname(self)

    @property
    def master_addr(self) -> str:
        """Where the pods find MindSpore's scheduler (the flavour decides)."""
        return self.flavour.master_addr(self)

    @property
    def ranktable_port(self) -> int:
        return self.master_port + 1

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-config"

    @property
    def rings_config_name(self) -> str:
        return f"rings-config-{self.name}"

    @property
    def uses_rings_config(self) -> bool:
        return self.accelerator == "ascend" and (self.flavour.rings_config_always or self.rank_table == "controller")

    def inventory_rank(self, node_name: str) -> int:
        """FILE rank-table mode: a pod's node rank is its node's position in the inventory
        (the static table orders servers that way), not its completion index."""
        for index, node in enumerate(self.inventory):
            if node.name == node_name:
                return index
        raise UsageError(f"node {node_name!r} is not in the job's inventory")

    def experiment_config(self) -> Any:
        """The resolved `leo_core.config.ExperimentConfig` (registry + overrides)."""
        return self._config

    def labels(self) -> dict[str, str]:
        labels = {LABEL_APP: APP_NAME, LABEL_MANAGED_BY: MANAGER, LABEL_JOB: self.name,
                  LABEL_EXPERIMENT: self.experiment, LABEL_ACCEL: self.accelerator}
        if self.sweep:
            labels[LABEL_SWEEP] = self.sweep
        return labels

    def annotations(self) -> dict[str, str]:
        out = {ANNOTATION_CARDS: str(self.cards), ANNOTATION_NODES: str(self.nodes),
               ANNOTATION_SCHEDULER: self.scheduler}
        if self.rank_table:
            out[ANNOTATION_RANK_TABLE] = self.rank_table
        return out

    def msrun_args(self, node_rank: int, *, log_dir: str, master_addr: str | None = None,
                   rank_table_file: str | None = None) -> list[str]:
        """msrun's arguments for this node (the bootstrap appends the script and its args)."""
        if not 0 <= node_rank < self.nodes:
            raise UsageError(f"node rank {node_rank} is outside 0..{self.nodes - 1}")
        args = ["--worker_num", str(self.world_size), "--local_worker_num", str(self.cards_per_node),
                "--master_addr", master_addr or self.master_addr, "--master_port", str(self.master_port),
                "--node_rank", str(node_rank), "--log_dir", log_dir, "--join", "True",
                "--cluster_time_out", str(self.cluster_timeout)]
        if rank_table_file:
            args += ["--rank_table_file", rank_table_file]
        return args

    # -------------------------------------------------------------- storage
    @property
    def storage(self) -> StorageSettings:
        return StorageSettings(self.storage_endpoint, self.storage_region, self.storage_path_style)

    def check_reachable(self, environ: Mapping[str, str]) -> None:
        """Refuse (UsageError) storage URLs a process with `environ` and this job's settings
        could not resolve: render/submit (with the pods' environment, i.e. none), the local
        backend and the bootstrap share this check."""
        problem = storage_problem([self.data_url, self.train_url, self.init_url], self.storage, environ)
        if problem:
            raise UsageError(problem)

    # -------------------------------------------------------------- plain data
    def to_dict(self) -> dict[str, Any]:
        """job.yaml: every field of launcher.spec.fields in its order."""
        out: dict[str, Any] = {"version": JOBSPEC_VERSION}
        for option in fld.SPEC_FIELDS:
            value = getattr(self, option.field)
            if value in option.omit_if:
                continue  # a job.yaml without it stays readable by older bootstraps (images)
            if option.field in ("overrides", "node_selector"):
                value = dict(value)
            elif option.field in ("inventory", "tolerations"):
                value = [item.to_dict() for item in value]
            elif option.field == "image_pull_secrets":
                value = list(value)
            out[option.field] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        if not isinstance(data, Mapping):
            raise UsageError("a job spec must be a mapping")
        values = dict(data)
        version = values.pop("version", JOBSPEC_VERSION)
        if version != JOBSPEC_VERSION:
            raise UsageError(f"job spec version {version!r} is not supported (expected {JOBSPEC_VERSION})")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown job spec key {unknown[0]!r}{hint}")
        for key in ("overrides", "node_selector"):
            if key in values:
                values[key] = _pairs(values[key], key)
        if "tolerations" in values:
            values["tolerations"] = tuple(Toleration.from_dict(t) for t in values["tolerations"] or ())
        if "image_pull_secrets" in values:
            values["image_pull_secrets"] = tuple(values["image_pull_secrets"] or ())
        if "inventory" in values:
            values["inventory"] = tuple(n if isinstance(n, InventoryNode) else
                                        InventoryNode.from_dict(n, "inventory node")
                                        for n in values["inventory"] or ())
        return cls(**values)

    def to_yaml(self) -> str:
        import yaml

        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(self.to_dict(), Dumper=dumper, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str) -> JobSpec:
        import yaml

        try:
            data = load_yaml(text, "job spec")  # depth-bounded: a crafted job.yaml cannot crash us
        except yaml.YAMLError as err:
            raise UsageError(f"job spec is not valid YAML: {str(err).splitlines()[0]}") from err
        return cls.from_dict(data)


def build_job_spec(*, set_overrides: Iterable[str] = (), node_selectors: Iterable[str] = (),
                   tolerations: Iterable[str] = (), **values: Any) -> JobSpec:
    """A JobSpec from command-line style values (`--set k=v`, `--toleration k=v:Effect`,
    `--profile [--profile-steps N]`, `--steps N`, `--rank-table FILE`, ...)."""
    given = {k: v for k, v in values.items() if v is not None and v is not False}
    if "ttl_after_finished" in values and values["ttl_after_finished"] is None:
        given["ttl_after_finished"] = None  # a choice here, not unset: keep the finished job
    for key, items in (("overrides", set_overrides), ("node_selector", node_selectors),
                         ("tolerations", tolerations)):
        if items:
            given[key] = list(items)
    return spec_from_values({}, given)


def spec_from_values(base: Mapping[str, Any], given: Mapping[str, Any]) -> JobSpec:
    """A job file's values `base` (job.yaml keys) overridden by the flags `given` (field →
    parsed flag value; launcher.spec.fields.merge)."""
    values = fld.merge(base, given)
    missing = tuple(o.field for o in fld.FIELDS if o.required and values.get(o.field) is None)
    if missing:
        raise FieldError(missing, f"{'is' if len(missing) == 1 else 'are'} required (or a job file "
                         "that sets them)")
    if values.get("name") is None:
        values["name"] = default_name(values["experiment"], values["accelerator"], values["cards"])
    return JobSpec.from_dict(values)


def default_name(experiment: str, accelerator: str, cards: int) -> str:
    """`leo-mini-5shot-ascend16`: deterministic, so re-rendering gives the same objects."""
    return f"leo-{str(experiment).replace('_', '-').lower()}-{accelerator}{cards}"


def node_rank_from_env(environ: Mapping[str, str]) -> int:
    """This pod's node rank from the first of NODE_RANK_ENV_VARS that is set."""
    for var in NODE_RANK_ENV_VARS:
        value = environ.get(var, "")
        if value.strip():
            if not value.strip().isdigit():
                raise UsageError(f"{var}={value!r} is not a node rank")
            return int(value)
    raise UsageError(f"no node rank: none of {', '.join(NODE_RANK_ENV_VARS)} is set")


def _int(value: Any, field: str) -> int:
    return fld.whole_number(value, field)


def _name_problem(value: Any, rule: Any) -> str | None:
    return rule(value) if isinstance(value, str) else "must be a string"


def _pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        try:
            items = [tuple(item) for item in value]
        except TypeError as err:
            raise UsageError(f"{what} must be a mapping of keys to values") from err
    if any(len(item) != 2 or not isinstance(item[0], str) for item in items):
        raise UsageError(f"{what} must be a mapping of keys to values")
    return tuple((k, v) for k, v in items)


def _override_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise UsageError(f"override value {value!r} must be a string or number")
