"""The vendored AscendJob CRD (launcher/schemas/ascendjob/) loads and validates AscendJobs.

EXAMPLE is a hand-written MindSpore AscendJob in the shape the ascend-operator
documents (Scheduler + Worker replicas, container `ascend`, port `ascendjob-port`),
with this project's least-privilege pod settings; /work/notes/ascendjob.md explains it.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.launcher.render.pod_security import check_objects

CRD_FILE = Path(__file__).resolve().parents[3] / "launcher" / "schemas" / "ascendjob" / "ascend-operator.yaml"

EXAMPLE = """
apiVersion: mindxdl.gitee.com/v1
kind: AscendJob
metadata:
  name: leo-mini-5shot-ascend16
  namespace: default
  labels:
    framework: mindspore
    ring-controller.atlas: ascend-910b
spec:
  schedulerName: volcano
  runPolicy:
    backoffLimit: 3
    schedulingPolicy:
      minAvailable: 3
      queue: default
  successPolicy: AllWorkers
  replicaSpecs:
    Scheduler:
      replicas: 1
      restartPolicy: Never
      template:
        metadata:
          labels:
            ring-controller.atlas: ascend-910b
        spec:
          automountServiceAccountToken: false
          securityContext: &podsc
            runAsNonRoot: true
            runAsUser: 1000
            runAsGroup: 1000
            fsGroup: 1000
            seccompProfile:
              type: RuntimeDefault
          containers:
          - name: ascend
            image: leo-launch:ascend
            command: [python, -m, launcher.bootstrap]
            ports:
            - name: ascendjob-port
              containerPort: 2222
              protocol: TCP
            resources:
              requests: {cpu: "2", memory: 8Gi}
              limits: {memory: 8Gi}
            securityContext: &csc
              allowPrivilegeEscalation: false
              capabilities:
                drop: [ALL]
    Worker:
      replicas: 2
      restartPolicy: Never
      template:
        metadata:
          labels:
            ring-controller.atlas: ascend-910b
        spec:
          automountServiceAccountToken: false
          securityContext: *podsc
          nodeSelector:
            accelerator-type: module-910b-8
          affinity:
            podAntiAffinity:
              requiredDuringSchedulingIgnoredDuringExecution:
              - labelSelector:
                  matchExpressions:
                  - {key: job-name, operator: In, values: [leo-mini-5shot-ascend16]}
                  - {key: replica-type, operator: In, values: [worker]}
                topologyKey: kubernetes.io/hostname
          containers:
          - name: ascend
            image: leo-launch:ascend
            command: [python, -m, launcher.bootstrap]
            env:
            - name: ASCEND_VISIBLE_DEVICES
              valueFrom:
                fieldRef:
                  fieldPath: metadata.annotations['huawei.com/Ascend910']
            ports:
            - name: ascendjob-port
              containerPort: 2222
              protocol: TCP
            resources:
              requests: {cpu: "32", memory: 128Gi, huawei.com/Ascend910: "8"}
              limits: {memory: 128Gi, huawei.com/Ascend910: "8"}
            securityContext: *csc
            volumeMounts:
            - {name: dshm, mountPath: /dev/shm}
            - {name: cache, mountPath: /cache}
          volumes:
          - name: dshm
            emptyDir: {medium: Memory, sizeLimit: 16Gi}
          - name: cache
            emptyDir: {}
"""


@functools.cache
def load_crd() -> dict[str, Any]:
    """The CustomResourceDefinition document of the vendored operator manifest (read once; do not modify)."""
    with CRD_FILE.open() as handle:
        docs = [d for d in yaml.load_all(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]
    (crd,) = [d for d in docs if d.get("kind") == "CustomResourceDefinition"
              and d["metadata"]["name"] == "ascendjobs.mindxdl.gitee.com"]
    return crd


def openapi_schema(crd: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


def strict(node: Any) -> Any:
    """The schema with unknown fields rejected (the API server would silently prune them)."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "properties" and not k.startswith("x-kubernetes-")}
    if "properties" in node:
        out["properties"] = {name: strict(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def errors(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return openapi_schema(load_crd())


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE)


def test_crd_defines_the_ascendjob_kind():
    crd = load_crd()
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert spec["group"] == "mindxdl.gitee.com" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "AscendJob" and spec["names"]["plural"] == "ascendjobs"
    assert "acjob" in spec["names"]["shortNames"]
    (v1,) = spec["versions"]
    assert v1["name"] == "v1" and v1["served"] and v1["storage"] and v1["subresources"] == {"status": {}}
    jsonschema.Draft7Validator.check_schema(openapi_schema(crd))


def test_example_mindspore_job_is_valid(schema):
    assert errors(example(), schema) == []
    assert errors(example(), strict(schema)) == []


def test_example_pods_pass_restricted():
    assert check_objects([example()], "restricted") == {
        "AscendJob/leo-mini-5shot-ascend16 replica Scheduler": [],
        "AscendJob/leo-mini-5shot-ascend16 replica Worker": [],
    }


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


WORKER = "spec.replicaSpecs.Worker"
BROKEN = [
    ("no replicaSpecs", lambda d: d["spec"].pop("replicaSpecs"), "'replicaSpecs' is a required property"),
    ("replicas not an integer", lambda d: _set(d, f"{WORKER}.replicas", "two"), "is not of type 'integer'"),
    ("minAvailable not an integer",
     lambda d: _set(d, "spec.runPolicy.schedulingPolicy.minAvailable", "3"), "is not of type 'integer'"),
    ("containerPort a string",
     lambda d: _set(d, f"{WORKER}.template.spec.containers.0.ports.0.containerPort", "2222"),
     "is not of type 'integer'"),
    ("pod without containers", lambda d: d["spec"]["replicaSpecs"]["Worker"]["template"]["spec"].pop("containers"),
     "'containers' is a required property"),
    ("quantity malformed",
     lambda d: _set(d, f"{WORKER}.template.spec.containers.0.resources.limits.memory", "128 GiB"),
     "does not match"),
]


@pytest.mark.parametrize("breakage, message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_job_fails(schema, breakage, message):
    doc = copy.deepcopy(example())
    breakage(doc)
    found = errors(doc, schema)
    assert any(message in e for e in found), found


@pytest.mark.parametrize("path, field", [
    ("spec", "replicaSpec"),  # a typo of replicaSpecs' sibling
    (f"{WORKER}.template.spec", "hostUsers"),  # newer than the CRD's pod schema
    (f"{WORKER}.template.spec.containers.0.securityContext", "appArmorProfile"),
])
def test_unknown_fields_fail_only_strict(schema, path, field):
    """The CRD's pod schema predates some Kubernetes fields: the API server would drop them."""
    doc = copy.deepcopy(example())
    target = doc
    for key in path.split("."):
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[field] = {"type": "RuntimeDefault"} if field == "appArmorProfile" else False
    assert errors(doc, schema) == []
    assert any("Additional properties are not allowed" in e and field in e for e in errors(doc, strict(schema)))
