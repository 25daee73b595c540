"""Reading a leo-launch job from a cluster: its spec (the ConfigMap), its job object (of
its flavour's kind), its pods, and its status and list entries (launcher.k8s.state decides phases)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from launcher import flavours
from launcher.backends.base import (
    JobNotFoundError,
    JobOutputs,
)
from launcher.errors import LaunchError
from launcher.k8s.api import (
    CONFIGMAP,
    EVENT,
    PLURALS,
    POD,
    ClusterAPI,
    KubeError,
)
from launcher.k8s.config import Cluster, connect
from launcher.k8s.rbac import Rule
from launcher.k8s.state import (
    JobInfo,
    is_ours,
    job_info,
    labels_of,
    meta,
    podgroups_of,
    summarize,
)
from launcher.outputs.layout import job_url_of
from launcher.outputs.metrics import read_progress
from launcher.spec import contract
from launcher.spec import jobspec as js

POLL = 2.0


# ------------------------------------------------------------------ reading a job


def read_spec(api: ClusterAPI, name: str, namespace: str) -> js.JobSpec | None:
    """The JobSpec in the job's ConfigMap (None when missing or unreadable)."""
    cm = api.get(*CONFIGMAP, namespace, f"{name}-config")
    if not cm or not is_ours(cm):
        return None
    text = (cm.get("data") or {}).get(contract.JOB_FILE)
    if not text:
        return None
    try:
        return js.JobSpec.from_yaml(text)
    except Exception:  # noqa: BLE001 - e.g. written by another version of leo-launch
        return None


def find_job(api: ClusterAPI, name: str, namespace: str,
             spec: js.JobSpec | None = None) -> JobInfo | None:
    """The job's object, of whichever flavour holds it (the spec's first). A kind RBAC
    forbids reading (e.g. Volcano's, for a user of plain Jobs) is skipped unless the job's
    spec says it is that kind, or no kind is readable."""
    wanted = spec.scheduler if spec is not None else None
    first = wanted if wanted in flavours.FLAVOURS else flavours.DEFAULT
    order = (first, *(s for s in flavours.FLAVOURS if s != first))
    refused: list[KubeError] = []
    for scheduler in order:
        kind = flavours.FLAVOURS[scheduler].api
        try:
            obj = api.get(*kind, namespace, name)
        except KubeError as err:
            if not err.forbidden or scheduler == wanted:
                raise
            refused.append(err)
            continue
        if obj is not None:
            if not is_ours(obj):
                raise JobNotFoundError(f"{kind[0]} {kind[1]} {name} in namespace {namespace} is not "
                                       "managed by leo-launch")
            return job_info(obj, scheduler, spec)
    if len(refused) == len(order):
        raise refused[0]
    return None


def our_pods(api: ClusterAPI, namespace: str | None, job: str | None = None) -> list[dict[str, Any]]:
    selector = f"{contract.LABEL_JOB}={job}" if job else f"{contract.LABEL_MANAGED_BY}={contract.MANAGER}"
    return [p for p in api.list(*POD, namespace, label_selector=selector) if is_ours(p, job)]


def _optional(api: ClusterAPI, kind: tuple[str, str], namespace: str, refused: list[str] | None = None,
              **selectors: Any) -> list[dict[str, Any]]:
    """Objects that only refine a status (events, PodGroups): none when we may not read
    them (then `refused` gets the missing right, e.g. "list events")."""
    try:
        return api.list(*kind, namespace, **selectors)
    except KubeError as err:
        if err.status in (401, 403):
            if refused is not None:
                refused.append(_right("list", kind))
            return []
        raise


def _right(verb: str, kind: tuple[str, str]) -> str:
    """`verb resource.group` of a kind, as the access check names a missing right."""
    group = kind[0].rpartition("/")[0]
    return str(Rule(group, PLURALS.get(kind[1], kind[1].lower() + "s"), verb))


def status(cluster: Cluster, name: str, namespace: str | None = None, *,
           progress: bool = True) -> dict[str, Any]:
    api, ns = cluster.api, namespace or cluster.namespace
    spec = read_spec(api, name, ns)
    info = find_job(api, name, ns, spec)
    if info is None:
        hint = (" (its ConfigMap is left over: leo-launch cancel removes it)" if spec is not None
                else "")
        raise JobNotFoundError(f"no job {name!r} in namespace {ns} ({cluster.describe()}){hint}")
    pods = our_pods(api, ns, name)
    podgroup = flavours.flavour_of(info.scheduler).podgroup
    refused: list[str] = []
    groups = podgroups_of(_optional(api, podgroup, ns, refused), name) if podgroup else []
    result = summarize(info, pods, podgroups=groups)
    if result["phase"] in ("Pending", "Restarting"):
        # warnings, and the scheduler's later word that a pod was bound after all
        events = (_optional(api, EVENT, ns, refused, field_selector="type=Warning")
                  + _optional(api, EVENT, ns, refused, field_selector="reason=Scheduled"))
        result = summarize(info, pods, events=events, podgroups=groups)
        if refused:  # the reason may be missing: say which right would tell it
            missing = f"not allowed to {', '.join(dict.fromkeys(refused))}"
            result["reason"] = f"{result['reason']} ({missing})" if result.get("reason") else missing
    if progress:
        result.update(read_progress(info.job_url, storage=info.storage))
    return result


def list_jobs(cluster: Cluster, namespace: str | None = None, *, all_namespaces: bool = False,
              progress: bool = True) -> list[dict[str, Any]]:
    api = cluster.api
    ns = None if all_namespaces else (namespace or cluster.namespace)
    selector = f"{contract.LABEL_MANAGED_BY}={contract.MANAGER}"
    infos = []
    refused: list[KubeError] = []
    for flavour in flavours.FLAVOURS.values():
        # an operator's kind may be absent (none listed); a kind RBAC forbids holds none of
        # this user's jobs, unless every kind is forbidden
        try:
            objs = api.list(*flavour.api, ns, label_selector=selector)
        except KubeError as err:
            if not err.forbidden:
                raise
            refused.append(err)
            continue
        infos += [job_info(j, flavour.name) for j in objs if is_ours(j)]
    if len(refused) == len(flavours.FLAVOURS):
        rights = ", ".join(_right("list", f.api) for f in flavours.FLAVOURS.values())
        where = f"namespace {ns}" if ns else "any namespace"
        raise LaunchError(f"not allowed to list jobs of any kind in {where} (one of: {rights}); "
                          "a cluster admin can grant the Role that `leo-launch rbac` prints")
    pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in our_pods(api, ns):
        key = (meta(pod).get("namespace", ""), labels_of(pod).get(contract.LABEL_JOB, ""))
        pods.setdefault(key, []).append(pod)
    items = [summarize(info, pods.get((info.namespace, info.name), [])) for info in infos]
    if progress and items:
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            found = list(pool.map(lambda info: read_progress(info.job_url, storage=info.storage),
                                  infos))
        for item, extra in zip(items, found, strict=True):
            item.update(extra)
    return sorted(items, key=lambda i: (i.get("namespace", ""), i["name"]))


def outputs_of(name: str, *, namespace: str | None = None, context: str | None = None,
               cluster: Cluster | None = None) -> JobOutputs | None:
    """`<train_url>/<name>` of a Kubernetes job and its storage settings (from its
    ConfigMap, else its Job's pod environment), None when there is no such job."""
    cluster = cluster or connect(context, namespace)
    ns = namespace or cluster.namespace
    spec = read_spec(cluster.api, name, ns)
    info = find_job(cluster.api, name, ns, spec) if spec is None else None
    if spec is None and info is None:
        return None
    train_url = spec.train_url if spec is not None else info.train_url  # type: ignore[union-attr]
    if not train_url:
        raise LaunchError(f"job {name} in namespace {ns} has no train_url: its outputs were not published")
    storage = spec.storage if spec is not None else info.storage  # type: ignore[union-attr]
    return JobOutputs(str(job_url_of(train_url, name)), storage)
