"""Every job option declared once: its JobSpec field (the job.yaml key), its flag, help
group, type, bounds and help. argparse (launcher.cli.options), the job.yaml round trip
(JobSpec.to_dict), a job file's merge with flags, and the numeric bounds JobSpec checks
all follow from FIELDS. Adding an option: one Option here, one JobSpec field, and its use.

`flag_only` options (--set, --steps, --profile) are CLI input that `merge` turns into
fields, as it turns --rank-table FILE into the inventory and --pod-overrides FILE into the
fragment it holds; `flag=None` marks a field no flag sets directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher import flavours
from launcher.errors import FieldError, UsageError
from leo_core import profiling

# Help groups, in the order `submit --help` shows them.
GROUPS = ("job", "resources", "storage", "cluster", "scheduling", "security", "admin", "output")

ACCELERATORS = ("ascend", "nvidia", "cpu")
ASCEND_DRIVER_MOUNTS = ("hostpath", "runtime")
NCCL_DEBUG_LEVELS = ("VERSION", "WARN", "INFO", "TRACE")
DEFAULT_MAX_RESTARTS = 3
DEFAULT_MASTER_PORT = 8118  # msrun's default
DEFAULT_CLUSTER_TIMEOUT = 1800  # msrun --cluster_time_out, seconds
DEFAULT_HCCL_CONNECT_TIMEOUT = 1200  # HCCL_CONNECT_TIMEOUT, seconds
DEFAULT_NCCL_SOCKET_IFNAME = "eth0"
IMAGE_ID = 1000  # the images' non-root user and group (build args LEO_UID, LEO_GID)
# Bounds of every numeric option: far above any real job, low enough that no check loops long.
MAX_CARDS = 65536
MAX_NODES = 8192
MAX_STEPS = 10**9
MAX_CLUSTER_TIMEOUT = 7 * 86400
MAX_ID = 2**31 - 1  # Kubernetes' limit for runAsUser, runAsGroup and fsGroup
MAX_SEED = 2**31 - 1
# Pod lifetime (issue 23): finished jobs go after a day (long enough for `logs`; logs are
# published anyway); no deadline unless --max-runtime.
DEFAULT_TTL_AFTER_FINISHED = 86400
MAX_DURATION = 366 * 86400
MAX_IMAGE_PULL_SECRETS = 16


@dataclass(frozen=True)
class Option:
    field: str  # JobSpec attribute and job.yaml key
    flag: str | None  # the long flag (None: set through another option)
    group: str  # one of GROUPS
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    bounds: tuple[int | None, int | None] | None = None  # whole numbers: (min, max)
    required: bool = False
    repeat: bool = False  # repeatable flag
    flag_only: bool = False  # CLI input, not a JobSpec field
    short: str | None = None  # e.g. -n
    omit_if: tuple[Any, ...] = ()  # job.yaml leaves out these values (older bootstraps read it)
    used_by: str = "all"  # which accelerators/backends/flavours use it (help and docs)


def duration(text: str) -> int | str:
    """The type of the duration flags: seconds of 3600, 90s, 30m, 24h or 1d12h
    (launcher.spec.values.parse_duration). `none` and text that is no duration stay text:
    the JobSpec judges them (as a job file's), naming the field the CLI turns into the flag."""
    from launcher.spec.values import parse_duration

    try:
        value = parse_duration(text, "duration", none=True)
    except FieldError:
        return text
    return text if value is None else value


def _cache_size_help() -> str:
    from launcher.spec import disk

    return ("/cache size limit per pod, also its ephemeral-storage (default: measured from --data-url and "
            f"--init at submit, else {disk.DEFAULT_CACHE_SIZE} with remote data, {disk.MIN_CACHE_SIZE} without)")


def _experiments_help() -> str:
    from leo_core.config import experiment_names  # light: the registry, no MindSpore

    return "experiment: " + ", ".join(experiment_names()) + " (leo-launch experiments)"


def _schedulers_help() -> str:
    return "; ".join(f.help for f in flavours.FLAVOURS.values())


def _queue_help() -> str:
    return "; ".join(f"{f.name}: {f.queue_help}" for f in flavours.FLAVOURS.values() if f.queue_help)


Opt = Option
FIELDS: tuple[Option, ...] = (
    Opt("experiment", "--exp", "job", "", metavar="EXP", required=True),
    Opt("accelerator", "--accel", "job", "accelerator of the nodes", choices=ACCELERATORS, required=True,
      metavar="{" + ",".join(ACCELERATORS) + "}"),
    Opt("cards", "--cards", "job", "total cards (NPUs/GPUs; worker processes for cpu) = world size",
      type=int, metavar="N", bounds=(1, MAX_CARDS), required=True),
    Opt("nodes", "--nodes", "job", "nodes, one pod each (default: cards / 8 rounded up); cards must "
      "split evenly, Ascend nodes take 1, 2, 4 or 8", type=int, metavar="M", bounds=(1, MAX_NODES)),
    Opt("name", "--name", "job", "job name, a DNS-1035 label (default: leo-<exp>-<accel><cards>)"),
    Opt("namespace", "--namespace", "cluster", "Kubernetes namespace (default: the kubeconfig "
      "context's, else default)", short="-n"),
    Opt("image", "--image", "job", "training image (default: leo-launch:<accel>; a cluster pulls "
      "REGISTRY/leo-launch:<accel>, see make image-* IMAGE_REPO=...)"),
    Opt("overrides", "--set", "job", "experiment override, repeatable (e.g. metatrain_batch_size=32)",
      metavar="KEY=VALUE", repeat=True),
    Opt("steps", "--steps", "job", "meta-training steps (sets the override num_steps_limit)", type=int,
      metavar="N", bounds=(1, MAX_STEPS), flag_only=True),
    Opt("data_url", "--data-url", "storage", "embeddings: s3://bucket/prefix, obs://..., file:///abs or a path"),
    Opt("train_url", "--train-url", "storage", "outputs (checkpoints, metrics, logs, result.json)"),
    Opt("storage_secret", "--storage-secret", "storage", "Secret with AWS_ACCESS_KEY_ID and "
      "AWS_SECRET_ACCESS_KEY (referenced, never copied)", metavar="SECRET", used_by="k8s"),
    Opt("storage_endpoint", "--storage-endpoint", "storage", "S3/OBS endpoint, e.g. "
      "https://obs.cn-north-4.myhuaweicloud.com", metavar="URL"),
    Opt("storage_region", "--storage-region", "storage", "storage region given to the pods (OBS_REGION, "
      "AWS_REGION); obs:// needs it or --storage-endpoint: https://obs.<region>.myhuaweicloud.com",
      metavar="REGION", omit_if=(None,)),
    Opt("storage_path_style", "--path-style", "storage", "path-style addressing (endpoint/bucket/key) in "
      "the pods", type=bool, omit_if=(None,)),
    Opt("scheduler", "--scheduler", "scheduling", "", choices=flavours.NAMES, used_by="k8s"),
    Opt("rank_table", "--rank-table", "scheduling", "Ascend HCCL rank table: dynamic (default), "
      "controller (hccl-controller or ascend-operator), none (MindSpore's dynamic cluster only) or an "
      "inventory YAML; some schedulers default to another mode", metavar="{dynamic,controller,none,FILE}",
      used_by="ascend"),
    Opt("inventory", None, "scheduling", "the nodes of --rank-table FILE", used_by="ascend"),
    Opt("node_selector", "--node-selector", "scheduling", "node label to require, repeatable",
      metavar="KEY=VALUE", repeat=True, used_by="k8s"),
    Opt("tolerations", "--toleration", "scheduling", "taint to tolerate, repeatable",
      metavar="KEY[=VALUE][:EFFECT]", repeat=True, used_by="k8s"),
    Opt("priority_class", "--priority-class", "scheduling", "PriorityClass of the pods", used_by="k8s"),
    Opt("queue", "--queue", "scheduling", "", used_by="k8s"),
    Opt("max_restarts", "--max-restarts", "scheduling", "restarts of the whole job before it fails "
      f"(default: {DEFAULT_MAX_RESTARTS})", type=int, metavar="N", bounds=(0, 100)),
    Opt("cpu", "--cpu", "resources", "CPU request per pod (default: 4 per card; 1 per cpu worker)",
      metavar="QTY", used_by="k8s"),
    Opt("memory", "--memory", "resources", "memory per pod (default: 16Gi per card; 4Gi per cpu worker)",
      metavar="QTY", used_by="k8s"),
    Opt("shm_size", "--shm-size", "resources", "/dev/shm size per pod (default: 16Gi; 1Gi for cpu)",
      metavar="QTY", used_by="k8s"),
    Opt("master_port", "--master-port", "cluster", f"msrun master port (default: {DEFAULT_MASTER_PORT})",
      type=int, metavar="PORT", bounds=(1024, 65534)),
    Opt("cluster_timeout", "--cluster-timeout", "cluster", "msrun --cluster_time_out (default: "
      f"{DEFAULT_CLUSTER_TIMEOUT})", type=int, metavar="SECONDS", bounds=(1, MAX_CLUSTER_TIMEOUT)),
    Opt("hccl_connect_timeout", "--hccl-connect-timeout", "cluster", "Ascend HCCL_CONNECT_TIMEOUT "
      f"(default: {DEFAULT_HCCL_CONNECT_TIMEOUT})", type=int, metavar="SECONDS", bounds=(1, 7200),
      used_by="ascend"),
    Opt("nccl_socket_ifname", "--nccl-socket-ifname", "cluster", "NVIDIA NCCL_SOCKET_IFNAME (default: "
      f"{DEFAULT_NCCL_SOCKET_IFNAME})", metavar="IFS", used_by="nvidia"),
    Opt("nccl_ib_hca", "--nccl-ib-hca", "cluster", "NVIDIA NCCL_IB_HCA (unset by default)", metavar="HCAS",
      used_by="nvidia"),
    Opt("nccl_debug", "--nccl-debug", "cluster", "NVIDIA NCCL_DEBUG (unset by default)", metavar="LEVEL",
      choices=NCCL_DEBUG_LEVELS, used_by="nvidia"),
    Opt("run_as_user", "--run-as-user", "security", f"user id the pods run as (default: the image's, "
      f"{IMAGE_ID})", type=int, metavar="UID", bounds=(None, MAX_ID), used_by="k8s"),
    Opt("run_as_group", "--run-as-group", "security", f"group id and fsGroup of the pods (default: the "
      f"image's, {IMAGE_ID}; Ascend: the host's HwHiAiUser group)", type=int, metavar="GID",
      bounds=(None, MAX_ID), used_by="k8s"),
    Opt("ascend_driver_mount", "--ascend-driver-mount", "security", "Ascend driver: hostpath mounts the "
      "host's driver and hccn.conf (default; needs a privileged Pod Security namespace); runtime leaves "
      "it to Ascend Docker Runtime (pods pass restricted)", metavar="{" + ",".join(ASCEND_DRIVER_MOUNTS) + "}",
      used_by="ascend"),
    Opt("init_url", "--init", "storage", "initial weights: a .ckpt or .npz file (obs://, s3://, file:// or "
      "a path; this project's or the ModelZoo port's parameter names), staged like --data-url",
      metavar="URL", omit_if=(None,)),
    Opt("keep_checkpoints", "--keep-checkpoints", "storage", "published checkpoints kept under "
      "<train_url>/<job>/checkpoints: the N newest complete ones and those latest/best point at "
      "(default: all)", type=int, metavar="N", bounds=(1, MAX_STEPS), omit_if=(None,)),
    Opt("profile", "--profile", "job", "run MindSpore's profiler on every rank over a few steps after the "
      "two that compile; each node publishes its ranks' op_summary.txt and trace_view.json to "
      "<train_url>/<job>/profile/rank-<r>/ (leo-launch pull NAME --profile)", type=bool, flag_only=True),
    Opt("profile_steps", "--profile-steps", "job", f"steps to profile with --profile (default: "
      f"{profiling.DEFAULT_STEPS}, at most {profiling.MAX_STEPS})", type=int, metavar="N",
      bounds=(1, profiling.MAX_STEPS), omit_if=(None,)),
    Opt("cache_size", "--cache-size", "admin", "", metavar="QTY", omit_if=(None,), used_by="k8s"),
    Opt("ttl_after_finished", "--ttl-after-finished", "admin", "delete the finished job and its pods "
      "after this long (default: 24h; none keeps them)", type=duration, metavar="DURATION",
      bounds=(0, MAX_DURATION), omit_if=(DEFAULT_TTL_AFTER_FINISHED,), used_by="k8s"),
    Opt("max_runtime", "--max-runtime", "admin", "stop the job after this long, e.g. 12h "
      "(activeDeadlineSeconds; default: none)", type=duration, metavar="DURATION", bounds=(1, MAX_DURATION),
      omit_if=(None,), used_by="k8s"),
    Opt("image_pull_secrets", "--image-pull-secret", "admin", "Secret to pull the image with, repeatable "
      "(private registries, SWR)", metavar="SECRET", repeat=True, omit_if=((),), used_by="k8s"),
    Opt("service_account", "--service-account", "admin", "ServiceAccount of the pods (default: the "
      "namespace's)", metavar="NAME", omit_if=(None,), used_by="k8s"),
    Opt("automount_token", "--automount-service-account-token", "admin", "mount the ServiceAccount's API "
      "token into the pods (default: not mounted)", type=bool, omit_if=(False,), used_by="k8s"),
    Opt("pod_overrides", "--pod-overrides", "admin", "YAML fragment of a pod spec deep-merged into every "
      "pod (containers, volumes, env merged by name); fields leo-launch sets are refused (a job file "
      "holds the fragment itself)", metavar="FILE", omit_if=(None,), used_by="k8s"),
    Opt("seed", "--seed", "job", "random seed of the model's initialisation and of the episodes "
      "(default: 0)", type=int, metavar="S", bounds=(0, MAX_SEED), omit_if=(0,)),
    Opt("sweep", None, "job", "the sweep this job is a trial of (set by leo-launch sweep)", omit_if=(None,)),
)
del Opt
BY_FIELD: Mapping[str, Option] = {o.field: o for o in FIELDS}
SPEC_FIELDS = tuple(o for o in FIELDS if not o.flag_only)
# Help texts computed when asked (the registry lists experiments and flavours).
DYNAMIC_HELP: Mapping[str, Callable[[], str]] = {
    "experiment": _experiments_help, "scheduler": _schedulers_help, "queue": _queue_help,
    "cache_size": _cache_size_help}


def help_of(option: Option) -> str:
    return DYNAMIC_HELP[option.field]() if option.field in DYNAMIC_HELP else option.help


def flag_of(field: str) -> str:
    """The flag that sets `field` (the field itself when none does)."""
    option = BY_FIELD.get(field)
    return option.flag if option and option.flag else field


def whole_number(value: Any, field: str) -> int:
    """`value` as an int within the field's declared bounds (FieldError otherwise)."""
    import re

    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"expects a whole number, got {value!r}")
    low, high = BY_FIELD[field].bounds or (None, None)
    if low is not None and value < low:
        raise FieldError(field, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise FieldError(field, f"must be at most {high}, got {value}")
    return value


def merge(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Job-file values `base` (job.yaml keys) overridden by the flags `given` (field → the
    flag's parsed value, only the flags that were given): the JobSpec.from_dict input."""
    from launcher.spec.values import Toleration, parse_node_selectors, parse_rank_table
    from leo_core.config import ConfigError, parse_override

    out = dict(base)
    if not isinstance(out.get("overrides") or {}, Mapping):
        raise FieldError("overrides", "must be a mapping of keys to values")
    overrides = dict(out.get("overrides") or {})
    for item in given.get("overrides", ()):
        try:
            key, text = parse_override(item)
        except ConfigError as err:
            raise UsageError(f"--set: {err}") from err
        overrides[key] = text
    if given.get("steps") is not None:  # after --set: --steps wins
        overrides["num_steps_limit"] = str(whole_number(given["steps"], "steps"))
    for field, value in given.items():
        if field in ("overrides", "steps", "profile", "profile_steps"):
            continue
        if field == "rank_table":
            out["rank_table"], out["inventory"] = parse_rank_table(value)
        elif field == "node_selector":
            out[field] = dict(parse_node_selectors(value))
        elif field == "tolerations":
            out[field] = [Toleration.parse(t).to_dict() for t in value]
        elif field == "pod_overrides" and isinstance(value, str):
            out[field] = _pod_overrides(value)
        else:
            out[field] = value
    if overrides:
        out["overrides"] = overrides
    profile, steps = given.get("profile"), given.get("profile_steps")
    if steps is not None and not profile and out.get("profile_steps") is None:
        raise UsageError("--profile-steps applies with --profile only")
    if steps is not None or (profile and out.get("profile_steps") is None):
        out["profile_steps"] = profiling.DEFAULT_STEPS if steps is None else steps
    return out


def _pod_overrides(path: str) -> Any:
    """--pod-overrides FILE through the bounded reader (one line, exit 2, on a bad file)."""
    import yaml

    from launcher.util.userfile import load_yaml, read_user_file

    text = read_user_file(path, what="--pod-overrides")
    try:
        return load_yaml(text, f"--pod-overrides {path}")
    except yaml.YAMLError as err:
        raise UsageError(f"--pod-overrides {path}: not valid YAML: {str(err).splitlines()[0]}") from None
