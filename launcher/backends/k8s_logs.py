"""The logs of a Kubernetes job: one rank's lines or every rank merged live, following
restarted pods, and the logs published under train_url when no pod has any."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from launcher import flavours
from launcher.backends.base import (
    FINAL_PHASES,
    JobNotFoundError,
)
from launcher.backends.k8s_read import POLL, find_job, our_pods, read_spec, status
from launcher.errors import LaunchError, UsageError
from launcher.k8s.api import (
    ClusterAPI,
    KubeError,
)
from launcher.k8s.config import Cluster
from launcher.k8s.state import (
    JobInfo,
    container_status,
    current_pod,
    meta,
    pod_rank,
    pods_by_rank,
)
from launcher.outputs.logs import last_lines, last_lines_per_rank, print_published_logs, rank_filter
from launcher.spec import contract

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
    """The training container: its flavour's (an operator may inject variables into one name only)."""
    return flavours.flavour_of(info.scheduler).container or contract.CONTAINER_NAME


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
    # a pod's tail holds its other ranks' lines too, and a quiet rank's last line may be
    # far back: read the whole log then (kept bounded below), unless the pod is one rank
    fetch = tail if per_node == 1 and not per_rank else None

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
            kept = buffered[pod_name]
            kept.append(item)
            if tail is not None and len(kept) > 2 * tail * (per_node + 1) + 1000:
                buffered[pod_name] = last_lines_per_rank(kept, tail) if per_rank else last_lines(kept, tail)
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
            print_published_logs(info.job_url, rank=number, tail=tail, storage=info.storage,
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
    print_published_logs(info.job_url, rank=rank, tail=tail, storage=info.storage, out=out,
                         err=err)
    return 0
