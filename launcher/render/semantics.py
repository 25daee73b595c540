"""The checks no schema makes (check 4 of launcher.render.check): names, labels and
annotations, ConfigMap sizes, Service selectors, pod templates (volumes, env, ports,
resources) as the API server and kubelet would judge them, and each job object's own
rules, which its flavour states (launcher.flavours)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from launcher import flavours
from launcher.spec import contract
from launcher.spec import names as syn

REQUIRED_LABELS = {contract.LABEL_APP: contract.APP_NAME, contract.LABEL_MANAGED_BY: contract.MANAGER}
_NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels",
                "metadata.annotations", "spec.nodeName", "spec.serviceAccountName",
                "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs")
_MAX_ANNOTATIONS = 256 * 1024
_MAX_CONFIGMAP = 1024 * 1024


def describe(obj: Any) -> str:
    try:
        return f"{flavours.describe_kind(obj['apiVersion'], obj['kind'])}/{obj['metadata']['name']}"
    except (KeyError, TypeError):
        return "object"




def semantic_problems(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rules no schema states: names, labels, quantities, references between objects."""
    out: list[str] = []
    good = [o for o in objects if isinstance(o, Mapping) and isinstance(o.get("metadata"), Mapping)]
    configmaps = {o["metadata"].get("name") for o in good if o.get("kind") == "ConfigMap"}
    services = {o["metadata"].get("name"): o for o in good if o.get("kind") == "Service"}
    job_names = {o["metadata"].get("labels", {}).get(contract.LABEL_JOB) for o in good
                 if isinstance(o["metadata"].get("labels"), Mapping)}
    if len(job_names) > 1:
        out.append(f"objects carry different {contract.LABEL_JOB} labels: {sorted(map(str, job_names))}")
    seen: set[tuple[str, str]] = set()
    for obj in good:
        where = describe(obj)
        key = (str(obj.get("apiVersion")) + "/" + str(obj.get("kind")), str(obj["metadata"].get("name")))
        if key in seen:
            out.append(f"{where}: two objects of this kind share the name")
        seen.add(key)
        out += [f"{where}: {p}" for p in _metadata_problems(obj)]
        kind = obj.get("kind")
        flavour = flavours.by_kind(str(obj.get("apiVersion")), str(kind))
        if kind == "ConfigMap":
            out += [f"{where}: {p}" for p in _configmap_problems(obj)]
        elif kind == "Service":
            out += [f"{where}: {p}" for p in _service_problems(obj, good)]
        elif flavour is not None:
            rendered = Rendered(services, configmaps, lambda t, w: _template_problems(t, w, configmaps))
            out += [f"{where}: {p}" for p in flavour.object_problems(obj, rendered)]
    return out


@dataclasses.dataclass
class Rendered:
    """What a flavour's object check may look at besides its object."""

    services: Mapping[Any, Any]
    configmaps: set[Any]
    template: Callable[[Mapping[str, Any], str], list[str]]  # the shared pod template check


def _metadata_problems(obj: Mapping[str, Any]) -> list[str]:
    out = []
    meta = obj["metadata"]
    name, kind = meta.get("name"), obj.get("kind")
    if not isinstance(name, str):
        return ["metadata.name is missing"]
    if kind in ("Service", "Job"):  # a Job's name also names its Service and pod host names
        problem = syn.dns1035_label_problem(name)
    else:
        problem = syn.dns1123_subdomain_problem(name)
    if problem:
        out.append(f"metadata.name {name!r} {problem}")
    namespace = meta.get("namespace")
    if namespace is not None and (problem := syn.dns1123_label_problem(str(namespace))):
        out.append(f"metadata.namespace {namespace!r} {problem}")
    out += _label_problems(meta.get("labels"), "metadata.labels")
    for key, value in REQUIRED_LABELS.items():
        if (meta.get("labels") or {}).get(key) != value:
            out.append(f"metadata.labels must have {key}={value}")
    if not (meta.get("labels") or {}).get(contract.LABEL_JOB):
        out.append(f"metadata.labels must have {contract.LABEL_JOB}")
    out += _annotation_problems(meta.get("annotations"), "metadata.annotations")
    return out


def _label_problems(labels: Any, where: str) -> list[str]:
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        return [f"{where} must be a mapping"]
    out = []
    for key, value in labels.items():
        problem = syn.label_key_problem(str(key)) or syn.label_value_problem(value)
        if problem:
            out.append(f"{where} {key}={value!r}: {problem}")
    return out


def _annotation_problems(annotations: Any, where: str) -> list[str]:
    if annotations is None:
        return []
    if not isinstance(annotations, Mapping):
        return [f"{where} must be a mapping"]
    out = [f"{where} {key}: {problem}" for key in annotations
           if (problem := syn.label_key_problem(str(key)))]
    out += [f"{where} {key}: value must be a string" for key, value in annotations.items()
            if not isinstance(value, str)]
    size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
    if size > _MAX_ANNOTATIONS:
        out.append(f"{where} total {size} bytes, more than 256 KiB")
    return out


def _configmap_problems(obj: Mapping[str, Any]) -> list[str]:
    data = obj.get("data") or {}
    out = [f"data key {key!r} {problem}" for key in data if (problem := syn.config_key_problem(str(key)))]
    size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in data.items())
    if size > _MAX_CONFIGMAP:
        out.append(f"data is {size} bytes, more than the 1 MiB a ConfigMap holds")
    return out


def _service_problems(obj: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    spec = obj.get("spec") or {}
    selector = spec.get("selector") or {}
    out += _label_problems(selector, "spec.selector")
    if spec.get("clusterIP") == "None" and spec.get("publishNotReadyAddresses") is not True:
        out.append("a headless Service for msrun must set publishNotReadyAddresses: true")
    out += _port_problems(spec.get("ports") or [], "spec.ports", "port")
    templates = [t for o in objects for t in _pod_templates(o)]
    if selector and not any(_matches(selector, (t.get("metadata") or {}).get("labels") or {})
                            for _, t in templates):
        out.append("spec.selector matches no rendered pod template")
    return out


def _matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_templates(obj: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    flavour = flavours.by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
    return flavour.pod_templates(obj) if flavour is not None else []


def _template_problems(template: Mapping[str, Any], where: str, configmaps: set[Any]) -> list[str]:
    out = []
    meta = template.get("metadata") or {}
    out += _label_problems(meta.get("labels"), f"{where}.metadata.labels")
    out += _annotation_problems(meta.get("annotations"), f"{where}.metadata.annotations")
    if not (meta.get("labels") or {}).get(contract.LABEL_JOB):
        out.append(f"{where}.metadata.labels must have {contract.LABEL_JOB}")
    pod = template.get("spec") or {}
    out += _label_problems(pod.get("nodeSelector"), f"{where}.spec.nodeSelector")
    for index, tol in enumerate(pod.get("tolerations") or []):
        tw = f"{where}.spec.tolerations[{index}]"
        if tol.get("key") and (problem := syn.label_key_problem(tol["key"])):
            out.append(f"{tw}.key: {problem}")
        if tol.get("operator") == "Exists" and tol.get("value"):
            out.append(f"{tw}: operator Exists takes no value")
        if tol.get("effect") not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            out.append(f"{tw}.effect {tol.get('effect')!r} is not a taint effect")
    for term in (((pod.get("affinity") or {}).get("podAntiAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or []):
        out += _label_problems((term.get("labelSelector") or {}).get("matchLabels"),
                               f"{where}.spec.affinity labelSelector")
    volumes: dict[Any, Mapping[str, Any]] = {}
    for index, volume in enumerate(pod.get("volumes") or []):
        vname = volume.get("name")
        if (problem := syn.dns1123_label_problem(str(vname))):
            out.append(f"{where}.spec.volumes[{index}].name {vname!r} {problem}")
        if vname in volumes:
            out.append(f"{where}.spec.volumes: {vname!r} is defined twice")
        volumes[vname] = volume
        ref = (volume.get("configMap") or {})
        if ref and not ref.get("optional") and ref.get("name") not in configmaps:
            out.append(f"{where}.spec.volumes[{index}] mounts ConfigMap {ref.get('name')!r}, "
                       "which is not rendered")
        size = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and not syn.is_quantity(size):
            out.append(f"{where}.spec.volumes[{index}].emptyDir.sizeLimit {size!r} is not a quantity")
    names: set[Any] = set()
    for index, container in enumerate(pod.get("containers") or []):
        cw = f"{where}.spec.containers[{index}]"
        cname = container.get("name")
        if (problem := syn.dns1123_label_problem(str(cname))):
            out.append(f"{cw}.name {cname!r} {problem}")
        if cname in names:
            out.append(f"{cw}.name {cname!r} is used twice")
        names.add(cname)
        if not container.get("image"):
            out.append(f"{cw}.image is empty")
        out += _env_problems(container.get("env") or [], f"{cw}.env")
        out += _port_problems(container.get("ports") or [], f"{cw}.ports", "containerPort")
        out += _resource_problems(container.get("resources") or {}, f"{cw}.resources")
        paths: set[Any] = set()
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                out.append(f"{cw}.volumeMounts {mount.get('name')!r} names no volume")
            path = mount.get("mountPath")
            if not isinstance(path, str) or not path.startswith("/"):
                out.append(f"{cw}.volumeMounts {mount.get('name')!r}: mountPath must be absolute")
            if path in paths:
                out.append(f"{cw}.volumeMounts: {path} is mounted twice")
            paths.add(path)
    return out


def _env_problems(env: Sequence[Mapping[str, Any]], where: str) -> list[str]:
    out = []
    seen: set[Any] = set()
    for var in env:
        name = var.get("name")
        if (problem := syn.env_name_problem(str(name))):
            out.append(f"{where} {name!r}: {problem}")
        if name in seen:
            out.append(f"{where} {name!r} is set twice")
        seen.add(name)
        source = var.get("valueFrom") or {}
        if "value" in var and source:
            out.append(f"{where} {name}: value and valueFrom are exclusive")
        field = (source.get("fieldRef") or {}).get("fieldPath")
        if field is not None:
            base = field.split("[", 1)[0]
            if base not in _FIELD_PATHS or (("[" in field) != (base in ("metadata.labels", "metadata.annotations"))):
                out.append(f"{where} {name}: fieldPath {field!r} is not supported by the downward API")
            elif "[" in field:
                key = field[len(base):]
                if not (key.startswith("['") and key.endswith("']")) or syn.label_key_problem(key[2:-2]):
                    out.append(f"{where} {name}: fieldPath {field!r} does not name a valid key")
        secret = source.get("secretKeyRef")
        if secret is not None:
            if (problem := syn.dns1123_subdomain_problem(str(secret.get("name")))):
                out.append(f"{where} {name}: Secret name {secret.get('name')!r} {problem}")
            if (problem := syn.config_key_problem(str(secret.get("key")))):
                out.append(f"{where} {name}: Secret key {secret.get('key')!r} {problem}")
    return out


def _port_problems(ports: Sequence[Mapping[str, Any]], where: str, number_key: str) -> list[str]:
    out = []
    names: set[Any] = set()
    numbers: set[Any] = set()
    for port in ports:
        name, number = port.get("name"), port.get(number_key)
        if name is not None:
            if len(str(name)) > 15 or syn.dns1123_label_problem(str(name)) or not any(c.isalpha() for c in str(name)):
                out.append(f"{where} name {name!r} must be 1-15 lowercase letters, digits and '-' (IANA)")
            if name in names:
                out.append(f"{where} name {name!r} is used twice")
            names.add(name)
        if not isinstance(number, int) or not 0 < number < 65536:
            out.append(f"{where} {number_key} {number!r} must be 1..65535")
        if (number, port.get("protocol", "TCP")) in numbers:
            out.append(f"{where} {number_key} {number} is used twice")
        numbers.add((number, port.get("protocol", "TCP")))
    return out


def _resource_problems(resources: Mapping[str, Any], where: str) -> list[str]:
    out = []
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    parsed: dict[str, dict[str, Any]] = {"requests": {}, "limits": {}}
    for section, values in (("requests", requests), ("limits", limits)):
        for name, value in values.items():
            if not isinstance(value, str) or not syn.is_quantity(value):
                out.append(f"{where}.{section}.{name} {value!r} is not a Kubernetes quantity")
                continue
            amount = syn.parse_quantity(value)
            if amount < 0:
                out.append(f"{where}.{section}.{name} must not be negative")
            parsed[section][name] = amount
    for name in set(requests) | set(limits):
        if name in parsed["requests"] and name in parsed["limits"] \
                and parsed["requests"][name] > parsed["limits"][name]:
            out.append(f"{where}: request of {name} exceeds its limit")
        extended = "/" in name and not name.split("/", 1)[0].endswith("kubernetes.io") \
            and not name.startswith("hugepages-")
        if extended:
            if name not in parsed["requests"] or name not in parsed["limits"] \
                    or parsed["requests"][name] != parsed["limits"][name]:
                out.append(f"{where}: extended resource {name} must be equal in requests and limits")
            elif parsed["limits"][name] != parsed["limits"][name].to_integral_value():
                out.append(f"{where}: extended resource {name} must be a whole number")
        elif name not in _NATIVE_RESOURCES and not name.startswith("hugepages-") and "/" not in name:
            out.append(f"{where}: unknown resource {name!r}")
    return out
