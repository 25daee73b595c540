"""The Kubernetes backend: submit, status, logs, list and cancel with the official client.

Layers:

* `ClusterAPI` — the thin interface everything else uses: create/get/list/delete plain
  dict objects and read a pod's log lines. `KubernetesAPI` implements it with the official
  `kubernetes` client (`ApiClient.call_api`, JSON in and out); tests use it against the
  kmock emulator and also replace it with an in-memory fake.
* `connect()` — configuration as kubectl finds it: `$KUBECONFIG` (':'-separated files) or
  ~/.kube/config with `--context`, else the in-cluster service account; the namespace is
  `--namespace`, else the context's, else `default`.
* Pure functions over API objects (`summarize`, `pending_reason`, `pod_rank`, ...) decide
  the job's phase, per-rank state and why it waits; they are unit-tested without HTTP.
* Commands: `submit` (dependency order, roll back on failure), `status`, `logs`,
  `list_jobs`, `cancel` (idempotent), `train_url_of` (for pull).

What a job is made of: the ConfigMap `<name>-config` (job.yaml, experiment.yaml), for
`--scheduler job` a headless Service and an Indexed `batch/v1` Job, for `--scheduler
volcano` a `batch.volcano.sh/v1alpha1` Job (its PodGroup is Volcano's), for Ascend with
Volcano also `rings-config-<name>`. Every object and pod is labelled
`app.kubernetes.io/managed-by: leo-launch` and `leo-launch/job: <name>`; label selectors
are sent to the API and also checked here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TextIO

from launcher import jobspec as js
from launcher.errors import LaunchError, UsageError
from launcher.jobs import (
    FINAL_PHASES,
    IN_CLUSTER_NAMESPACE,
    JobExistsError,
    JobNotFoundError,
    age,
    in_cluster,
    job_url_of,
    kubeconfig_paths,
    last_lines,
    parse_time,
    rank_filter,
    read_progress,
)

BATCH_JOB = ("batch/v1", "Job")
VOLCANO_JOB = ("batch.volcano.sh/v1alpha1", "Job")
PODGROUP = ("scheduling.volcano.sh/v1beta1", "PodGroup")
POD = ("v1", "Pod")
EVENT = ("v1", "Event")
CONFIGMAP = ("v1", "ConfigMap")
SERVICE = ("v1", "Service")
PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Pod": "pods", "Event": "events",
           "Job": "jobs", "PodGroup": "podgroups", "Secret": "secrets"}
VOLCANO_TASK_INDEX = "volcano.sh/task-index"
WAITING_PROBLEMS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                    "CrashLoopBackOff", "PreCreateHookError", "PostStartHookError")
POLL = 2.0
_POD_NAME_INDEX = re.compile(r"-(\d+)(?:-[a-z0-9]{5})?$")


class KubeError(LaunchError):
    """An API call failed: HTTP status, the API's reason and message (one line)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason, self.message = status, reason, message
        text = f"{reason}: {message}" if message and message != reason else reason
        super().__init__(f"{text} (HTTP {status})" if status else text)


# ------------------------------------------------------------------ the thin interface


class ClusterAPI(Protocol):
    """What the backend needs from a Kubernetes API server; objects are plain dicts."""

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create `obj` in its namespace; KubeError (e.g. 409 AlreadyExists) on failure."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it (or its resource type) does not exist."""

    def list(self, api_version: str, kind: str, namespace: str | None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind (all namespaces for None); [] when the resource type is unknown
        (e.g. Volcano not installed)."""

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *,
               propagation: str = "Background") -> bool:
        """Delete one object (dependents per `propagation`); False when it did not exist."""

    def log_lines(self, namespace: str, pod: str, *, container: str | None = None,
                  follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        """The lines of a pod's log (following it until the container ends)."""


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS.get(kind)
    if plural is None:
        raise LaunchError(f"the Kubernetes backend does not handle {kind} objects")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


class KubernetesAPI:
    """`ClusterAPI` over the official client's ApiClient (JSON requests and responses)."""

    def __init__(self, api_client: Any, host: str = "") -> None:
        self.client = api_client
        self.host = host or getattr(getattr(api_client, "configuration", None), "host", "")

    def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
              body: Any = None, stream: bool = False, timeout: Any = (10, 60)) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json, */*"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self.client.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False,
                _return_http_data_only=True, _request_timeout=timeout)
        except ApiException as err:
            raise api_error(err) from None
        except HTTPError as err:
            reason = getattr(err, "reason", None) or err
            raise KubeError(0, "Unreachable", f"cannot reach the Kubernetes API at {self.host}: "
                            f"{str(reason).splitlines()[0]}") from None
        if stream:
            return response
        data = response.data
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise KubeError(response.status, "BadResponse",
                            f"{method} {path} did not answer JSON") from None

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata", {})
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self._call("POST", path, body=dict(obj))

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", resource_path(api_version, kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        query = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        try:
            data = self._call("GET", resource_path(api_version, kind, namespace), query=query)
        except KubeError as err:
            if err.status == 404:  # the resource type is not served (CRD not installed)
                return []
            raise
        items = data.get("items") if isinstance(data, dict) else None
        return [item for item in items or [] if isinstance(item, dict)]

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *,
               propagation: str = "Background") -> bool:
        try:
            self._call("DELETE", resource_path(api_version, kind, namespace, name),
                       body={"kind": "DeleteOptions", "apiVersion": "v1",
                             "propagationPolicy": propagation})
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    def log_lines(self, namespace: str, pod: str, *, container: str | None = None,
                  follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        query = []
        if container:
            query.append(("container", container))
        if follow:
            query.append(("follow", "true"))
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        path = f"{resource_path('v1', 'Pod', namespace, pod)}/log"
        response = self._call("GET", path, query=query, stream=True,
                              timeout=(10, None) if follow else (10, 120))
        partial = b""
        try:
            for chunk in response.stream(65536, decode_content=True):
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    yield line.decode("utf-8", errors="replace").rstrip("\r")
            if partial:
                yield partial.decode("utf-8", errors="replace")
        finally:
            response.release_conn()


def api_error(err: Any) -> KubeError:
    """A KubeError from the client's ApiException, with the API's own reason and message."""
    status = int(getattr(err, "status", 0) or 0)
    reason, message = str(getattr(err, "reason", "") or "Error"), ""
    body = getattr(err, "body", None)
    try:
        data = json.loads(body) if body else None
    except (ValueError, TypeError):
        data = None
    if isinstance(data, dict):
        reason = str(data.get("reason") or reason)
        message = str(data.get("message") or "")
    elif body:
        message = (body.decode(errors="replace") if isinstance(body, bytes) else str(body)).strip()
    return KubeError(status, reason, message.splitlines()[0] if message else "")


# ------------------------------------------------------------------ configuration


@dataclasses.dataclass
class Cluster:
    api: ClusterAPI
    namespace: str  # the default namespace: --namespace, else the context's, else default
    context: str | None = None
    host: str = ""

    def describe(self) -> str:
        where = f"context {self.context}" if self.context else "in-cluster configuration"
        return f"{where}, {self.host}" if self.host else where


def connect(context: str | None = None, namespace: str | None = None,
            environ: Mapping[str, str] | None = None) -> Cluster:
    """Configuration like kubectl's (see the module docstring)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    env = os.environ if environ is None else environ
    cfg = client.Configuration()
    files = [p for p in kubeconfig_paths(env) if p.is_file()]
    if files:
        config_file = os.pathsep.join(str(p) for p in files)
        try:
            contexts, active = config.list_kube_config_contexts(config_file=config_file)
        except (ConfigException, OSError, ValueError) as err:
            raise UsageError(f"kubeconfig {config_file}: {str(err).splitlines()[0]}") from None
        names = [c.get("name") for c in contexts or []]
        if context is not None and context not in names:
            raise UsageError(f"--context {context!r} is not in {config_file} "
                             f"(contexts: {', '.join(n for n in names if n) or 'none'})")
        chosen = next((c for c in contexts or [] if c.get("name") == context), None) if context else active
        if not chosen:
            raise UsageError(f"{config_file} has no current context: pass --context")
        try:
            config.load_kube_config(config_file=config_file, context=chosen.get("name"),
                                    client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, ValueError) as err:
            raise UsageError(f"kubeconfig {config_file}: {str(err).splitlines()[0]}") from None
        context_namespace = (chosen.get("context") or {}).get("namespace")
        name = chosen.get("name")
    elif in_cluster(env):
        if context is not None:
            raise UsageError("--context needs a kubeconfig; inside a pod the service account is used")
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as err:
            raise LaunchError(f"in-cluster configuration: {str(err).splitlines()[0]}") from None
        try:
            context_namespace = Path(IN_CLUSTER_NAMESPACE).read_text().strip()
        except OSError:
            context_namespace = None
        name = None
    else:
        raise LaunchError("no Kubernetes configuration: set KUBECONFIG or create ~/.kube/config "
                          "(or run in a pod), or use --backend local")
    api = KubernetesAPI(client.ApiClient(cfg), cfg.host)
    return Cluster(api, namespace or context_namespace or "default", name, cfg.host)


# ------------------------------------------------------------------ object helpers


def meta(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def labels_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def is_ours(obj: Mapping[str, Any] | None, job: str | None = None) -> bool:
    labels = labels_of(obj)
    if labels.get(js.LABEL_MANAGED_BY) != js.MANAGER:
        return False
    return job is None or labels.get(js.LABEL_JOB) == job


def created_at(obj: Mapping[str, Any] | None) -> float | None:
    return parse_time(meta(obj).get("creationTimestamp"))


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    """A pod's node rank: the Job's completion index, Volcano's task index, or the
    index in its name (`<job>-<index>-<suffix>`, `<job>-worker-<index>`)."""
    m = meta(pod)
    for source in (m.get("annotations") or {}, m.get("labels") or {}):
        for key in (js.JOB_INDEX_ANNOTATION, VOLCANO_TASK_INDEX):
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
        if status.get("name") == js.CONTAINER_NAME:
            return status
    return statuses[0] if statuses else {}


def exit_description(code: Any, reason: str | None = None) -> str:
    text = f"exit code {code}"
    if code == js.EXIT_BAD_CONFIG:
        text += " (bad configuration, not retried)"
    elif reason and reason not in ("Error", "Completed"):
        text += f" ({reason})"
    return text


def pod_problem(pod: Mapping[str, Any], events: Iterable[Mapping[str, Any]] = ()) -> str | None:
    """Why a pod does not run: a container waiting on an image or config, the scheduler's
    verdict in its conditions, or its latest warning event."""
    status = pod.get("status") or {}
    state = container_status(pod).get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in WAITING_PROBLEMS:
        return _reason_text(waiting.get("reason"), waiting.get("message"))
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return _reason_text(condition.get("reason") or "Unschedulable", condition.get("message"))
    name = meta(pod).get("name")
    warnings = [e for e in events if _involves(e, "Pod", name) and e.get("type") == "Warning"]
    if warnings:
        latest = max(warnings, key=event_time)
        return _reason_text(latest.get("reason"), latest.get("message"))
    if waiting.get("reason"):
        return _reason_text(waiting.get("reason"), waiting.get("message"))
    return None


def _reason_text(reason: Any, message: Any) -> str:
    reason, message = str(reason or "").strip(), " ".join(str(message or "").split())
    if reason and message:
        return f"{reason}: {message}"
    return reason or message


def _involves(event: Mapping[str, Any], kind: str, name: Any) -> bool:
    obj = event.get("involvedObject") or event.get("regarding") or {}
    return obj.get("kind") == kind and obj.get("name") == name


def event_time(event: Mapping[str, Any]) -> float:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = parse_time(event.get(key))
        if value is not None:
            return value
    return created_at(event) or 0.0


def podgroup_problem(podgroups: Iterable[Mapping[str, Any]]) -> str | None:
    """Volcano's reason a gang does not start (PodGroup conditions, e.g. Unschedulable)."""
    for group in podgroups:
        conditions = (group.get("status") or {}).get("conditions") or []
        bad = [c for c in conditions if c.get("type") == "Unschedulable" and c.get("status") == "True"]
        if bad:
            latest = max(bad, key=lambda c: parse_time(c.get("lastTransitionTime")) or 0.0)
            return _reason_text(latest.get("reason") or "Unschedulable", latest.get("message"))
    return None


def podgroups_of(podgroups: Iterable[Mapping[str, Any]], job: str) -> list[dict[str, Any]]:
    """The PodGroups Volcano made for vcjob `job` (owner reference, else name)."""
    out = []
    for group in podgroups:
        owners = meta(group).get("ownerReferences") or []
        name = meta(group).get("name", "")
        if any(o.get("kind") == "Job" and o.get("name") == job for o in owners) or \
                (not owners and (name == job or name.startswith(f"{job}-"))):
            out.append(dict(group))
    return out


# ------------------------------------------------------------------ what a job is


@dataclasses.dataclass
class JobInfo:
    """What status needs to know of a job, from its Job object (and ConfigMap, if any)."""

    name: str
    namespace: str
    scheduler: str  # job | volcano
    obj: dict[str, Any]
    experiment: str | None = None
    accelerator: str | None = None
    cards: int | None = None
    nodes: int | None = None
    max_restarts: int | None = None
    train_url: str | None = None
    storage_endpoint: str | None = None

    @property
    def cards_per_node(self) -> int:
        if self.cards and self.nodes:
            return max(self.cards // self.nodes, 1)
        return 1

    @property
    def job_url(self) -> str | None:
        return job_url_of(self.train_url, self.name)


def _template_env(obj: Mapping[str, Any]) -> dict[str, str]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or next(iter(spec.get("tasks") or [{}]), {}).get("template") or {}
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

    nodes = number(annotations.get(js.ANNOTATION_NODES))
    body = obj.get("spec") or {}
    if scheduler == "volcano":
        max_restarts = number(body.get("maxRetry"))
        nodes = nodes or number(body.get("minAvailable"))
    else:
        nodes = nodes or number(body.get("completions"))
        backoff = number(body.get("backoffLimit"))
        max_restarts = backoff // nodes if backoff is not None and nodes else backoff
    env = _template_env(obj)
    info = JobInfo(name=m.get("name", ""), namespace=m.get("namespace", ""), scheduler=scheduler,
                   obj=dict(obj), experiment=labels.get(js.LABEL_EXPERIMENT),
                   accelerator=labels.get(js.LABEL_ACCEL),
                   cards=number(annotations.get(js.ANNOTATION_CARDS)), nodes=nodes,
                   max_restarts=max_restarts, train_url=env.get(js.ENV_TRAIN_URL),
                   storage_endpoint=env.get("AWS_ENDPOINT_URL"))
    if spec is not None:
        info.experiment, info.accelerator = spec.experiment, spec.accelerator
        info.cards, info.nodes, info.max_restarts = spec.cards, spec.nodes, spec.max_restarts
        info.train_url, info.storage_endpoint = spec.train_url, spec.storage_endpoint
    return info


VOLCANO_PHASES = {"Pending": "Pending", "Inqueue": "Pending", "Running": "Running",
                  "Restarting": "Restarting", "Completing": "Running", "Completed": "Succeeded",
                  "Failed": "Failed", "Aborting": "Failed", "Aborted": "Failed",
                  "Terminating": "Failed", "Terminated": "Failed"}


def summarize(info: JobInfo, pods: Iterable[Mapping[str, Any]], *,
              events: Iterable[Mapping[str, Any]] = (), podgroups: Iterable[Mapping[str, Any]] = (),
              now: float | None = None) -> dict[str, Any]:
    """The status dict of a job (see launcher.jobs) from its API objects; no progress."""
    now = time.time() if now is None else now
    events = list(events)
    by_rank = pods_by_rank(p for p in pods if is_ours(p, info.name))
    nodes = info.nodes or (max(by_rank) + 1 if by_rank else 1)
    per_node = info.cards_per_node
    current = {rank: current_pod(items) for rank, items in by_rank.items()}
    ranks: list[dict[str, Any]] = []
    restarts_max = 0
    for node_rank in range(nodes):
        pod = current.get(node_rank)
        entry: dict[str, Any] = {"node_rank": node_rank}
        if pod is None:
            entry.update(phase="Pending", pod=None, node=None, restarts=0, reason="no pod yet")
        else:
            cstatus = container_status(pod)
            restarts = len(by_rank[node_rank]) - 1 + int(cstatus.get("restartCount") or 0)
            restarts_max = max(restarts_max, restarts)
            started = created_at(pod)
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            entry.update(phase=phase, pod=meta(pod).get("name"),
                         node=(pod.get("spec") or {}).get("nodeName"), restarts=restarts,
                         age_seconds=None if started is None else round(now - started, 1),
                         age=age(None if started is None else now - started))
            terminated = (cstatus.get("state") or {}).get("terminated") or {}
            if phase == "Pending":
                problem = pod_problem(pod, events)
                if problem:
                    entry["reason"] = problem
            elif phase == "Failed":
                entry["reason"] = (exit_description(terminated.get("exitCode"), terminated.get("reason"))
                                   if terminated else _reason_text((pod.get("status") or {}).get("reason"),
                                                                   (pod.get("status") or {}).get("message")))
        for offset in range(per_node):
            ranks.append({"rank": node_rank * per_node + offset, **entry})
    phase, reason = _job_phase(info, current, by_rank, podgroups, events)
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
    if info.scheduler == "volcano":
        retries = ((info.obj.get("status") or {}).get("retryCount"))
        if isinstance(retries, int):
            out["restarts"] = max(restarts_max, retries)
    if reason:
        out["reason"] = reason
    return out


def _job_phase(info: JobInfo, current: dict[int, dict[str, Any]],
               by_rank: dict[int, list[dict[str, Any]]], podgroups: Iterable[Mapping[str, Any]],
               events: list[Mapping[str, Any]]) -> tuple[str, str | None]:
    status = info.obj.get("status") or {}
    nodes = info.nodes or len(current) or 1
    phases = {rank: (pod.get("status") or {}).get("phase") or "Pending" for rank, pod in current.items()}
    failed_pods = sum(1 for items in by_rank.values() for p in items
                      if (p.get("status") or {}).get("phase") == "Failed")
    last_failure = _last_failure(by_rank)
    if info.scheduler == "volcano":
        state = status.get("state") or {}
        vphase = state.get("phase")
        mapped = VOLCANO_PHASES.get(vphase or "Pending", "Pending")
        if mapped == "Failed":
            return "Failed", _reason_text(state.get("reason") or vphase, state.get("message")) or last_failure
        if mapped in ("Succeeded", "Running"):
            return mapped, None
        if mapped == "Restarting":
            return "Restarting", last_failure or _reason_text(state.get("reason"), state.get("message")) or None
    else:
        conditions = {c.get("type"): c for c in status.get("conditions") or []
                      if c.get("status") == "True"}
        for kind in ("Complete", "SuccessCriteriaMet"):
            if kind in conditions:
                return "Succeeded", None
        for kind in ("Failed", "FailureTarget"):
            if kind in conditions:
                c = conditions[kind]
                text = _reason_text(c.get("reason"), c.get("message"))
                if last_failure and last_failure not in text:
                    text = f"{text}; last failure: {last_failure}" if text else last_failure
                return "Failed", text or "failed"
        if (info.obj.get("spec") or {}).get("suspend") or "Suspended" in conditions:
            queue_name = labels_of(info.obj).get(js.KUEUE_QUEUE_LABEL)
            where = f" in queue {queue_name}" if queue_name else ""
            return "Pending", f"suspended: waiting to be admitted{where} (Kueue)"
        failed_pods = max(failed_pods, int(status.get("failed") or 0))
    all_running = len(phases) >= nodes and all(p in ("Running", "Succeeded") for p in phases.values())
    if all_running and any(p == "Running" for p in phases.values()):
        return "Running", None
    if all_running:
        return "Running", "finishing"
    waiting = pending_reason(info, current, podgroups, events)
    if failed_pods:
        text = f"after {last_failure}" if last_failure else "after a failure"
        return "Restarting", f"{text}; {waiting}" if waiting else text
    return "Pending", waiting


def _last_failure(by_rank: dict[int, list[dict[str, Any]]]) -> str | None:
    failures = []
    for rank, items in by_rank.items():
        for pod in items:
            if (pod.get("status") or {}).get("phase") != "Failed":
                continue
            terminated = (container_status(pod).get("state") or {}).get("terminated") or {}
            when = parse_time(terminated.get("finishedAt")) or created_at(pod) or 0.0
            what = exit_description(terminated.get("exitCode"), terminated.get("reason")) \
                if terminated else ((pod.get("status") or {}).get("reason") or "failed")
            failures.append((when, f"node rank {rank} ({meta(pod).get('name')}) {what}"))
    return max(failures)[1] if failures else None


def pending_reason(info: JobInfo, current: dict[int, dict[str, Any]],
                   podgroups: Iterable[Mapping[str, Any]],
                   events: list[Mapping[str, Any]]) -> str | None:
    """Why the job does not run yet: the first pod problem (by rank), else Volcano's
    PodGroup, else the Job's own warnings (e.g. FailedCreate over a quota)."""
    nodes = info.nodes or len(current) or 1
    waiting = [(rank, pod) for rank, pod in sorted(current.items())
               if (pod.get("status") or {}).get("phase") in (None, "Pending")]
    for rank, pod in waiting:
        problem = pod_problem(pod, events)
        if problem:
            return problem if nodes == 1 else f"node rank {rank}: {problem}"
    problem = podgroup_problem(podgroups)
    if problem:
        return problem
    kind = "Job"
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


# ------------------------------------------------------------------ reading a job


def read_spec(api: ClusterAPI, name: str, namespace: str) -> js.JobSpec | None:
    """The JobSpec in the job's ConfigMap (None when missing or unreadable)."""
    cm = api.get(*CONFIGMAP, namespace, f"{name}-config")
    if not cm or not is_ours(cm):
        return None
    text = (cm.get("data") or {}).get(js.JOB_FILE)
    if not text:
        return None
    try:
        return js.JobSpec.from_yaml(text)
    except Exception:  # noqa: BLE001 - e.g. written by another version of leo-launch
        return None


def find_job(api: ClusterAPI, name: str, namespace: str,
             spec: js.JobSpec | None = None) -> JobInfo | None:
    order = ("volcano", "job") if spec is not None and spec.scheduler == "volcano" else ("job", "volcano")
    for scheduler in order:
        kind = VOLCANO_JOB if scheduler == "volcano" else BATCH_JOB
        obj = api.get(*kind, namespace, name)
        if obj is not None:
            if not is_ours(obj):
                raise JobNotFoundError(f"{kind[0]} Job {name} in namespace {namespace} is not "
                                       "managed by leo-launch")
            return job_info(obj, scheduler, spec)
    return None


def our_pods(api: ClusterAPI, namespace: str | None, job: str | None = None) -> list[dict[str, Any]]:
    selector = f"{js.LABEL_JOB}={job}" if job else f"{js.LABEL_MANAGED_BY}={js.MANAGER}"
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
    groups = podgroups_of(_optional(api, PODGROUP, ns), name) if info.scheduler == "volcano" else []
    result = summarize(info, pods, podgroups=groups)
    if result["phase"] in ("Pending", "Restarting"):
        events = _optional(api, EVENT, ns, field_selector="type=Warning")
        result = summarize(info, pods, events=events, podgroups=groups)
    if progress:
        result.update(read_progress(info.job_url, endpoint=info.storage_endpoint))
    return result


def list_jobs(cluster: Cluster, namespace: str | None = None, *, all_namespaces: bool = False,
              progress: bool = True) -> list[dict[str, Any]]:
    api = cluster.api
    ns = None if all_namespaces else (namespace or cluster.namespace)
    selector = f"{js.LABEL_MANAGED_BY}={js.MANAGER}"
    infos = [job_info(j, "job") for j in api.list(*BATCH_JOB, ns, label_selector=selector) if is_ours(j)]
    infos += [job_info(j, "volcano") for j in api.list(*VOLCANO_JOB, ns, label_selector=selector)
              if is_ours(j)]
    pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in our_pods(api, ns):
        key = (meta(pod).get("namespace", ""), labels_of(pod).get(js.LABEL_JOB, ""))
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


def submit(cluster: Cluster, spec: js.JobSpec, objects: list[dict[str, Any]], *,
           wait: bool = False, follow: bool = False, warnings: Iterable[str] = (),
           out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Create the objects in order; on a failure delete what was created and raise with
    the API's reason. Then optionally wait until every rank runs, or follow the logs."""
    out, err = out or sys.stdout, err or sys.stderr
    api, ns = cluster.api, spec.namespace
    existing = find_job(api, spec.name, ns, spec)
    if existing is not None:
        phase = summarize(existing, our_pods(api, ns, spec.name))["phase"]
        raise JobExistsError(f"job {spec.name} exists already in namespace {ns} ({phase}); choose "
                             f"another --name, or remove it with: leo-launch cancel {spec.name}")
    created: list[dict[str, Any]] = []
    for obj in objects:
        try:
            api.create(obj)
        except KubeError as error:
            what = f"{obj['kind']} {meta(obj).get('name')}"
            raise LaunchError(f"creating {what} in namespace {ns} failed: {error}; "
                              f"{rollback(api, created)}") from None
        created.append(obj)
    names = ", ".join(f"{o['kind']} {meta(o).get('name')}" for o in objects)
    out.write(f"job {spec.name} submitted to namespace {ns} ({cluster.describe()}): {names}\n")
    out.flush()
    for warning in warnings:
        err.write(f"leo-launch: warning: {warning}\n")
    err.flush()
    if follow:
        logs(cluster, spec.name, ns, all_ranks=True, follow=True, out=out, err=err)
        final = status(cluster, spec.name, ns, progress=False)
        out.write(f"job {spec.name}: {final['phase']}"
                  + (f" ({final['reason']})" if final.get("reason") else "") + "\n")
        return 0 if final["phase"] == "Succeeded" else 1
    if wait:
        final = wait_until(cluster, spec.name, ns, ("Running", *FINAL_PHASES), err=err)
        out.write(f"job {spec.name}: {final['phase']}"
                  + (f" ({final['reason']})" if final.get("reason") else "") + "\n")
        return 1 if final["phase"] == "Failed" else 0
    return 0


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


def wait_until(cluster: Cluster, name: str, namespace: str, phases: tuple[str, ...], *,
               err: TextIO | None = None, timeout: float | None = None,
               poll: float = POLL) -> dict[str, Any]:
    """Poll status until the phase is one of `phases`; report changes of phase/reason."""
    err = err or sys.stderr
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        current = status(cluster, name, namespace, progress=False)
        shown = (current["phase"], current.get("reason"))
        if shown != last:
            err.write(f"leo-launch: {name}: {current['phase']}"
                      + (f": {current['reason']}" if current.get("reason") else "") + "\n")
            err.flush()
            last = shown
        if current["phase"] in phases:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"job {name} is still {current['phase']} after {timeout:.0f} s")
        time.sleep(poll)


def cancel(cluster: Cluster, name: str, namespace: str | None = None) -> str:
    """Delete the job's Job (with its pods), Service, ConfigMaps and any pod left;
    idempotent (a job that does not exist is nothing to cancel)."""
    api, ns = cluster.api, namespace or cluster.namespace
    deleted = []
    candidates = [BATCH_JOB + (name,), VOLCANO_JOB + (name,), SERVICE + (name,),
                  CONFIGMAP + (f"{name}-config",), CONFIGMAP + (f"rings-config-{name}",)]
    for api_version, kind, obj_name in candidates:
        obj = api.get(api_version, kind, ns, obj_name)
        if obj is None or not is_ours(obj, name):
            continue
        if api.delete(api_version, kind, ns, obj_name, propagation="Background"):
            deleted.append(f"{kind} {obj_name}")
    pods = 0
    for pod in our_pods(api, ns, name):  # the garbage collector would; we do not wait for it
        if api.delete(*POD, ns, meta(pod).get("name"), propagation="Background"):
            pods += 1
    if pods:
        deleted.append(f"{pods} pod(s)")
    if not deleted:
        return f"no job {name!r} in namespace {ns}: nothing to cancel"
    return f"job {name} cancelled in namespace {ns}: deleted {', '.join(deleted)}"


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
    seen: set[str] = set()
    first = True
    while True:
        pods = [p for r, p in ((r, current_pod(items)) for r, items in
                               pods_by_rank(our_pods(api, ns, name)).items())
                if node is None or r == node]
        ready = [p for p in pods if meta(p).get("name") not in seen and _has_log(p)]
        if ready:
            _stream(api, ns, ready, keep, follow=follow, tail=tail if first else None,
                    per_node=per_node, out=out)
            seen.update(meta(p).get("name") for p in ready)
            first = False
        elif first and not follow:
            return _published_fallback(info, wanted_rank, tail, out, err, pods)
        if not follow:
            return 0
        current = status(cluster, name, ns, progress=False)
        if current["phase"] in FINAL_PHASES and not [
                p for p in our_pods(api, ns, name) if meta(p).get("name") not in seen and _has_log(p)
                and (node is None or pod_rank(p) == node)]:
            if first:
                return _published_fallback(info, wanted_rank, tail, out, err, pods)
            return 0
        time.sleep(poll)


def _has_log(pod: Mapping[str, Any]) -> bool:
    """A container has started (running or terminated), so the API has a log for it."""
    state = container_status(pod).get("state") or {}
    if state.get("running") or state.get("terminated"):
        return True
    return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def _stream(api: ClusterAPI, namespace: str, pods: list[dict[str, Any]], keep: Callable[[str], bool],
            *, follow: bool, tail: int | None, per_node: int, out: TextIO) -> None:
    """Merge the logs of `pods` line by line as they arrive."""
    lines: queue.Queue = queue.Queue()
    done = object()
    # with a rank filter a pod's tail holds its other ranks' lines too: ask for more
    fetch = None if tail is None else tail * (per_node + 1)

    def reader(pod_name: str) -> None:
        try:
            for line in api.log_lines(namespace, pod_name, container=js.CONTAINER_NAME,
                                      follow=follow, tail_lines=fetch):
                lines.put(line)
        except KubeError as error:
            lines.put(f"[leo-launch] cannot read the log of pod {pod_name}: {error}")
        finally:
            lines.put(done)

    threads = [threading.Thread(target=reader, args=(meta(p).get("name"),), daemon=True) for p in pods]
    for thread in threads:
        thread.start()
    finished = 0
    buffered: list[str] = []
    while finished < len(threads):
        item = lines.get()
        if item is done:
            finished += 1
            continue
        if not keep(item):
            continue
        if follow:
            out.write(item + "\n")
            out.flush()
        else:
            buffered.append(item)
    for line in last_lines(buffered, tail):
        out.write(line + "\n")
    out.flush()


def _published_fallback(info: JobInfo, rank: int | None, tail: int | None, out: TextIO,
                        err: TextIO, pods: list[dict[str, Any]]) -> int:
    from launcher.jobs import print_published_logs

    if info.job_url is None:
        state = "pending" if pods else "gone"
        err.write(f"leo-launch: no logs: the job's pods are {state} and it has no train_url\n")
        return 0
    err.write(f"leo-launch: no pod has logs now; showing the logs published under {info.job_url}\n")
    print_published_logs(info.job_url, rank=rank, tail=tail, endpoint=info.storage_endpoint, out=out,
                         err=err)
    return 0
