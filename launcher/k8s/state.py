"""Pure functions over Kubernetes API objects: a job's phase, per-rank state and why it
waits, from its job object (its flavour reads it), pods, events and PodGroups. No HTTP:
unit-tested on dicts."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from launcher import flavours
from launcher.flavours.base import DEADLINE_EXCEEDED
from launcher.flavours.base import reason_text as _reason_text
from launcher.outputs.layout import job_url_of
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.storage.base import StorageSettings
from launcher.util.times import age, parse_time

# where a pod's node rank may be: every flavour's annotations and labels
RANK_KEYS = tuple(dict.fromkeys(k for f in flavours.FLAVOURS.values() for k in f.rank_keys))
JOB_KINDS = {f.api[1] for f in flavours.FLAVOURS.values()}
CONTAINER_NAMES = (contract.CONTAINER_NAME, *{f.container for f in flavours.FLAVOURS.values() if f.container})
WAITING_PROBLEMS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                    "CrashLoopBackOff", "PreCreateHookError", "PostStartHookError")
# warnings of the scheduler (and the cluster autoscaler) about a pod not yet bound
SCHEDULING_WARNINGS = ("FailedScheduling", "NotTriggerScaleUp", "FailedPreemption")
_POD_NAME_INDEX = re.compile(r"-(\d+)(?:-[a-z0-9]{5})?$")


def meta(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def labels_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def is_ours(obj: Mapping[str, Any] | None, job: str | None = None) -> bool:
    labels = labels_of(obj)
    if labels.get(contract.LABEL_MANAGED_BY) != contract.MANAGER:
        return False
    return job is None or labels.get(contract.LABEL_JOB) == job


def created_at(obj: Mapping[str, Any] | None) -> float | None:
    return parse_time(meta(obj).get("creationTimestamp"))


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    """A pod's node rank: the index its flavour's controller puts in an annotation or
    label, or the index in its name (`<job>-<index>-<suffix>`, `<job>-worker-<index>`).
    A pod with a role other than worker (e.g. MindSpore's scheduler) has none."""
    m = meta(pod)
    if (m.get("labels") or {}).get(contract.LABEL_ROLE) == contract.ASCENDJOB_SCHEDULER:
        return None
    own = flavours.FLAVOURS.get((m.get("annotations") or {}).get(contract.ANNOTATION_SCHEDULER, ""))
    keys = own.rank_keys if own is not None else RANK_KEYS  # a JobSet's pods carry a Job's index too
    for source in (m.get("annotations") or {}, m.get("labels") or {}):
        for key in keys:
            value = str(source.get(key, ""))
            if value.isdigit():
                return int(value)
    match = _POD_NAME_INDEX.search(str(m.get("name", "")))
    return int(match.group(1)) if match else None


def pods_by_rank(pods: Iterable[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Pods of each node rank, oldest first."""
    out: dict[int, list[dict[str, Any]]] = {}
    for pod in pods:
        rank = pod_rank(pod)
        if rank is not None:
            out.setdefault(rank, []).append(dict(pod))
    for items in out.values():
        items.sort(key=lambda p: (created_at(p) or 0.0, meta(p).get("name", "")))
    return out


def current_pod(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod that stands for a rank now: the newest one not being deleted."""
    live = [p for p in pods if not meta(p).get("deletionTimestamp")]
    return (live or pods)[-1]


def container_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    statuses = ((pod.get("status") or {}).get("containerStatuses")) or []
    for status in statuses:
        if status.get("name") in CONTAINER_NAMES:
            return status
    return statuses[0] if statuses else {}


def exit_description(code: Any, reason: str | None = None) -> str:
    text = f"exit code {code}"
    if code == contract.EXIT_BAD_CONFIG:
        text += " (bad configuration, not retried)"
    elif reason and reason not in ("Error", "Completed"):
        text += f" ({reason})"
    return text


def terminated_text(terminated: Mapping[str, Any]) -> str:
    """A finished container: its exit code and the last line of its termination message
    (the bootstrap's one-line reason, else the kubelet's tail of the log)."""
    text = exit_description(terminated.get("exitCode"), terminated.get("reason"))
    lines = [line.strip() for line in str(terminated.get("message") or "").splitlines() if line.strip()]
    return f"{text}: {lines[-1][:300]}" if lines else text


def pod_problem(pod: Mapping[str, Any], events: Iterable[Mapping[str, Any]] = ()) -> str | None:
    """Why a pod does not run: a container waiting on an image or config, the scheduler's
    verdict in its conditions, or its latest warning event that still holds (a scheduling
    warning no longer does once the pod is bound)."""
    status = pod.get("status") or {}
    state = container_status(pod).get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in WAITING_PROBLEMS:
        return _reason_text(waiting.get("reason"), waiting.get("message"))
    for condition in status.get("conditions") or []:
        # Volcano's "Schedulable": the pod fits but waits for its gang (the PodGroup says why)
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") != "Schedulable":
            return _reason_text(condition.get("reason") or "Unschedulable", condition.get("message"))
    name = meta(pod).get("name")
    mine = [e for e in events if _involves(e, "Pod", name)]
    warnings = [e for e in mine if e.get("type") == "Warning"]
    if is_bound(pod):
        # the scheduler's warnings (and any before the binding) are history now
        bound_at = max((event_time(e) for e in mine if e.get("reason") == "Scheduled"), default=None)
        warnings = [e for e in warnings if e.get("reason") not in SCHEDULING_WARNINGS
                    and (bound_at is None or event_time(e) > bound_at)]
    if warnings:
        latest = max(warnings, key=event_time)
        return _reason_text(latest.get("reason"), latest.get("message"))
    if waiting.get("reason"):
        return _reason_text(waiting.get("reason"), waiting.get("message"))
    return None


def is_bound(pod: Mapping[str, Any]) -> bool:
    """The scheduler has put the pod on a node."""
    if (pod.get("spec") or {}).get("nodeName"):
        return True
    return any(c.get("type") == "PodScheduled" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _involves(event: Mapping[str, Any], kind: str, name: Any) -> bool:
    obj = event.get("involvedObject") or event.get("regarding") or {}
    return obj.get("kind") == kind and obj.get("name") == name


def event_time(event: Mapping[str, Any]) -> float:
    """When the event last happened, by whichever time is set: the scheduler's events carry
    only `eventTime` (and `series.lastObservedTime` once repeated), older components
    `lastTimestamp`/`firstTimestamp`."""
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
                  event.get("firstTimestamp")):
        when = parse_time(value)
        if when is not None:
            return when
    return created_at(event) or 0.0


def podgroup_problem(podgroups: Iterable[Mapping[str, Any]]) -> str | None:
    """The gang scheduler's reason a gang does not start (PodGroup conditions, e.g.
    Unschedulable). Volcano leaves that condition in place once the gang is bound, so it
    no longer counts when the group runs or a `Scheduled` condition is as new."""
    def when(condition: Mapping[str, Any]) -> float:
        return parse_time(condition.get("lastTransitionTime")) or 0.0

    for group in podgroups:
        status = group.get("status") or {}
        if status.get("phase") in ("Running", "Completed"):
            continue
        conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
        bad = [c for c in conditions if c.get("type") == "Unschedulable"]
        if not bad:
            continue
        latest = max(bad, key=when)
        if any(c.get("type") == "Scheduled" and when(c) >= when(latest) for c in conditions):
            continue
        return _reason_text(latest.get("reason") or "Unschedulable", latest.get("message"))
    return None


def podgroups_of(podgroups: Iterable[Mapping[str, Any]], job: str) -> list[dict[str, Any]]:
    """The PodGroups the gang scheduler made for job `job` (owner reference, else name)."""
    out = []
    for group in podgroups:
        owners = meta(group).get("ownerReferences") or []
        name = meta(group).get("name", "")
        if any(o.get("kind") in JOB_KINDS and o.get("name") == job for o in owners) or \
                (not owners and (name == job or name.startswith(f"{job}-"))):
            out.append(dict(group))
    return out


# ------------------------------------------------------------------ what a job is


@dataclasses.dataclass
class JobInfo:
    """What status needs to know of a job, from its Job object (and ConfigMap, if any)."""

    name: str
    namespace: str
    scheduler: str  # its flavour's name (launcher.flavours)
    obj: dict[str, Any]
    experiment: str | None = None
    accelerator: str | None = None
    cards: int | None = None
    nodes: int | None = None
    max_restarts: int | None = None
    train_url: str | None = None
    storage: StorageSettings = StorageSettings()  # the job's endpoint, region, addressing

    @property
    def cards_per_node(self) -> int:
        if self.cards and self.nodes:
            return max(self.cards // self.nodes, 1)
        return 1

    @property
    def job_url(self) -> str | None:
        return job_url_of(self.train_url, self.name)


def _template_env(obj: Mapping[str, Any], scheduler: str) -> dict[str, str]:
    template = flavours.flavour_of(scheduler).worker_template(obj)
    containers = (template.get("spec") or {}).get("containers") or []
    env = {}
    for container in containers[:1]:
        for var in container.get("env") or []:
            if "value" in var:
                env[var.get("name")] = var.get("value")
    return env


def job_info(obj: Mapping[str, Any], scheduler: str, spec: js.JobSpec | None = None) -> JobInfo:
    m = meta(obj)
    labels, annotations = m.get("labels") or {}, m.get("annotations") or {}

    def number(value: Any) -> int | None:
        return int(value) if str(value).isdigit() else None

    nodes, max_restarts = flavours.flavour_of(scheduler).job_fields(obj)
    nodes = number(annotations.get(contract.ANNOTATION_NODES)) or nodes
    env = _template_env(obj, scheduler)
    info = JobInfo(name=m.get("name", ""), namespace=m.get("namespace", ""), scheduler=scheduler,
                   obj=dict(obj), experiment=labels.get(contract.LABEL_EXPERIMENT),
                   accelerator=labels.get(contract.LABEL_ACCEL),
                   cards=number(annotations.get(contract.ANNOTATION_CARDS)), nodes=nodes,
                   max_restarts=max_restarts, train_url=env.get(contract.ENV_TRAIN_URL),
                   storage=StorageSettings.from_env(env))
    if spec is not None:
        info.experiment, info.accelerator = spec.experiment, spec.accelerator
        info.cards, info.nodes, info.max_restarts = spec.cards, spec.nodes, spec.max_restarts
        info.train_url, info.storage = spec.train_url, spec.storage
    return info



def summarize(info: JobInfo, pods: Iterable[Mapping[str, Any]], *,
              events: Iterable[Mapping[str, Any]] = (), podgroups: Iterable[Mapping[str, Any]] = (),
              now: float | None = None) -> dict[str, Any]:
    """The status dict of a job (see launcher.backends.base.JobStatus) from its API objects; no progress."""
    now = time.time() if now is None else now
    events = list(events)
    pods = [p for p in pods if is_ours(p, info.name)]
    by_rank = pods_by_rank(pods)
    unranked = [(f"{labels_of(p).get(contract.LABEL_ROLE) or 'unranked'} pod", p) for p in pods
                if pod_rank(p) is None]
    nodes = info.nodes or (max(by_rank) + 1 if by_rank else 1)
    per_node = info.cards_per_node
    current = {rank: current_pod(items) for rank, items in by_rank.items()}
    phase, reason = _job_phase(info, current, by_rank, podgroups, events, unranked)
    ranks: list[dict[str, Any]] = []
    restarts_max = 0
    for node_rank in range(nodes):
        pod = current.get(node_rank)
        entry: dict[str, Any] = {"node_rank": node_rank}
        if pod is None:
            entry.update(phase="Pending", pod=None, node=None, restarts=0, reason="no pod yet")
        else:
            cstatus = container_status(pod)
            pod_phase = (pod.get("status") or {}).get("phase") or "Pending"
            if meta(pod).get("deletionTimestamp") and pod_phase in ("Pending", "Running"):
                pod_phase = "Terminating"  # as kubectl says: it is being stopped
            restarts = len(by_rank[node_rank]) - 1 + int(cstatus.get("restartCount") or 0)
            if pod_phase == "Failed" and phase == "Restarting":
                restarts += 1  # being replaced: the new pod does not exist yet
            restarts_max = max(restarts_max, restarts)
            started = created_at(pod)
            entry.update(phase=pod_phase, pod=meta(pod).get("name"),
                         node=(pod.get("spec") or {}).get("nodeName"), restarts=restarts,
                         age_seconds=None if started is None else round(now - started, 1),
                         age=age(None if started is None else now - started))
            terminated = (cstatus.get("state") or {}).get("terminated") or {}
            if pod_phase == "Pending":
                problem = pod_problem(pod, events)
                if problem:
                    entry["reason"] = problem
            elif pod_phase == "Failed":
                pstatus = pod.get("status") or {}
                # a pod past its activeDeadlineSeconds (--max-runtime): its kill code says less
                entry["reason"] = (terminated_text(terminated)
                                   if terminated and pstatus.get("reason") != DEADLINE_EXCEEDED
                                   else _reason_text(pstatus.get("reason"), pstatus.get("message")))
        for offset in range(per_node):
            ranks.append({"rank": node_rank * per_node + offset, **entry})
    created = created_at(info.obj)
    out: dict[str, Any] = {
        "name": info.name, "backend": "k8s", "namespace": info.namespace, "phase": phase,
        "experiment": info.experiment, "accelerator": info.accelerator, "cards": info.cards,
        "nodes": nodes, "scheduler": info.scheduler, "restarts": restarts_max,
        "max_restarts": info.max_restarts,
        "age_seconds": None if created is None else round(now - created, 1),
        "age": age(None if created is None else now - created),
        "outputs_url": info.job_url, "ranks": ranks,
    }
    retries = flavours.flavour_of(info.scheduler).restarts(info.obj)
    if retries is not None:
        out["restarts"] = max(restarts_max, retries)
    if reason:
        out["reason"] = reason
    return out


def _job_phase(info: JobInfo, current: dict[int, dict[str, Any]],
               by_rank: dict[int, list[dict[str, Any]]], podgroups: Iterable[Mapping[str, Any]],
               events: list[Mapping[str, Any]],
               unranked: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> tuple[str, str | None]:
    nodes = info.nodes or len(current) or 1
    phases = {rank: (pod.get("status") or {}).get("phase") or "Pending" for rank, pod in current.items()}
    failed_pods = sum(1 for items in by_rank.values() for p in items
                      if (p.get("status") or {}).get("phase") == "Failed")
    last_failure = _last_failure(by_rank)
    flavour = flavours.flavour_of(info.scheduler)
    decided = flavour.phase(info.obj, last_failure)  # the controller's word, when it has one
    if decided is not None:
        return decided
    failed_pods = max(failed_pods, flavour.failed_pods(info.obj))
    fatal = _job_failing_failure(flavour.pod_failure_rules(info.obj), by_rank)
    if fatal:  # the pod failure policy fails the job; its condition follows shortly
        return "Failed", fatal
    all_running = len(phases) >= nodes and all(p in ("Running", "Succeeded") for p in phases.values()) \
        and all((p.get("status") or {}).get("phase") in ("Running", "Succeeded") for _, p in unranked)
    if all_running and any(p == "Running" for p in phases.values()):
        return "Running", None
    if all_running:
        return "Running", "finishing"
    waiting = pending_reason(info, current, podgroups, events, unranked)
    if failed_pods:
        text = f"after {last_failure}" if last_failure else "after a failure"
        return "Restarting", f"{text}; {waiting}" if waiting else text
    return "Pending", waiting


def _job_failing_failure(rules: list[dict[str, Any]], by_rank: dict[int, list[dict[str, Any]]]) -> str | None:
    """A failed pod whose exit code a FailJob rule of the job's podFailurePolicy matches
    (exit code 2, bad configuration): the job fails, it is not restarted."""
    rules = [r for r in rules if r.get("action") == "FailJob" and r.get("onExitCodes")]
    for rank, items in sorted(by_rank.items()):
        for pod in items:
            if (pod.get("status") or {}).get("phase") != "Failed":
                continue
            terminated = (container_status(pod).get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            for rule in rules:
                match = rule["onExitCodes"]
                values = match.get("values") or []
                if match.get("containerName") not in (None, contract.CONTAINER_NAME):
                    continue
                if isinstance(code, int) and (code in values) == (match.get("operator", "In") == "In"):
                    return f"node rank {rank} ({meta(pod).get('name')}) {terminated_text(terminated)}"
    return None


def _last_failure(by_rank: dict[int, list[dict[str, Any]]]) -> str | None:
    failures = []
    for rank, items in by_rank.items():
        for pod in items:
            if (pod.get("status") or {}).get("phase") != "Failed":
                continue
            terminated = (container_status(pod).get("state") or {}).get("terminated") or {}
            when = parse_time(terminated.get("finishedAt")) or created_at(pod) or 0.0
            what = terminated_text(terminated) if terminated else ((pod.get("status") or {}).get("reason") or "failed")
            failures.append((when, f"node rank {rank} ({meta(pod).get('name')}) {what}"))
    return max(failures)[1] if failures else None


def pending_reason(info: JobInfo, current: dict[int, dict[str, Any]],
                   podgroups: Iterable[Mapping[str, Any]],
                   events: list[Mapping[str, Any]],
                   unranked: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> str | None:
    """Why the job does not run yet: the gang's PodGroup (it says why a whole gang waits,
    while each of its pods may fit), else the first pod problem (by rank, then pods of
    other roles), else the job object's own warnings (e.g. FailedCreate over a quota, or
    an operator's)."""
    nodes = info.nodes or len(current) or 1
    waiting = [(rank, pod) for rank, pod in sorted(current.items())
               if (pod.get("status") or {}).get("phase") in (None, "Pending")]
    problem = podgroup_problem(podgroups)
    if problem:
        return problem
    for rank, pod in waiting:
        problem = pod_problem(pod, events)
        if problem:
            return problem if nodes == 1 else f"node rank {rank}: {problem}"
    for what, pod in unranked:
        if (pod.get("status") or {}).get("phase") in (None, "Pending") and (problem := pod_problem(pod, events)):
            return f"{what}: {problem}"
    kind = flavours.flavour_of(info.scheduler).api[1]
    warnings = [e for e in events if _involves(e, kind, info.name) and e.get("type") == "Warning"]
    if warnings:
        latest = max(warnings, key=event_time)
        return _reason_text(latest.get("reason"), latest.get("message"))
    missing = nodes - len(current)
    if missing == nodes:
        return "waiting for the job's pods to be created"
    if missing > 0:
        return f"{missing} of {nodes} pods not created yet"
    if waiting:
        return f"{len(waiting)} of {nodes} pods starting"
    return None
