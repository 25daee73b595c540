"""The checks no schema makes (check 4 of launcher.render.check): names, labels and
annotations, ConfigMap sizes, Service selectors, Job and vcjob policies, pod templates
(volumes, env, ports, resources) as the API server and kubelet would judge them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from launcher.spec import contract
from launcher.spec import names as syn

VOLCANO_API = "batch.volcano.sh/v1alpha1"
ASCENDJOB_API = "mindxdl.gitee.com/v1"
REQUIRED_LABELS = {contract.LABEL_APP: contract.APP_NAME, contract.LABEL_MANAGED_BY: contract.MANAGER}
_NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels",
                "metadata.annotations", "spec.nodeName", "spec.serviceAccountName",
                "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs")
_MAX_ANNOTATIONS = 256 * 1024
_MAX_CONFIGMAP = 1024 * 1024


def describe(obj: Any) -> str:
    try:
        kind = "vcjob" if obj["apiVersion"] == VOLCANO_API else obj["kind"]
        return f"{kind}/{obj['metadata']['name']}"
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
        kind, api = obj.get("kind"), obj.get("apiVersion")
        if kind == "ConfigMap":
            out += [f"{where}: {p}" for p in _configmap_problems(obj)]
        elif kind == "Service":
            out += [f"{where}: {p}" for p in _service_problems(obj, good)]
        elif kind == "Job" and api == "batch/v1":
            out += [f"{where}: {p}" for p in _job_problems(obj, configmaps, services)]
        elif kind == "Job" and api == VOLCANO_API:
            out += [f"{where}: {p}" for p in _vcjob_problems(obj, configmaps)]
        elif kind == "AscendJob" and api == ASCENDJOB_API:
            out += [f"{where}: {p}" for p in _ascendjob_problems(obj, configmaps)]
    return out


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
    spec = obj.get("spec") or {}
    if obj.get("apiVersion") == "batch/v1" and obj.get("kind") == "Job":
        return [("spec.template", spec.get("template") or {})]
    if obj.get("apiVersion") == VOLCANO_API:
        return [(f"spec.tasks[{i}].template", task.get("template") or {})
                for i, task in enumerate(spec.get("tasks") or []) if isinstance(task, Mapping)]
    if obj.get("apiVersion") == ASCENDJOB_API:
        return [(f"spec.replicaSpecs.{kind}.template", replica.get("template") or {})
                for kind, replica in (spec.get("replicaSpecs") or {}).items() if isinstance(replica, Mapping)]
    return []


def _job_problems(obj: Mapping[str, Any], configmaps: set[Any], services: Mapping[Any, Any]) -> list[str]:
    out = []
    spec = obj.get("spec") or {}
    name = obj["metadata"]["name"]
    template = spec.get("template") or {}
    pod = template.get("spec") or {}
    completions = spec.get("completions")
    if spec.get("completionMode") == "Indexed":
        if not isinstance(completions, int) or completions < 1:
            out.append("an Indexed Job needs completions >= 1")
        elif spec.get("parallelism") != completions:
            out.append("parallelism must equal completions: every rank runs at once")
        elif len(f"{name}-{completions - 1}") > 63:
            out.append(f"pod host name {name}-{completions - 1} is longer than 63 characters")
    if spec.get("podFailurePolicy") and pod.get("restartPolicy") != "Never":
        out.append("a podFailurePolicy needs restartPolicy: Never")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        out.append("a Job's pods need restartPolicy Never or OnFailure")
    containers = {c.get("name") for c in pod.get("containers") or [] if isinstance(c, Mapping)}
    for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        codes = rule.get("onExitCodes") or {}
        if codes.get("containerName") not in (None, *containers):
            out.append(f"podFailurePolicy.rules[{index}] names unknown container {codes.get('containerName')!r}")
        if codes.get("operator") == "In" and 0 in (codes.get("values") or []):
            out.append(f"podFailurePolicy.rules[{index}]: exit code 0 cannot be a failure")
    subdomain = pod.get("subdomain")
    if subdomain is not None:
        service = services.get(subdomain)
        if service is None:
            out.append(f"spec.template.spec.subdomain {subdomain!r} names no rendered Service")
        elif (service.get("spec") or {}).get("clusterIP") != "None":
            out.append(f"Service {subdomain} must be headless (clusterIP: None) for pod DNS names")
    out += _template_problems(template, "spec.template", configmaps)
    return out


def _vcjob_problems(obj: Mapping[str, Any], configmaps: set[Any]) -> list[str]:
    out = []
    spec = obj.get("spec") or {}
    name = obj["metadata"]["name"]
    if spec.get("schedulerName") != "volcano":
        out.append("spec.schedulerName must be volcano")
    if (queue := spec.get("queue")) is not None and (problem := syn.dns1123_label_problem(str(queue))):
        out.append(f"spec.queue {queue!r} {problem}")
    tasks = [t for t in spec.get("tasks") or [] if isinstance(t, Mapping)]
    replicas = sum(int(t.get("replicas") or 0) for t in tasks)
    if not isinstance(spec.get("minAvailable"), int) or not 0 < spec["minAvailable"] <= replicas:
        out.append(f"spec.minAvailable {spec.get('minAvailable')!r} must be 1..{replicas} (the pods)")
    out += _policy_problems(spec.get("policies") or [], "spec.policies")
    task_names: set[Any] = set()
    for index, task in enumerate(tasks):
        where = f"spec.tasks[{index}]"
        task_name = task.get("name")
        if (problem := syn.dns1123_label_problem(str(task_name))):
            out.append(f"{where}.name {task_name!r} {problem}")
        if task_name in task_names:
            out.append(f"{where}.name {task_name!r} is used twice")
        task_names.add(task_name)
        if len(f"{name}-{task_name}-{int(task.get('replicas') or 1) - 1}") > 63:
            out.append(f"{where}: pod host names {name}-{task_name}-<index> are longer than 63 characters")
        out += _policy_problems(task.get("policies") or [], f"{where}.policies")
        out += _template_problems(task.get("template") or {}, f"{where}.template", configmaps)
    return out


def _ascendjob_problems(obj: Mapping[str, Any], configmaps: set[Any]) -> list[str]:
    """What the ascend-operator's validation (ascendjob_validate.go) and env injection need."""
    out = []
    spec = obj.get("spec") or {}
    name = obj["metadata"]["name"]
    labels = obj["metadata"].get("labels") or {}
    key, value = contract.ASCENDJOB_FRAMEWORK_LABEL
    if labels.get(key) != value:
        out.append(f"metadata.labels must have {key}={value} (the operator picks MindSpore's roles by it)")
    replicas = {k: r for k, r in (spec.get("replicaSpecs") or {}).items() if isinstance(r, Mapping)}
    if set(replicas) != {"Scheduler", "Worker"}:
        out.append(f"spec.replicaSpecs must be Scheduler and Worker for MindSpore, not {sorted(replicas)}")
    if replicas.get("Scheduler", {}).get("replicas", 1) != 1:
        out.append("spec.replicaSpecs.Scheduler.replicas must be 1")
    total = sum(int(r.get("replicas", 1) or 0) for r in replicas.values())
    policy = (spec.get("runPolicy") or {}).get("schedulingPolicy") or {}
    if policy.get("minAvailable") != total:
        out.append(f"spec.runPolicy.schedulingPolicy.minAvailable {policy.get('minAvailable')!r} must be "
                   f"{total} (every pod: MindSpore's cluster starts only with all of them)")
    if (queue := policy.get("queue")) is not None and (problem := syn.dns1123_label_problem(str(queue))):
        out.append(f"spec.runPolicy.schedulingPolicy.queue {queue!r} {problem}")
    if spec.get("successPolicy") not in (None, "", "AllWorkers"):
        out.append(f"spec.successPolicy {spec.get('successPolicy')!r} must be empty or AllWorkers")
    for kind, replica in replicas.items():
        where = f"spec.replicaSpecs.{kind}"
        if len(f"{name}-{kind.lower()}-{int(replica.get('replicas', 1) or 1) - 1}") > 63:
            out.append(f"{where}: pod names {name}-{kind.lower()}-<index> are longer than 63 characters")
        template = replica.get("template") or {}
        containers = [c.get("name") for c in (template.get("spec") or {}).get("containers") or []
                      if isinstance(c, Mapping)]
        if contract.ASCENDJOB_CONTAINER not in containers:
            out.append(f"{where}: the operator needs a container named {contract.ASCENDJOB_CONTAINER!r} "
                       f"(it injects MindSpore's variables there only), not {containers}")
        out += _template_problems(template, f"{where}.template", configmaps)
    return out


def _policy_problems(policies: Sequence[Any], where: str) -> list[str]:
    out = []
    for index, policy in enumerate(policies):
        has_event = bool(policy.get("event") or policy.get("events"))
        has_code = policy.get("exitCode") is not None
        if has_event == has_code:
            out.append(f"{where}[{index}] needs either event(s) or exitCode, not both or neither")
        if policy.get("exitCode") == 0:
            out.append(f"{where}[{index}]: exit code 0 cannot be a failure")
    return out


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
