"""An in-memory `ClusterAPI` for tests of the Kubernetes logic without HTTP."""

from __future__ import annotations

import json

from launcher.k8s import api as kapi
from launcher.k8s import config as kconfig


class FakeAPI:
    """`ClusterAPI` over a dict; `fail_create`/`fail_delete` name objects that fail."""

    def __init__(self, fail_create=(), fail_delete=()):
        self.objects = {}
        self.fail_create, self.fail_delete = set(fail_create), set(fail_delete)
        self.calls = []
        self.forbidden = set()

    def key(self, api_version, kind, namespace, name):
        return (api_version, kind, namespace, name)

    def create(self, obj):
        m = obj["metadata"]
        key = self.key(obj["apiVersion"], obj["kind"], m["namespace"], m["name"])
        self.calls.append(("create", key))
        if m["name"] in self.fail_create:
            raise kapi.KubeError(422, "Invalid", f'{obj["kind"]} "{m["name"]}" is invalid')
        if key in self.objects:
            raise kapi.KubeError(409, "AlreadyExists", f'"{m["name"]}" already exists')
        self.objects[key] = json.loads(json.dumps(obj))
        return obj

    def get(self, api_version, kind, namespace, name):
        return self.objects.get(self.key(api_version, kind, namespace, name))

    def list(self, api_version, kind, namespace, *, label_selector=None, field_selector=None):
        if kind in self.forbidden:
            raise kapi.KubeError(403, "Forbidden", f"{kind.lower()}s is forbidden")
        return [o for (v, k, ns, _), o in self.objects.items()
                if (v, k) == (api_version, kind) and namespace in (None, ns)]

    def delete(self, api_version, kind, namespace, name, *, propagation="Background"):
        key = self.key(api_version, kind, namespace, name)
        self.calls.append(("delete", key))
        if name in self.fail_delete:
            raise kapi.KubeError(500, "InternalError", "etcd timeout")
        return self.objects.pop(key, None) is not None

    def log_lines(self, namespace, pod, *, container=None, follow=False, tail_lines=None):
        return iter(())


def fake_cluster(api):
    return kconfig.Cluster(api, "default", "test")
