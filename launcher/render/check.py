"""Validation of rendered manifests before they are printed or submitted.

Four independent checks, all of which must pass:

1. The official Kubernetes OpenAPI schemas in strict mode (unknown fields and
   wrong types are errors), from `kubernetes-validate`, for Kubernetes 1.30 and
   the newest version it carries. Validators are compiled once per process.
2. The official `kubernetes` client's models: each object is deserialised into
   its model class and serialised back; anything the model drops or changes
   (unknown fields, wrong types, missing required fields) is an error.
3. Custom resources of a job flavour against the flavour's vendored CRD schema
   (`launcher/schemas/<flavour>/`, made strict like the API server's field validation:
   an old CRD's pod schema would silently prune newer fields), plus their metadata and
   pod templates against the Kubernetes schemas and models.
4. Semantic rules the schemas miss: names, label syntax, quantities, extended
   resources equal in requests and limits, references between the objects.

Kinds none of the validators know are failures.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from launcher import flavours
from launcher.errors import LaunchError
from launcher.flavours.base import Flavour
from launcher.render.semantics import describe, semantic_problems

MIN_KUBERNETES_VERSION = "1.30"


class ManifestError(LaunchError):
    """A rendered manifest fails validation (a bug or an unsupported value; exit code 1)."""


def kubernetes_versions() -> tuple[str, ...]:
    """1.30 and the newest version kubernetes-validate carries."""
    from kubernetes_validate.utils import latest_version, major_minor

    newest = major_minor(latest_version())
    return (MIN_KUBERNETES_VERSION,) if newest == MIN_KUBERNETES_VERSION else (MIN_KUBERNETES_VERSION, newest)


def check_manifests(objects: Sequence[Mapping[str, Any]], versions: Sequence[str] | None = None) -> None:
    """Raise ManifestError naming the first problem (and how many more) of `objects`."""
    found = problems(objects, versions)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ManifestError(f"rendered manifest is invalid: {found[0]}{more}")


def problems(objects: Sequence[Mapping[str, Any]], versions: Sequence[str] | None = None,
             models: bool = True) -> list[str]:
    """Every problem of every object, one line each (empty: all valid)."""
    versions = tuple(versions) if versions else kubernetes_versions()
    out: list[str] = []
    for obj in objects:
        where = describe(obj)
        if not isinstance(obj, Mapping) or "apiVersion" not in obj or "kind" not in obj:
            out.append(f"{where}: not a Kubernetes object (apiVersion and kind are required)")
            continue
        flavour = flavours.by_kind(obj["apiVersion"], obj["kind"])
        if flavour is not None and flavour.schema is not None:
            out += [f"{where}: {p}" for p in _custom_resource_problems(flavour, obj, versions, models)]
        else:
            for version in versions:
                out += [f"{where}: {p}" for p in schema_problems(obj, version)]
            if models:
                out += [f"{where}: {p}" for p in model_problems(obj, _model_name(obj))]
    out += semantic_problems(objects)
    return out


# ----------------------------------------------------------------------------- 1. Kubernetes schemas

@functools.cache
def _definitions(schema_dir: str) -> Any:
    from kubernetes_validate.utils import schema_contents

    return schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", schema_dir)


@functools.cache
def _validator(version: str, filename: str) -> Any:
    """The strict validator of kubernetes-validate's schema `filename` for `version` (None: none)."""
    import jsonschema
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents
    from referencing import Registry, Resource

    # the newest carried version not newer than the requested one, as kubernetes_validate.validate
    carried = [v for v in all_versions() if major_minor(v) <= major_minor(version)]
    if not carried:
        raise ManifestError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    schema_dir = f"v{carried[-1]}-local-strict"
    try:
        schema = schema_contents(f"kubernetes-json-schema/{schema_dir}/{filename}", version)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(_definitions(schema_dir)) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_file(api_version: str, kind: str) -> str:
    # as kubernetes_validate: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1
    group, slash, version = api_version.partition("/")
    prefix = f"{group.split('.')[0]}-{version}" if slash else group
    return f"{kind.lower()}-{prefix}.json"


def schema_problems(obj: Mapping[str, Any], version: str, filename: str | None = None,
                    label: str | None = None) -> list[str]:
    """Problems of `obj` against the strict Kubernetes `version` schema."""
    filename = filename or _schema_file(str(obj.get("apiVersion")), str(obj.get("kind")))
    validator = _validator(version, filename)
    if validator is None:
        return [f"unknown kind {obj.get('kind')} {obj.get('apiVersion')} "
                f"(no Kubernetes {version} schema)"]
    label = label or f"Kubernetes {version} schema"
    return [f"{label}: {_path(err.absolute_path)}: {err.message}"
            for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


def _path(parts: Iterable[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    return text.lstrip(".") or "(top)"


# ----------------------------------------------------------------------------- 2. client models

@functools.cache
def _api_client() -> Any:
    from kubernetes.client import ApiClient

    return ApiClient()


def _model_name(obj: Mapping[str, Any]) -> str:
    version = str(obj["apiVersion"]).rpartition("/")[2]
    return version[:1].upper() + version[1:] + str(obj["kind"])


class _Response:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)


def model_problems(data: Any, model: str) -> list[str]:
    """Round-trip `data` through the official client's model class `model` (e.g. V1Job)."""
    import kubernetes.client.models as models

    if not hasattr(models, model):
        return [f"unknown kind: the kubernetes client has no model {model}"]
    api = _api_client()
    try:
        back = api.sanitize_for_serialization(api.deserialize(_Response(data), model))
    except (ValueError, TypeError) as err:
        return [f"client model {model}: {str(err).splitlines()[0]}"]
    difference = _difference(data, back, "")
    return [f"client model {model}: {difference}"] if difference else []


def _difference(sent: Any, back: Any, path: str) -> str | None:
    if isinstance(sent, Mapping):
        if not isinstance(back, Mapping):
            return f"{path or '(top)'}: expected an object"
        for key, value in sent.items():
            if key not in back:
                if value is None:
                    continue
                return f"{(path + '.' + key).lstrip('.')}: unknown field"
            found = _difference(value, back[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(sent, list):
        if not isinstance(back, list) or len(back) != len(sent):
            return f"{path.lstrip('.')}: expected a list"
        for index, (a, b) in enumerate(zip(sent, back, strict=True)):
            found = _difference(a, b, f"{path}[{index}]")
            if found:
                return found
        return None
    if type(sent) is not type(back) or sent != back:
        return f"{path.lstrip('.')}: {sent!r} does not fit the model (read as {back!r})"
    return None


# ----------------------------------------------------------------------------- 3. custom resources

@functools.cache
def _crd_validator(flavour: Flavour) -> Any:
    """The flavour's CRD (a file may hold other documents, e.g. an operator's deployment)
    as a strict JSON Schema validator of the version the flavour renders."""
    import jsonschema
    import yaml

    if flavour.schema.suffix == ".json":  # a JSON Schema already strict (see its NOTICE)
        return jsonschema.Draft7Validator(json.loads(flavour.schema.read_text()))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with flavour.schema.open() as handle:
        docs = list(yaml.load_all(handle, Loader=loader))  # noqa: S506 - a safe loader
    crd = next(d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"
               and d["metadata"]["name"] == flavour.crd)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == flavour.api[0].rpartition("/")[2])
    return jsonschema.Draft7Validator(_strict_crd_schema(version["schema"]["openAPIV3Schema"]))


def _custom_resource_problems(flavour: Flavour, obj: Mapping[str, Any], versions: Sequence[str],
                              models: bool) -> list[str]:
    out = [f"{flavour.crd_title} CRD schema: {_path(err.absolute_path)}: {err.message}"
           for err in sorted(_crd_validator(flavour).iter_errors(obj),
                             key=lambda e: list(map(str, e.absolute_path)))]
    embedded = [(where.removeprefix("spec."), *rest) for where, *rest in flavour.embedded(obj)]
    return out + _embedded_problems(obj.get("metadata"), embedded, versions, models)


def _strict_crd_schema(node: Any) -> Any:
    """A CRD's structural schema as JSON Schema, rejecting unknown fields like the API server's
    strict field validation (CRDs otherwise prune them silently)."""
    if isinstance(node, list):
        return [_strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict_crd_schema(value) for key, value in node.items()
           if not key.startswith("x-kubernetes-") and key not in ("nullable", "properties")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    # `properties` maps names to schemas: do not treat those names as keywords
    if "properties" in node:
        out["properties"] = {name: _strict_crd_schema(sub) for name, sub in node["properties"].items()}
    return out


def _embedded_problems(meta: Any, embedded: Sequence[tuple[str, Any, str, str]], versions: Sequence[str],
                       models: bool) -> list[str]:
    """A custom resource's metadata and embedded objects (pod or job templates) against the
    Kubernetes schemas and models."""
    out = []
    for version in versions:
        out += schema_problems(meta, version, "objectmeta-meta-v1.json",
                               f"metadata: Kubernetes {version} schema")
        for where, template, schema, _ in embedded:
            out += schema_problems(template, version, schema, f"{where}: Kubernetes {version} schema")
    if models:
        out += model_problems(meta, "V1ObjectMeta")
        for where, template, _, model in embedded:
            out += [f"{where}: {p}" for p in model_problems(template, model)]
    return out
