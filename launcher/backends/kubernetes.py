"""The Kubernetes backend: submit, status, logs, list and cancel with the official client,
through the thin `ClusterAPI` (launcher.k8s.api) and the pure reading of API objects
(launcher.k8s.state).

What a job is made of: the ConfigMap `<name>-config` (job.yaml, experiment.yaml), for
`--scheduler job` a headless Service and an Indexed `batch/v1` Job, for `--scheduler
volcano` a `batch.volcano.sh/v1alpha1` Job (its PodGroup is Volcano's), for `--scheduler
ascendjob` a `mindxdl.gitee.com/v1` AscendJob (its pods, Service and PodGroup are the
ascend-operator's), for Ascend with Volcano (or rank table `controller`) also
`rings-config-<name>`. Every object and pod is labelled
`app.kubernetes.io/managed-by: leo-launch` and `leo-launch/job: <name>`; label selectors
are sent to the API and also checked here.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from launcher.backends.base import (
    FINAL_PHASES,
    JobExistsError,
    JobNotFoundError,
    JobStatus,
)
from launcher.errors import LaunchError, UsageError
from launcher.k8s import preflight
from launcher.k8s.api import (
    ASCEND_JOB,
    BATCH_JOB,
    CONFIGMAP,
    EVENT,
    POD,
    PODGROUP,
    SERVICE,
    VOLCANO_JOB,
    ClusterAPI,
    KubeError,
)
from launcher.k8s.config import Cluster, connect
from launcher.k8s.state import (
    JobInfo,
    container_status,
    current_pod,
    is_ours,
    job_info,
    labels_of,
    meta,
    pod_rank,
    podgroups_of,
    pods_by_rank,
    summarize,
)
from launcher.outputs.layout import job_url_of
from launcher.outputs.logs import last_lines, last_lines_per_rank, print_published_logs, rank_filter
from launcher.outputs.metrics import read_progress
from launcher.spec import contract
from launcher.spec import jobspec as js

POLL = 2.0
JOB_KINDS = {"job": BATCH_JOB, "volcano": VOLCANO_JOB, "ascendjob": ASCEND_JOB}  # by --scheduler


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
    """The job's Job, vcjob or AscendJob. A kind RBAC forbids reading (e.g. Volcano's, for a
    user of plain Jobs) is skipped unless the job's spec says it is that kind, or no kind is
    readable."""
    wanted = spec.scheduler if spec is not None else None
    first = wanted if wanted in JOB_KINDS else "job"
    order = (first, *(s for s in JOB_KINDS if s != first))
    refused: list[KubeError] = []
    for scheduler in order:
        kind = JOB_KINDS[scheduler]
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


def _optional(api: ClusterAPI, kind: tuple[str, str], namespace: str, **selectors: Any) -> list[dict[str, Any]]:
    """Objects that only refine a status (events, PodGroups): none when we may not read them."""
    try:
        return api.list(*kind, namespace, **selectors)
    except KubeError as err:
        if err.status in (401, 403):
            return []
        raise


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
    groups = (podgroups_of(_optional(api, PODGROUP, ns), name) if info.scheduler in ("volcano", "ascendjob")
              else [])
    result = summarize(info, pods, podgroups=groups)
    if result["phase"] in ("Pending", "Restarting"):
        # warnings, and the scheduler's later word that a pod was bound after all
        events = (_optional(api, EVENT, ns, field_selector="type=Warning")
                  + _optional(api, EVENT, ns, field_selector="reason=Scheduled"))
        result = summarize(info, pods, events=events, podgroups=groups)
    if progress:
        result.update(read_progress(info.job_url, endpoint=info.storage_endpoint))
    return result


def list_jobs(cluster: Cluster, namespace: str | None = None, *, all_namespaces: bool = False,
              progress: bool = True) -> list[dict[str, Any]]:
    api = cluster.api
    ns = None if all_namespaces else (namespace or cluster.namespace)
    selector = f"{contract.LABEL_MANAGED_BY}={contract.MANAGER}"
    infos = [job_info(j, "job") for j in api.list(*BATCH_JOB, ns, label_selector=selector) if is_ours(j)]
    for scheduler, kind in JOB_KINDS.items():  # Volcano, the ascend-operator: absent or forbidden → none
        if scheduler != "job":
            infos += [job_info(j, scheduler) for j in _optional(api, kind, ns, label_selector=selector)
                      if is_ours(j)]
    pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in our_pods(api, ns):
        key = (meta(pod).get("namespace", ""), labels_of(pod).get(contract.LABEL_JOB, ""))
        pods.setdefault(key, []).append(pod)
    items = [summarize(info, pods.get((info.namespace, info.name), [])) for info in infos]
    if progress and items:
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            found = list(pool.map(lambda info: read_progress(info.job_url, endpoint=info.storage_endpoint),
                                  infos))
        for item, extra in zip(items, found, strict=True):
            item.update(extra)
    return sorted(items, key=lambda i: (i.get("namespace", ""), i["name"]))


def train_url_of(name: str, *, namespace: str | None = None, context: str | None = None,
                 cluster: Cluster | None = None) -> str | None:
    """`<train_url>/<name>` of a Kubernetes job (from its ConfigMap, else its Job), None
    when there is no such job."""
    cluster = cluster or connect(context, namespace)
    ns = namespace or cluster.namespace
    spec = read_spec(cluster.api, name, ns)
    info = find_job(cluster.api, name, ns, spec) if spec is None else None
    if spec is None and info is None:
        return None
    train_url = spec.train_url if spec is not None else info.train_url  # type: ignore[union-attr]
    if not train_url:
        raise LaunchError(f"job {name} in namespace {ns} has no train_url: its outputs were not published")
    return job_url_of(train_url, name)


# ------------------------------------------------------------------ submit, cancel


def check_cluster(cluster: Cluster, spec: js.JobSpec, objects: list[dict[str, Any]], *,
                  err: TextIO | None = None) -> None:
    """Pre-flight (launcher.k8s.preflight): its notes on `err`; a LaunchError naming every
    problem when the job would not run."""
    err = err or sys.stderr
    report = preflight.run(cluster.api, spec, objects)
    for note in report.notes:
        err.write(f"leo-launch: note: {note}\n")
    err.flush()
    if report.problems:
        raise LaunchError(f"pre-flight ({cluster.describe()}): {'; '.join(report.problems)}; "
                          "nothing was created")


def submit(cluster: Cluster, spec: js.JobSpec, objects: list[dict[str, Any]], *,
           warnings: Iterable[str] = (), out: TextIO | None = None,
           err: TextIO | None = None, check: bool = True) -> None:
    """Create the objects in order, after the pre-flight checks (`check`); on a failure
    delete what was created and raise with the API's reason."""
    out, err = out or sys.stdout, err or sys.stderr
    api, ns = cluster.api, spec.namespace
    existing = find_job(api, spec.name, ns, spec)
    if existing is not None:
        phase = summarize(existing, our_pods(api, ns, spec.name))["phase"]
        raise JobExistsError(f"job {spec.name} exists already in namespace {ns} ({phase}); choose "
                             f"another --name, or remove it with: leo-launch cancel {spec.name}")
    if check:
        check_cluster(cluster, spec, objects, err=err)
    created: list[dict[str, Any]] = []
    for obj in objects:
        try:
            api.create(obj)
        except KubeError as error:
            what = f"{obj['kind']} {meta(obj).get('name')}"
            raise LaunchError(f"creating {what} in namespace {ns} failed: {error}{_missing_crd(obj, error)}; "
                              f"{rollback(api, created)}") from error
        created.append(obj)
    names = ", ".join(f"{o['kind']} {meta(o).get('name')}" for o in objects)
    out.write(f"job {spec.name} submitted to namespace {ns} ({cluster.describe()}): {names}\n")
    out.flush()
    for warning in warnings:
        err.write(f"leo-launch: warning: {warning}\n")
    err.flush()


_OPERATORS = {ASCEND_JOB: "MindCluster's ascend-operator", VOLCANO_JOB: "Volcano"}


def _missing_crd(obj: Mapping[str, Any], error: KubeError) -> str:
    """A 404 on creating a custom resource: its CRD is not installed."""
    kind = (str(obj.get("apiVersion")), str(obj.get("kind")))
    operator = _OPERATORS.get(kind)
    if error.status != 404 or operator is None:
        return ""
    return f" (the cluster does not serve {kind[1]} {kind[0]}: is {operator} installed?)"


def rollback(api: ClusterAPI, created: list[dict[str, Any]]) -> str:
    """Delete `created` in reverse order; a sentence saying what happened."""
    if not created:
        return "nothing had been created"
    removed, failed = [], []
    for obj in reversed(created):
        what = f"{obj['kind']} {meta(obj).get('name')}"
        try:
            api.delete(obj["apiVersion"], obj["kind"], meta(obj).get("namespace"), meta(obj).get("name"))
            removed.append(what)
        except KubeError as error:
            failed.append(f"{what} ({error})")
    text = f"rolled back {', '.join(removed)}" if removed else ""
    if failed:
        text += ("; " if text else "") + f"could NOT delete {', '.join(failed)}: delete by hand"
    return text


def cancel(cluster: Cluster, name: str, namespace: str | None = None) -> str:
    """Delete the job's Job (with its pods), Service, ConfigMaps and any pod left;
    idempotent (a job that does not exist is nothing to cancel). A failure to read or
    delete one object does not stop the others: what could not be deleted is named in the
    LaunchError raised at the end. Volcano's API, when forbidden, is skipped (said only
    when it could hold the job)."""
    api, ns = cluster.api, namespace or cluster.namespace
    try:
        spec = read_spec(api, name, ns)
    except KubeError:
        spec = None  # the ConfigMap's own deletion below says why
    deleted: list[str] = []
    failed: list[str] = []
    unchecked = None
    found_job = False
    candidates = [(BATCH_JOB, name), (VOLCANO_JOB, name), (ASCEND_JOB, name), (SERVICE, name),
                  (CONFIGMAP, f"{name}-config"), (CONFIGMAP, f"rings-config-{name}")]
    for (api_version, kind), obj_name in candidates:
        what = f"{kind} {obj_name}"
        try:
            obj = api.get(api_version, kind, ns, obj_name)
            if obj is None or not is_ours(obj, name):
                continue
            found_job = found_job or kind in ("Job", "AscendJob")
            if api.delete(api_version, kind, ns, obj_name, propagation="Background"):
                deleted.append(what)
        except KubeError as error:
            optional = {VOLCANO_JOB: ("volcano", "a Volcano Job"),
                        ASCEND_JOB: ("ascendjob", "an AscendJob")}.get((api_version, kind))
            if optional and error.forbidden:
                scheduler, what_kind = optional
                if not found_job and (spec is None or spec.scheduler == scheduler):
                    unchecked = f"{what_kind} {name} could not be looked for ({error})"
                continue
            failed.append(f"{what} ({error})")
    pods = terminating = 0
    try:
        for pod in our_pods(api, ns, name):  # the garbage collector would; we do not wait for it
            if meta(pod).get("deletionTimestamp"):
                terminating += 1  # deleted already; its node has not confirmed yet
                continue
            try:
                if api.delete(*POD, ns, meta(pod).get("name"), propagation="Background"):
                    pods += 1
            except KubeError as error:
                failed.append(f"pod {meta(pod).get('name')} ({error})")
    except KubeError as error:
        failed.append(f"its pods ({error})")
    if pods:
        deleted.append(f"{pods} pod(s)")
    extra = [f"{terminating} pod(s) still terminating"] if terminating else []
    extra += [unchecked] if unchecked else []
    more = f" ({'; '.join(extra)})" if extra else ""
    if failed:
        done = f"deleted {', '.join(deleted)}; " if deleted else ""
        raise LaunchError(f"job {name} only partly cancelled in namespace {ns}: {done}could NOT "
                          f"delete {', '.join(failed)}{more}")
    if not deleted:
        return f"no job {name!r} in namespace {ns}: nothing to cancel{more}"
    return f"job {name} cancelled in namespace {ns}: deleted {', '.join(deleted)}{more}"


# ------------------------------------------------------------------ logs


def logs(cluster: Cluster, name: str, namespace: str | None = None, *, rank: int | None = None,
         all_ranks: bool = False, follow: bool = False, tail: int | None = None,
         out: TextIO | None = None, err: TextIO | None = None, poll: float = POLL) -> int:
    """Print rank `rank`'s lines (default 0; with its node's bootstrap lines) or, with
    `all_ranks`, every pod's stream merged live. With `follow`, keep going until the job
    ends (following restarted pods too). When no pod has logs any more, print what the
    job published under its train_url."""
    out, err = out or sys.stdout, err or sys.stderr
    api, ns = cluster.api, namespace or cluster.namespace
    spec = read_spec(api, name, ns)
    info = find_job(api, name, ns, spec)
    if info is None:
        raise JobNotFoundError(f"no job {name!r} in namespace {ns}; the logs of a job that is "
                               "gone are under its train_url: leo-launch logs <train_url>/<job>")
    per_node = info.cards_per_node
    world = (info.cards or per_node * (info.nodes or 1))
    if rank is not None and rank >= world:
        raise UsageError(f"--rank {rank}: job {name} has ranks 0..{world - 1}")
    wanted_rank = None if all_ranks else (rank or 0)
    node = None if wanted_rank is None else wanted_rank // per_node
    keep = rank_filter(wanted_rank, node)

    def current_pods() -> list[dict[str, Any]]:
        """The pod of each rank now (not the old pods of restarted ranks)."""
        return [current_pod(items) for r, items in pods_by_rank(our_pods(api, ns, name)).items()
                if node is None or r == node]

    seen: set[str] = set()
    unreadable: dict[str, str] = {}  # pod → why its log could not be read
    ranks_of: dict[str, int | None] = {}
    first = True
    while True:
        pods = current_pods()
        ready = [p for p in pods if meta(p).get("name") not in seen and _has_log(p)]
        if ready:
            unreadable.update(_stream(api, ns, ready, keep, follow=follow, tail=tail if first else None,
                                      per_node=per_node, per_rank=wanted_rank is None, out=out,
                                      container=_container(info)))
            seen.update(meta(p).get("name") for p in ready)
            ranks_of.update((meta(p).get("name"), pod_rank(p)) for p in ready)
            first = False
        elif first and not follow:
            return _published_fallback(info, wanted_rank, tail, out, err, pods)
        if not follow:
            break
        current = status(cluster, name, ns, progress=False)
        if current["phase"] in FINAL_PHASES and not [
                p for p in current_pods() if meta(p).get("name") not in seen and _has_log(p)]:
            if first:
                return _published_fallback(info, wanted_rank, tail, out, err, pods)
            break
        time.sleep(poll)
    if unreadable:
        return _unreadable_fallback(info, unreadable, ranks_of, wanted_rank, tail, out, err)
    return 0


def _container(info: JobInfo) -> str:
    """The training container: the ascend-operator injects its variables only into `ascend`."""
    return contract.ASCENDJOB_CONTAINER if info.scheduler == "ascendjob" else contract.CONTAINER_NAME


def _has_log(pod: Mapping[str, Any]) -> bool:
    """A container has started (running or terminated), so the API has a log for it."""
    state = container_status(pod).get("state") or {}
    if state.get("running") or state.get("terminated"):
        return True
    return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def _stream(api: ClusterAPI, namespace: str, pods: list[dict[str, Any]], keep: Callable[[str], bool],
            *, follow: bool, tail: int | None, per_node: int, per_rank: bool,
            out: TextIO, container: str = contract.CONTAINER_NAME) -> dict[str, str]:
    """Merge the logs of `pods` line by line as they arrive (without `follow`, pod by pod,
    the last `tail` lines of each rank with `per_rank`, else of the stream). Returns the
    pods whose log could not be read, with the API's reason."""
    lines: queue.Queue = queue.Queue()
    done = object()
    failed: dict[str, str] = {}
    # with a rank filter a pod's tail holds its other ranks' lines too: ask for more
    fetch = None if tail is None else tail * (per_node + 1)

    def reader(pod_name: str) -> None:
        try:
            for line in api.log_lines(namespace, pod_name, container=container,
                                      follow=follow, tail_lines=fetch):
                lines.put((pod_name, line))
        except KubeError as error:
            failed[pod_name] = str(error)
        finally:
            lines.put((pod_name, done))

    names = [meta(p).get("name") for p in pods]
    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    finished = 0
    buffered: dict[str, list[str]] = {n: [] for n in names}
    while finished < len(threads):
        pod_name, item = lines.get()
        if item is done:
            finished += 1
            continue
        if not keep(item):
            continue
        if follow:
            out.write(item + "\n")
            out.flush()
        else:
            buffered[pod_name].append(item)
    for pod_name in names:
        kept = last_lines_per_rank(buffered[pod_name], tail) if per_rank else last_lines(buffered[pod_name], tail)
        for line in kept:
            out.write(line + "\n")
    out.flush()
    return failed


def _unreadable_fallback(info: JobInfo, unreadable: dict[str, str], ranks_of: dict[str, int | None],
                         rank: int | None, tail: int | None, out: TextIO, err: TextIO) -> int:
    """Some pod's log could not be read (e.g. its kubelet is unreachable): say so on `err`,
    show what the job published for those ranks instead, exit code 1."""
    for pod_name, why in unreadable.items():
        err.write(f"leo-launch: error: cannot read the log of pod {pod_name}: {why}\n")
    if info.job_url is None:
        err.write("leo-launch: the job has no train_url: no published logs to show instead\n")
        return 1
    per_node = info.cards_per_node
    if rank is not None:
        wanted: list[int | None] = [rank]
    elif len(unreadable) == len(ranks_of):
        wanted = [None]  # every pod: every published rank
    else:
        nodes = sorted(n for p, n in ranks_of.items() if p in unreadable and n is not None)
        wanted = [n * per_node + i for n in nodes for i in range(per_node)]
    err.write(f"leo-launch: showing the logs published under {info.job_url} instead\n")
    err.flush()
    for number in wanted:
        try:
            print_published_logs(info.job_url, rank=number, tail=tail, endpoint=info.storage_endpoint,
                                 out=out, err=err)
        except LaunchError as error:
            err.write(f"leo-launch: error: cannot read the published logs: {error}\n")
            break
    return 1


def _published_fallback(info: JobInfo, rank: int | None, tail: int | None, out: TextIO,
                        err: TextIO, pods: list[dict[str, Any]]) -> int:
    if info.job_url is None:
        state = "pending" if pods else "gone"
        err.write(f"leo-launch: no logs: the job's pods are {state} and it has no train_url\n")
        return 0
    err.write(f"leo-launch: no pod has logs now; showing the logs published under {info.job_url}\n")
    print_published_logs(info.job_url, rank=rank, tail=tail, endpoint=info.storage_endpoint, out=out,
                         err=err)
    return 0


class KubernetesBackend:
    """`Backend` over a cluster (see launcher.backends.base)."""

    name = "k8s"

    def __init__(self, cluster: Cluster, namespace: str | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace or cluster.namespace

    @classmethod
    def connect(cls, context: str | None = None, namespace: str | None = None) -> KubernetesBackend:
        return cls(connect(context, namespace))

    def submit(self, spec: js.JobSpec, objects: list[dict[str, Any]], *, out: TextIO,
               err: TextIO, warnings: Iterable[str] = ()) -> None:
        submit(self.cluster, spec, objects, warnings=warnings, out=out, err=err)

    def status(self, name: str, *, progress: bool = True) -> JobStatus:
        return JobStatus.from_dict(status(self.cluster, name, self.namespace, progress=progress))

    def list(self, *, all_namespaces: bool = False) -> list[JobStatus]:
        return [JobStatus.from_dict(item) for item in
                list_jobs(self.cluster, self.namespace, all_namespaces=all_namespaces)]

    def logs(self, name: str, *, rank: int | None = None, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None, out: TextIO, err: TextIO) -> int:
        return logs(self.cluster, name, self.namespace, rank=rank, all_ranks=all_ranks,
                    follow=follow, tail=tail, out=out, err=err)

    def cancel(self, name: str) -> str:
        return cancel(self.cluster, name, self.namespace)

    def outputs_url(self, name: str) -> str:
        url = train_url_of(name, namespace=self.namespace, cluster=self.cluster)
        if url is None:
            raise JobNotFoundError(f"unknown job {name!r}: the cluster has no job of that name in "
                                   f"namespace {self.namespace}; pass the job's URL instead "
                                   f"(<train_url>/{name})")
        return url
