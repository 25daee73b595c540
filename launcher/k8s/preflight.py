"""Pre-flight: ask the cluster what it can answer cheaply, before anything is created, and
say what would go wrong (`submit` and `render --check-cluster` run it).

A check is one function `check(ctx) -> Iterable[str]` registered with `@check("what it
checks")`; each string it yields is a problem (the job would not run), each `Note` a
remark that does not stop the job. It reads the cluster
through `ctx` (`ctx.api`, the `ctx.spec`, the rendered `ctx.objects`, and `ctx.get`, which
reads each object once for all checks, e.g. the Namespace). A check that RBAC forbids
(401/403) or that the API cannot answer (5xx) is skipped with a note, never fatal (the
forbidden ones share one note); an unreachable API is (nothing else would work either). `run` runs `CHECKS` in order.

To add a check (e.g. Pod Security): one function decorated with
`@check("what it checks")`, here or in a module of its own imported at the end of this
one; registration order is run order. Test it with `run(api, spec, objects,
checks=[...])` against the in-memory API: its problem, and its skip when forbidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from launcher.k8s.api import (
    CONFIGMAP,
    CRD,
    NAMESPACE,
    NODE,
    PRIORITY_CLASS,
    SECRET,
    SERVICE_ACCOUNT,
    ClusterAPI,
    KubeError,
)
from launcher.spec import jobspec as js
from launcher.spec.podsecurity import job_admission_problem

STORAGE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
REGISTRY_SECRET_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")
# Signs that the cluster adds nodes when a pod is pending: cluster-autoscaler's status
# ConfigMap (also written by managed autoscalers built on it), Karpenter's NodePool CRD,
# node labels of autoscaled pools. Where one is found, or none can be ruled out, missing
# capacity is a warning, not a refusal.
AUTOSCALER_STATUS = ("kube-system", "cluster-autoscaler-status")
KARPENTER_CRD = "nodepools.karpenter.sh"
AUTOSCALED_NODE_LABELS = ("karpenter.sh/nodepool", "karpenter.sh/provisioner-name")
DEVICE_PLUGINS = {"huawei.com/Ascend910": "the Ascend device plugin",
                  "nvidia.com/gpu": "the NVIDIA device plugin"}


@dataclasses.dataclass
class Context:
    """What a check may look at: the API, the job, its rendered objects; `get` caches reads."""

    api: ClusterAPI
    spec: js.JobSpec
    objects: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    _cache: dict[tuple[str, str, str | None, str], Any] = dataclasses.field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    def get(self, kind: tuple[str, str], namespace: str | None, name: str) -> dict[str, Any] | None:
        """`api.get`, once per object (a KubeError is cached and raised again)."""
        key = (*kind, namespace, name)
        if key not in self._cache:
            try:
                self._cache[key] = self.api.get(*kind, namespace, name)
            except KubeError as err:
                self._cache[key] = err
        value = self._cache[key]
        if isinstance(value, KubeError):
            raise value
        return value


@dataclasses.dataclass
class Report:
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Note(str):
    """Yielded by a check: said on stderr, not a problem."""


CheckFn = Callable[[Context], Iterable[str]]
Title = str | Callable[[Context], str]  # a check's name, or how to name it for a job
CHECKS: list[tuple[Title, CheckFn]] = []


def check(what: Title) -> Callable[[CheckFn], CheckFn]:
    """Register a check; `what` names it in the note when it is skipped."""
    def register(fn: CheckFn) -> CheckFn:
        CHECKS.append((what, fn))
        return fn

    return register


def run(api: ClusterAPI, spec: js.JobSpec, objects: list[dict[str, Any]] | None = None, *,
        checks: Iterable[tuple[Title, CheckFn]] | None = None) -> Report:
    """Every check (default: `CHECKS`): the problems found and notes on what was skipped."""
    ctx = Context(api, spec, list(objects or []))
    report = Report()
    forbidden: list[str] = []  # checks RBAC refused: one note for all (a limited user's usual case)
    for what, fn in list(CHECKS if checks is None else checks):
        try:
            for finding in fn(ctx):
                (report.notes if isinstance(finding, Note) else report.problems).append(str(finding))
        except KubeError as err:
            if err.status == 0:  # unreachable: not a check to skip
                raise
            title = what(ctx) if callable(what) else what
            if err.forbidden:
                forbidden.append(title)
            else:
                report.notes.append(f"pre-flight: {title} not checked: the API could not answer ({err})")
    if forbidden:
        report.notes.append(f"pre-flight: not checked, not allowed to read: {', '.join(forbidden)} "
                            "(the optional ClusterRole of `leo-launch rbac --cluster-role` allows them)")
    return report


# ------------------------------------------------------------------ the checks


@check("the namespace")
def namespace_exists(ctx: Context) -> Iterable[str]:
    if ctx.get(NAMESPACE, None, ctx.namespace) is None:
        yield (f"namespace {ctx.namespace} does not exist (create it, or choose one with "
               "--namespace)")


@check("the storage Secret")
def storage_secret(ctx: Context) -> Iterable[str]:
    name = ctx.spec.storage_secret
    if not name:
        return
    secret = ctx.get(SECRET, ctx.namespace, name)
    if secret is None:
        yield (f"--storage-secret {name}: no Secret {name} in namespace {ctx.namespace} "
               "(the pods would fail with CreateContainerConfigError)")
        return
    keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    missing = [k for k in STORAGE_SECRET_KEYS if k not in keys]
    if missing:  # only key names are read, never values
        yield (f"--storage-secret {name}: Secret {name} has no {' or '.join(missing)} "
               f"(it holds: {', '.join(sorted(keys)) or 'nothing'})")


@check("the image pull Secrets")
def image_pull_secrets(ctx: Context) -> Iterable[str]:
    for name in ctx.spec.image_pull_secrets:
        secret = ctx.get(SECRET, ctx.namespace, name)
        if secret is None:
            yield (f"--image-pull-secret {name}: no Secret {name} in namespace {ctx.namespace} "
                   "(the pods would fail with ErrImagePull)")
        elif secret.get("type") not in REGISTRY_SECRET_TYPES:
            yield (f"--image-pull-secret {name}: Secret {name} is of type {secret.get('type') or 'Opaque'}, "
                   f"not {REGISTRY_SECRET_TYPES[0]} (kubectl create secret docker-registry)")


@check("the ServiceAccount")
def service_account(ctx: Context) -> Iterable[str]:
    name = ctx.spec.service_account
    if name and ctx.get(SERVICE_ACCOUNT, ctx.namespace, name) is None:
        yield (f"--service-account {name}: no ServiceAccount {name} in namespace {ctx.namespace} "
               "(the Job's pods would never be created)")


@check("the PriorityClass")
def priority_class(ctx: Context) -> Iterable[str]:
    name = ctx.spec.priority_class
    if name and ctx.get(PRIORITY_CLASS, None, name) is None:
        yield f"--priority-class {name}: no PriorityClass {name} in the cluster"


@check(lambda ctx: ctx.spec.flavour.operator or "the job's kind")
def job_flavour(ctx: Context) -> Iterable[str]:
    """Its kind's CRD (when an operator serves it), then the flavour's own checks."""
    flavour = ctx.spec.flavour
    if flavour.crd and ctx.get(CRD, None, flavour.crd) is None:
        yield flavour.missing_crd()
        return
    yield from flavour.preflight(ctx)


@check("the nodes' devices")
def device_resources(ctx: Context) -> Iterable[str]:
    problems = list(_capacity_problems(ctx))
    if not problems:
        return
    growth = _cluster_can_grow(ctx)
    for problem in problems:
        yield Note(f"pre-flight: {problem}; submitting anyway: {growth}") if growth else problem


def _cluster_can_grow(ctx: Context) -> str | None:
    """Why the cluster may add the nodes the job lacks (an autoscaler found, or one that
    cannot be ruled out), None when it cannot grow."""
    nodes = ctx.api.list(*NODE, None)
    labelled = sorted({k for n in nodes for k in ((n.get("metadata") or {}).get("labels") or {})
                       if k in AUTOSCALED_NODE_LABELS})
    if labelled:
        return f"nodes carry {labelled[0]}: an autoscaler may add nodes once the pods are pending"
    unknown = []
    for what, kind, namespace, name in (("cluster-autoscaler", CONFIGMAP, *AUTOSCALER_STATUS),
                                        ("Karpenter", CRD, None, KARPENTER_CRD)):
        try:
            if ctx.get(kind, namespace, name) is not None:
                return f"{what} is installed and may add nodes once the pods are pending"
        except KubeError as err:
            if err.status == 0:
                raise
            unknown.append(f"{kind[1]} {name}")
    if unknown:
        return (f"an autoscaler cannot be ruled out ({', '.join(unknown)} not readable); if the "
                "cluster cannot grow, the pods stay Pending (leo-launch status says why)")
    return None


def _capacity_problems(ctx: Context) -> Iterable[str]:
    resource = ctx.spec.resource_name
    if not resource:
        return
    per_node, needed = ctx.spec.cards_per_node, ctx.spec.nodes
    selector = dict(ctx.spec.node_selector or ())
    matching = [n for n in ctx.api.list(*NODE, None) if _has_labels(n, selector)]
    # a cordoned node takes no new pods (Volcano's gang never binds there either)
    nodes = [n for n in matching if not (n.get("spec") or {}).get("unschedulable")]
    cordoned = sorted(_name(n) for n in matching if n not in nodes)
    where = f" matching --node-selector {_pairs(selector)}" if selector else ""
    advertised = {name: count for name, count in ((_name(n), _allocatable(n, resource)) for n in nodes)
                  if count is not None}
    if not advertised:
        plugin = DEVICE_PLUGINS.get(resource, "its device plugin")
        if selector and not nodes:
            yield f"no node{where}"
        else:
            yield f"no node{where} advertises {resource}: is {plugin} installed?"
        return
    enough = sorted(name for name, count in advertised.items() if count >= per_node)
    if not enough:
        most = max(advertised.items(), key=lambda item: item[1])
        yield (f"no node{where} has {per_node} {resource} allocatable (at most {most[1]}, on "
               f"{most[0]}): use more --nodes for fewer cards per node")
    elif len(enough) < needed:  # one pod per node (required anti-affinity)
        also = f"; cordoned: {', '.join(cordoned)}" if cordoned else ""
        yield (f"only {len(enough)} node(s){where} have {per_node} {resource} allocatable "
               f"({', '.join(enough)}{also}); the job needs {needed}, one pod per node")


@check("Pod Security")
def pod_security(ctx: Context) -> Iterable[str]:
    namespace = ctx.get(NAMESPACE, None, ctx.namespace)
    if namespace is None:
        return  # the namespace check says it is missing
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    problem = job_admission_problem(labels, ctx.spec)
    if problem:
        yield problem


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def _has_labels(node: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _pairs(pairs: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs.items())


def _allocatable(node: Mapping[str, Any], resource: str) -> int | None:
    """Whole devices the node can give (None: it does not advertise the resource)."""
    value = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError:
        return 0  # devices are counted in whole units; anything else gives none
