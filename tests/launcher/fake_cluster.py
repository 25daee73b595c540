"""An in-memory `ClusterAPI` for tests of the Kubernetes logic without HTTP, with the
behaviour of a real API server that the kmock emulator lacks (see TESTING.md):

- label and field selectors of the form `k=v[,k=v]` are honoured (dotted paths for
  fields, e.g. `type=Warning`, `involvedObject.name=p`);
- `forbidden` holds kinds ("Event") or API groups ("batch.volcano.sh") that answer 403 to
  every verb, as RBAC does; `not_installed` holds API groups that answer 404 (a CRD that
  is not installed: `get` gives None, `list` gives []);
- with `terminating` (a node whose kubelet does not answer) a deleted pod stays, marked
  with a `deletionTimestamp`;
- `logs` maps a pod name to its log lines, or to a KubeError raised when read (a kubelet
  that cannot be reached);
- the namespaces in `namespaces` (default: "default") exist as Namespace objects;
- RBAC: with `grant(role_rules, namespace, cluster_rules)` every call is checked against
  those PolicyRules (a Role's in its namespace, a ClusterRole's for cluster-scoped kinds),
  403 otherwise, and `allowed` (the SelfSubjectAccessReview) answers from the same table;
  without a grant everything is allowed. `denied` records each call RBAC refused.

Events and replacement pods are plain objects: tests add them to `objects` with `put`.
"""

from __future__ import annotations

import json

from launcher.k8s import api as kapi
from launcher.k8s import config as kconfig

CLUSTER_SCOPED = {"Namespace", "Node", "PriorityClass", "CustomResourceDefinition", "Queue"}


def _group(api_version):
    return api_version.rpartition("/")[0] or "core"


def _field(obj, path):
    value = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _matches(obj, selector, fields):
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        key, _, wanted = term.partition("=")
        key = key.rstrip("!")
        value = _field(obj, key) if fields else ((obj.get("metadata") or {}).get("labels") or {}).get(key)
        if str(value) != wanted:
            return False
    return True


class FakeAPI:
    """`ClusterAPI` over a dict; `fail_create`/`fail_delete` name objects that fail."""

    def __init__(self, fail_create=(), fail_delete=(), namespaces=("default",)):
        self.objects = {}
        self.fail_create, self.fail_delete = set(fail_create), set(fail_delete)
        self.calls = []
        self.forbidden = set()
        self.not_installed = set()
        self.terminating = False
        self.logs = {}
        self.rbac = None  # None: no RBAC; else {(namespace or None, group, resource, verb)}
        self.denied = []
        for name in namespaces:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def key(self, api_version, kind, namespace, name):
        return (api_version, kind, None if kind in CLUSTER_SCOPED else namespace, name)

    def put(self, obj):
        """Store `obj` as the cluster's controllers would (no checks)."""
        m = obj["metadata"]
        self.objects[self.key(obj["apiVersion"], obj["kind"], m.get("namespace"), m["name"])] = obj
        return obj

    def job_objects(self):
        """The stored objects but the cluster's own namespaces."""
        return [o for (_, k, _, _), o in self.objects.items() if k != "Namespace"]

    def grant(self, role_rules, namespace="default", cluster_rules=()):
        """Model RBAC: only what these PolicyRules (dicts as in a Role) allow."""
        self.rbac = {(ns, group, resource, verb)
                     for ns, rules in ((namespace, role_rules), (None, cluster_rules))
                     for rule in rules for group in rule["apiGroups"]
                     for resource in rule["resources"] for verb in rule["verbs"]}

    def allowed(self, verb, group, resource, namespace):
        self.calls.append(("review", (verb, group, resource, namespace)))
        return self.rbac is None or (namespace, group, resource, verb) in self.rbac

    def _rbac(self, api_version, kind, verb, namespace, subresource=""):
        group = _group(api_version).replace("core", "")
        plural = kapi.PLURALS.get(kind, f"{kind.lower()}s") + subresource
        where = None if kind in CLUSTER_SCOPED else namespace
        if not self.allowed(verb, group, plural, where):
            self.denied.append((verb, group, plural))
            raise kapi.KubeError(403, "Forbidden", f"{plural}.{group or 'core'} is forbidden: "
                                 f'User "dev" cannot {verb} resource "{plural}"')

    def _check(self, api_version, kind, verb, namespace=None):
        if self.rbac is not None:
            self._rbac(api_version, kind, verb, namespace)
        if kind in self.forbidden or _group(api_version) in self.forbidden:
            plural = kapi.PLURALS.get(kind, f"{kind.lower()}s")
            raise kapi.KubeError(403, "Forbidden", f"{plural}.{_group(api_version)} is forbidden: "
                                 f'User "dev" cannot {verb} resource "{plural}"')
        return _group(api_version) not in self.not_installed

    def create(self, obj):
        m = obj["metadata"]
        key = self.key(obj["apiVersion"], obj["kind"], m.get("namespace"), m["name"])
        self.calls.append(("create", key))
        if not self._check(obj["apiVersion"], obj["kind"], "create", m.get("namespace")):
            raise kapi.KubeError(404, "NotFound", "the server could not find the requested resource")
        if m["name"] in self.fail_create:
            raise kapi.KubeError(422, "Invalid", f'{obj["kind"]} "{m["name"]}" is invalid')
        if key in self.objects:
            raise kapi.KubeError(409, "AlreadyExists", f'"{m["name"]}" already exists')
        self.objects[key] = json.loads(json.dumps(obj))
        return obj

    def get(self, api_version, kind, namespace, name):
        self.calls.append(("get", (api_version, kind, namespace, name)))
        if not self._check(api_version, kind, "get", namespace):
            return None
        return self.objects.get(self.key(api_version, kind, namespace, name))

    def list(self, api_version, kind, namespace, *, label_selector=None, field_selector=None):
        self.calls.append(("list", (api_version, kind, namespace, field_selector)))
        if not self._check(api_version, kind, "list", namespace):
            return []
        return [o for (v, k, ns, _), o in self.objects.items()
                if (v, k) == (api_version, kind) and namespace in (None, ns)
                and _matches(o, label_selector, False) and _matches(o, field_selector, True)]

    def delete(self, api_version, kind, namespace, name, *, propagation="Background"):
        key = self.key(api_version, kind, namespace, name)
        self.calls.append(("delete", key))
        if not self._check(api_version, kind, "delete", namespace):
            return False
        if name in self.fail_delete:
            raise kapi.KubeError(500, "InternalError", "etcd timeout")
        if key not in self.objects:
            return False
        if kind == "Pod" and self.terminating:
            self.objects[key]["metadata"].setdefault("deletionTimestamp", "2026-01-01T01:00:00Z")
            return True
        del self.objects[key]
        return True

    def log_lines(self, namespace, pod, *, container=None, follow=False, tail_lines=None):
        if self.rbac is not None:
            self._rbac("v1", "Pod", "get", namespace, "/log")
        lines = self.logs.get(pod, [])
        if isinstance(lines, Exception):
            raise lines
        lines = list(lines)
        return iter(lines if tail_lines is None else lines[-tail_lines:] if tail_lines else [])


def fake_cluster(api):
    return kconfig.Cluster(api, "default", "test")
