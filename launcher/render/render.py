"""Render a JobSpec into Kubernetes objects with the Jinja2 templates in k8s_templates/.

Templates are data: `StrictUndefined`, no autoescape, and every interpolated
value must go through the `q` filter, which writes a double-quoted YAML scalar
(or a JSON-style flow collection of them). `finalize` refuses any `{{ value }}`
that skipped the filter, so a value can never become YAML structure (no
injection through names, labels, URLs or overrides). The rendered text is parsed
back with the safe loader and the resulting objects are what gets validated,
printed and submitted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher import flavours
from launcher.errors import LaunchError, UsageError
from launcher.spec import contract, disk, overrides, podsecurity, ranktable
from launcher.spec.fields import flag_of
from launcher.spec.jobspec import JobSpec
from launcher.spec.ranktable import HCCN_CONF
from launcher.storage.base import parse_url
from launcher.util.files import atomic_write

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "k8s_templates"
PODINFO_DIR = "/etc/podinfo"  # downward-API volume: files `annotations`, `labels`
GRACE_SECONDS = 60  # time for rank 0 to publish its last checkpoint
_KINDS = sorted({"configmap", "service", *(flavours.describe_kind(*f.api).lower() for f in flavours.FLAVOURS.values())})
_MANIFEST_FILE = re.compile(rf"\d\d-({'|'.join(_KINDS)})-.+\.yaml")


class Quoted(str):
    """Text produced by the `q` filter: safe to paste as one YAML value."""


def yaml_quote(value: Any) -> Quoted:
    """The `q` filter: a value as a double-quoted/flow scalar valid in YAML 1.1 and JSON.

    Strings are double-quoted with every character outside printable ASCII
    escaped (newlines, tabs, BMP Unicode as \\uXXXX), so quotes, `{{ }}`, `!!tags`, `#`, `&`,
    `*` and `---` stay literal text. Lists and mappings become flow collections
    of quoted items; ints, bools and None stay typed. Floats are refused:
    manifests carry quantities as strings.
    """
    fail = getattr(value, "_fail_with_undefined_error", None)  # jinja2's StrictUndefined
    if fail is not None:
        fail()
    return Quoted(_quote(value))


def _quote(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote_str(value)
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, got {key!r}")
            items.append(f"{_quote_str(key)}: {_quote(item)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_quote(item) for item in value) + "]"
    raise TypeError(f"cannot quote a {type(value).__name__} into a manifest: {value!r}")


def _quote_str(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"text {text!r} holds an unpaired surrogate (not valid UTF-8)")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)  # printable in YAML and JSON; \U escapes are not JSON
    out.append('"')
    return "".join(out)


def _finalize(value: Any) -> Any:
    if isinstance(value, Quoted):
        return value
    raise TypeError(f"template printed {value!r} without the q filter")


@functools.cache
def environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["q"] = yaml_quote
    return env


# ----------------------------------------------------------------------------- context

def _value(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "kind": "value", "value": str(value)}


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "kind": "field", "field": path}


def _secret(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "kind": "secret", "secret": secret, "key": key}


def pod_environment(spec: JobSpec) -> list[dict[str, Any]]:
    """The container's environment: cluster settings, downward API, storage, NCCL/HCCL."""
    env = [
        _value("PYTHONUNBUFFERED", "1"),
        _value("GLOG_v", "2"),
        _value(contract.ENV_JOB_NAME, spec.name),
        _field(contract.ENV_NAMESPACE, "metadata.namespace"),
        _value(contract.ENV_CONFIG_DIR, contract.CONFIG_DIR),
        _value(contract.ENV_ACCELERATOR, spec.accelerator),
        _value(contract.ENV_NODES, spec.nodes),
        _value(contract.ENV_WORLD_SIZE, spec.world_size),
        _value(contract.ENV_CARDS_PER_NODE, spec.cards_per_node),
    ]
    if spec.flavour.rank_annotation:  # else its controller gives the index its own way
        env.append(_field(contract.ENV_NODE_RANK, f"metadata.annotations['{spec.flavour.rank_annotation}']"))
    env += [
        _value(contract.ENV_MASTER_ADDR, spec.master_addr),
        _value(contract.ENV_MASTER_PORT, spec.master_port),
        _value(contract.ENV_CLUSTER_TIMEOUT, spec.cluster_timeout),
        _value(contract.ENV_CACHE_DIR, contract.CACHE_DIR),
        _field("POD_NAME", "metadata.name"),
        _field("POD_IP", "status.podIP"),
        _field("HOST_IP", "status.hostIP"),
        _field("NODE_NAME", "spec.nodeName"),
    ]
    if spec.data_url is not None:
        env.append(_value(contract.ENV_DATA_URL, spec.data_url))
    if spec.train_url is not None:
        env.append(_value(contract.ENV_TRAIN_URL, spec.train_url))
    if spec.storage_endpoint is not None:
        env.append(_value("AWS_ENDPOINT_URL", spec.storage_endpoint))
    if spec.storage_region is not None:  # both names: obs:// reads the first, boto3 the second
        env += [_value("OBS_REGION", spec.storage_region), _value("AWS_REGION", spec.storage_region)]
    if spec.storage_path_style is not None:
        env.append(_value("LEO_STORAGE_PATH_STYLE", "1" if spec.storage_path_style else "0"))
    if spec.storage_secret is not None:
        env += [_secret(key, spec.storage_secret, key) for key in contract.SECRET_KEYS]
    if spec.accelerator == "ascend":
        table_path = {"file": contract.FILE_RANK_TABLE_PATH, "controller": contract.CONTROLLER_RANK_TABLE_PATH,
                      "dynamic": contract.DYNAMIC_RANK_TABLE_PATH, "none": None}[spec.rank_table]
        env.append(_value(contract.ENV_RANK_TABLE_MODE, spec.rank_table))
        if table_path is not None:
            env.append(_value("RANK_TABLE_FILE", table_path))
        env += [
            _value("HCCL_CONNECT_TIMEOUT", spec.hccl_connect_timeout),
            _field("HCCL_IF_IP", "status.podIP"),
            _field(contract.ENV_ASCEND_DEVICES, f"metadata.annotations['{contract.ASCEND_DEVICE_ANNOTATION}']"),
        ]
        if spec.rank_table == "dynamic":
            env.append(_value(contract.ENV_RANKTABLE_PORT, spec.ranktable_port))
    elif spec.accelerator == "nvidia":
        env.append(_value("NCCL_SOCKET_IFNAME", spec.nccl_socket_ifname))
        if spec.nccl_ib_hca is not None:
            env.append(_value("NCCL_IB_HCA", spec.nccl_ib_hca))
        if spec.nccl_debug is not None:
            env.append(_value("NCCL_DEBUG", spec.nccl_debug))
    return env


def _resources(spec: JobSpec) -> tuple[dict[str, str], dict[str, str]]:
    _, ephemeral = disk.pod_disk(spec)
    requests = {"cpu": spec.cpu, "memory": spec.memory, "ephemeral-storage": ephemeral}
    if spec.accelerator == "cpu":
        return requests, dict(requests)
    limits = {"memory": spec.memory, "ephemeral-storage": ephemeral}
    requests[spec.resource_name] = limits[spec.resource_name] = str(spec.cards_per_node)
    return requests, limits


def _tolerations(spec: JobSpec) -> list[dict[str, Any]]:
    tolerations = [{"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}
                   for t in spec.tolerations]
    resource = spec.resource_name
    if resource and not any(t.key == resource for t in spec.tolerations):
        # accelerator nodes are commonly tainted with their resource name
        tolerations.append({"key": resource, "operator": "Exists", "value": None,
                            "effect": "NoSchedule"})
    return tolerations


def _config_data(spec: JobSpec) -> dict[str, str]:
    import yaml

    data = {
        contract.JOB_FILE: spec.to_yaml(),
        contract.EXPERIMENT_FILE: yaml.dump(spec.experiment_config().to_dict(), sort_keys=False,
                                      Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)),
    }
    if spec.rank_table == "file":
        data[contract.RANK_TABLE_FILE] = ranktable.dumps(
            ranktable.build_table(ranktable.inventory_fragments(spec.inventory)))
    return data


def context(spec: JobSpec) -> dict[str, Any]:
    """Everything the templates use; plain values only."""
    labels = spec.labels()
    selector = {contract.LABEL_JOB: spec.name}
    pod_labels = dict(labels)
    job_labels = dict(labels)
    if spec.uses_rings_config:
        key, value = contract.RINGS_CONFIG_LABEL
        pod_labels[key] = job_labels[key] = value
    flavour = spec.flavour
    if spec.queue is not None and flavour.kueue_queue:
        job_labels[contract.KUEUE_QUEUE_LABEL] = spec.queue  # Kueue admits the job from this queue
    ports = [{"name": flavour.port_name, "port": spec.master_port}]
    if spec.rank_table == "dynamic":
        ports.append({"name": "ranktable", "port": spec.ranktable_port})
    requests, limits = _resources(spec)
    host_paths = podsecurity.host_path_mounts(spec)  # the pods' Pod Security level depends on them
    ctx = {
        "job": spec,
        "labels": labels,
        "job_labels": job_labels,
        "pod_labels": pod_labels,
        "selector": selector,
        "annotations": spec.annotations(),
        "container": {"name": flavour.container or contract.CONTAINER_NAME,
                      "command": list(contract.BOOTSTRAP_COMMAND)},
        "env": pod_environment(spec),
        "ports": ports,
        "requests": requests,
        "limits": limits,
        "tolerations": _tolerations(spec),
        "node_selector": dict(spec.node_selector),
        "pinned_nodes": [node.name for node in spec.inventory],
        "subdomain": spec.service_name if flavour.own_service else None,
        "scheduler_name": flavour.scheduler_name,
        "grace_seconds": GRACE_SECONDS,
        # A job restart usually fails every pod once, so the budget is per node.
        "backoff_limit": spec.max_restarts * spec.nodes,
        "non_retriable_exit_codes": list(contract.NON_RETRIABLE_EXIT_CODES),
        "paths": {"config": contract.CONFIG_DIR, "podinfo": PODINFO_DIR, "shm": contract.SHM_DIR,
                  "cache": contract.CACHE_DIR, "ascend_driver": contract.ASCEND_DRIVER_DIR,
                  "hccn_conf": HCCN_CONF, "rings_config": contract.CONTROLLER_RANK_TABLE_DIR},
        "mounts": {"ascend_driver": contract.ASCEND_DRIVER_DIR in host_paths,
                   "hccn_conf": HCCN_CONF in host_paths,
                   "rings_config": spec.uses_rings_config},
        "security": {"pod": podsecurity.pod_security_context(spec),
                     "container": podsecurity.container_security_context(spec)},
    }
    # the one pod per node of the shared pod template (a flavour may make others)
    ctx["pod"] = {"labels": pod_labels, "env": ctx["env"], "requests": requests, "limits": limits,
                  "npu": True, "restart_policy": "Never", "subdomain": ctx["subdomain"],
                  "scheduler_name": ctx["scheduler_name"], "anti_affinity": selector,
                  "node_selector": ctx["node_selector"], "tolerations": ctx["tolerations"],
                  "pinned_nodes": ctx["pinned_nodes"], "cache_size": disk.pod_disk(spec)[0],
                  "deadline": spec.max_runtime if flavour.deadline_in_pods else None}
    ctx.update(flavour.template_context(spec, ctx))
    return ctx


# ----------------------------------------------------------------------------- rendering

def render(spec: JobSpec) -> list[dict[str, Any]]:
    """The Kubernetes objects of `spec`, in creation order (not yet validated)."""
    ctx = context(spec)
    configmaps = [{"name": spec.config_map_name, "labels": ctx["labels"], "data": _config_data(spec)}]
    if spec.uses_rings_config:
        key, value = contract.RINGS_CONFIG_LABEL
        configmaps.append({"name": spec.rings_config_name, "labels": {**ctx["labels"], key: value},
                           "data": {contract.RANK_TABLE_FILE: '{"status":"initializing"}'}})
    objects = [render_template("configmap.yaml.j2", ctx, configmap=cm) for cm in configmaps]
    if spec.flavour.own_service:  # else its controller makes one
        objects.append(render_template("service.yaml.j2", ctx))
    job = render_template(spec.flavour.template, ctx)
    if spec.pod_overrides:
        for where, template in spec.flavour.pod_templates(job):
            overrides.apply(template.setdefault("spec", {}), spec.pod_overrides, ctx["container"]["name"], where)
    objects.append(job)
    return objects


def render_template(name: str, ctx: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    import jinja2
    import yaml

    try:
        text = environment().get_template(name).render(**ctx, **extra)
    except jinja2.TemplateError as err:
        raise LaunchError(f"template {name}: {err}") from err
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        obj = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        raise LaunchError(f"template {name} produced invalid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(obj, dict):
        raise LaunchError(f"template {name} did not produce one object")
    return obj


def render_validated(spec: JobSpec, versions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`render` followed by `launcher.render.check.check_manifests` (raises on any problem)."""
    from launcher.render.check import check_manifests

    check_storage_for_pods(spec)
    objects = render(spec)
    check_manifests(objects, versions=versions)
    return objects


def check_storage_for_pods(spec: JobSpec) -> None:
    """Refuse (UsageError) storage the pods could not use: a local path or file:// URL
    (inside a container it is the container's own disk, lost with it) and object storage
    they could not resolve with the job's settings alone (the bootstrap's check, run with
    the pods' environment: the user's shell variables do not reach them)."""
    for field in ("data_url", "train_url", "init_url"):
        url = getattr(spec, field)
        if url is not None and parse_url(url).is_local:
            raise UsageError(f"{flag_of(field)} {url!r} is a local path: Kubernetes pods cannot read it (their "
                             "files vanish with them); use s3:// or obs://, or --backend local to run here")
    spec.check_reachable({})


# ----------------------------------------------------------------------------- output

def dump(objects: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML, each document starting with `---`."""
    import yaml

    return yaml.dump_all(list(objects), Dumper=_dumper(), sort_keys=False, explicit_start=True,
                         default_flow_style=False, allow_unicode=False, width=100)


@functools.cache
def _dumper() -> Any:
    """A safe dumper writing multi-line text (ConfigMap files) as `|` blocks when it can."""
    import yaml

    class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
        pass

    def represent_str(dumper: Any, text: str) -> Any:
        style = "|" if "\n" in text else None  # the emitter falls back to quotes if unsafe
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, represent_str)
    return Dumper


def file_name(index: int, obj: Mapping[str, Any]) -> str:
    kind = flavours.describe_kind(obj["apiVersion"], obj["kind"]).lower()
    return f"{index:02d}-{kind}-{obj['metadata']['name']}.yaml"


def write_dir(objects: Sequence[Mapping[str, Any]], directory: str | Path) -> list[Path]:
    """Write one file per object (`00-configmap-<name>.yaml`, ...) into `directory`.

    Refuses (UsageError, nothing written) when `directory` is a file or already
    holds manifests of another render, which `kubectl apply -f DIR` would pick up.
    """
    directory = Path(directory)
    names = [file_name(i, obj) for i, obj in enumerate(objects)]
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"-o {directory}: not a directory")
    if directory.is_dir():
        stale = sorted(p.name for p in directory.iterdir()
                       if _MANIFEST_FILE.fullmatch(p.name) and p.name not in names)
        if stale:
            raise UsageError(f"-o {directory} already holds {stale[0]} from another render; "
                             "use an empty directory")
    texts = [dump([obj]) for obj in objects]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in zip(names, texts, strict=True):
            atomic_write(directory / name, text)
            paths.append(directory / name)
    except OSError as err:
        raise LaunchError(f"cannot write manifests to {directory}: {err.strerror or err}") from err
    return paths
