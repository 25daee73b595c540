"""`--pod-overrides FILE`: a fragment of a pod spec deep-merged into every pod the job
makes (issue 23; SkyPilot's `kubernetes.pod_config` does the same). Mappings merge key by
key; lists of named items (containers, volumes, env, volumeMounts, ...) merge by name,
other lists are replaced. What the launcher wires itself (the training container's
command, args and image, every env variable, volume and mount it renders, the pod's
restart policy and host names) is refused in one line, never silently replaced: its own
flags set those. The merged objects are then validated like any other render.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from launcher.errors import UsageError
from launcher.spec.contract import CONTAINER_NAME

FLAG = "--pod-overrides"
# pod fields the flavour wires (DNS names, restarts, the scheduler of the gang)
OWNED_POD_FIELDS = ("restartPolicy", "subdomain", "hostname", "schedulerName")
OWNED_CONTAINER_FIELDS = ("command", "args", "image")  # --image sets the image
NAMED_LISTS = ("containers", "initContainers", "ephemeralContainers", "volumes", "env", "volumeMounts",
               "ports", "imagePullSecrets", "hostAliases", "resourceClaims")
NAME_KEYS = {"hostAliases": "ip", "imagePullSecrets": "name"}


def check(fragment: Any) -> None:
    """The fragment's shape: a mapping of pod spec fields, named list items named."""
    if not isinstance(fragment, Mapping) or not fragment:
        raise UsageError(f"{FLAG}: expected a non-empty mapping of pod spec fields (e.g. runtimeClassName: ...)")
    if "spec" in fragment or "metadata" in fragment:
        raise UsageError(f"{FLAG}: give the fields of a pod's spec at the top level, not a whole pod")
    _check_names(fragment, "")


def _check_names(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{FLAG}: key {key!r} at {where or 'the top'} is not a string")
            path = f"{where}.{key}" if where else key
            if key in NAMED_LISTS:
                if not isinstance(item, list):
                    raise UsageError(f"{FLAG}: {path} must be a list")
                name_key = NAME_KEYS.get(key, "name")
                for index, entry in enumerate(item):
                    if not isinstance(entry, Mapping) or not isinstance(entry.get(name_key), str):
                        raise UsageError(f"{FLAG}: {path}[{index}] needs a {name_key} (items merge by it)")
            _check_names(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_names(item, f"{where}[{index}]")


def apply(pod_spec: dict[str, Any], fragment: Mapping[str, Any], container: str, where: str) -> None:
    """Merge `fragment` into `pod_spec` in place; UsageError naming the first field the
    launcher owns (`container`: the training container's name, `where`: the template).
    The fragment may call the training container `leo` on every flavour (AscendJob's is
    `ascend`)."""
    if container != CONTAINER_NAME and fragment.get("containers"):
        fragment = {**fragment, "containers": [{**c, "name": container} if c["name"] == CONTAINER_NAME else c
                                               for c in fragment["containers"]]}
    owned = _owned(pod_spec, fragment, container)
    if owned:
        raise UsageError(f"{FLAG}: {where}.spec.{owned} is set by leo-launch (use its flag, or leave it out)")
    _merge(pod_spec, fragment, "")


def _owned(pod_spec: Mapping[str, Any], fragment: Mapping[str, Any], container: str) -> str | None:
    for key in OWNED_POD_FIELDS:
        if key in fragment:
            return key
    rendered_volumes = {v["name"] for v in pod_spec.get("volumes") or []}
    for entry in fragment.get("volumes") or []:
        if entry["name"] in rendered_volumes:
            return f"volumes[{entry['name']}]"
    rendered = {c["name"]: c for c in pod_spec.get("containers") or []}
    for entry in fragment.get("containers") or []:
        mine = rendered.get(entry["name"])
        if mine is None:
            continue  # a sidecar of the user's
        where = f"containers[{entry['name']}]"
        if entry["name"] == container:
            for key in OWNED_CONTAINER_FIELDS:
                if key in entry:
                    return f"{where}.{key}"
        for key in ("env", "volumeMounts"):
            names = {item["name"] for item in mine.get(key) or []}
            for item in entry.get(key) or []:
                if item["name"] in names:
                    return f"{where}.{key}[{item['name']}]"
        paths = {m.get("mountPath") for m in mine.get("volumeMounts") or []}
        for item in entry.get("volumeMounts") or []:
            if item.get("mountPath") in paths:
                return f"{where}.volumeMounts[{item['name']}] (mountPath {item.get('mountPath')})"
    return None


def _merge(base: dict[str, Any], over: Mapping[str, Any], key: str) -> None:
    for name, value in over.items():
        mine = base.get(name)
        if isinstance(mine, dict) and isinstance(value, Mapping):
            _merge(mine, value, name)
        elif name in NAMED_LISTS and isinstance(mine, list):
            base[name] = _merge_named(mine, value, NAME_KEYS.get(name, "name"))
        else:
            base[name] = copy.deepcopy(value)


def _merge_named(mine: list[Any], over: list[Any], name_key: str) -> list[Any]:
    out = list(mine)
    index = {item.get(name_key): i for i, item in enumerate(out) if isinstance(item, dict)}
    for item in over:
        at = index.get(item[name_key])
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            _merge(out[at], item, name_key)
    return out
