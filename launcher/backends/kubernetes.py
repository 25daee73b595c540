"""The Kubernetes backend: submit, status, logs, list and cancel with the official client,
through the thin `ClusterAPI` (launcher.k8s.api) and the pure reading of API objects
(launcher.k8s.state).

What a job is made of: the ConfigMap `<name>-config` (job.yaml, experiment.yaml), the
object of its flavour's kind (launcher.flavours) and, when the flavour does not leave it
to its controller, a headless Service `<name>`; for Ascend with a controller-filled rank
table also `rings-config-<name>`. Every object and pod is labelled
`app.kubernetes.io/managed-by: leo-launch` and `leo-launch/job: <name>`; label selectors
are sent to the API and also checked here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from launcher import flavours
from launcher.backends.base import (
    JobExistsError,
    JobNotFoundError,
    JobOutputs,
    JobStatus,
)
from launcher.backends.k8s_logs import logs
from launcher.backends.k8s_read import (
    POLL,
    find_job,
    list_jobs,
    our_pods,
    outputs_of,
    read_spec,
    status,
)
from launcher.errors import LaunchError
from launcher.k8s import preflight, rbac
from launcher.k8s.api import (
    CONFIGMAP,
    POD,
    SERVICE,
    ClusterAPI,
    KubeError,
)
from launcher.k8s.config import Cluster, connect, kube_configured
from launcher.k8s.dryrun import dry_run
from launcher.k8s.state import (
    is_ours,
    meta,
    summarize,
)
from launcher.spec import jobspec as js

# ------------------------------------------------------------------ submit, cancel


def check_access(cluster: Cluster, flavour: flavours.Flavour, command: str, namespace: str, *,
                 doing: str, err: TextIO | None = None) -> None:
    """The access check (launcher.k8s.rbac.require): AccessDenied naming what is missing.
    A cluster that cannot answer the review is not checked (a note)."""
    try:
        rbac.require(cluster.api, flavour, command, namespace, doing=doing)
    except KubeError as error:
        if error.status == 0:  # unreachable: nothing else would work either
            raise
        (err or sys.stderr).write(f"leo-launch: note: permissions not checked ({error})\n")


def check_cluster(cluster: Cluster, spec: js.JobSpec, objects: list[dict[str, Any]], *,
                  err: TextIO | None = None, access: bool = True) -> None:
    """The access check of submit (`access`), then pre-flight (launcher.k8s.preflight),
    then a server-side dry-run of every object (launcher.k8s.dryrun): notes, warnings and
    one line per refused object on `err`; a LaunchError when the job would not run."""
    err = err or sys.stderr
    if access:
        check_access(cluster, spec.flavour, "submit", spec.namespace, doing="submit would fail", err=err)
    report = preflight.run(cluster.api, spec, objects)
    for note in report.notes:
        err.write(f"leo-launch: note: {note}\n")
    err.flush()
    if report.problems:
        raise LaunchError(f"pre-flight ({cluster.describe()}): {'; '.join(report.problems)}; "
                          "nothing was created")
    answer = dry_run(cluster.api, objects)
    if answer.ignored:
        err.write(f"leo-launch: note: dry-run: {answer.ignored}\n")
    for line in answer.warnings:
        err.write(f"leo-launch: warning: dry-run: {line}\n")
    for line in answer.refusals:
        err.write(f"leo-launch: dry-run: refused {line}\n")
    err.flush()
    if answer.refusals:
        raise LaunchError(f"server-side dry-run ({cluster.describe()}): the API server refused "
                          f"{len(answer.refusals)} of {len(objects)} object(s) (above); nothing was created")


def submit(cluster: Cluster, spec: js.JobSpec, objects: list[dict[str, Any]], *,
           out: TextIO | None = None, err: TextIO | None = None, check: bool = True) -> None:
    """Create the objects in order, after the pre-flight checks (`check`); on a failure
    delete what was created and raise with the API's reason."""
    out, err = out or sys.stdout, err or sys.stderr
    api, ns = cluster.api, spec.namespace
    check_access(cluster, spec.flavour, "submit", ns, doing="nothing was created", err=err)
    existing = find_job(api, spec.name, ns, spec)
    if existing is not None:
        phase = summarize(existing, our_pods(api, ns, spec.name))["phase"]
        raise JobExistsError(f"job {spec.name} exists already in namespace {ns} ({phase}); choose "
                             f"another --name, or remove it with: leo-launch cancel {spec.name}")
    if check:
        check_cluster(cluster, spec, objects, err=err, access=False)
    else:
        err.write("leo-launch: note: pre-flight skipped (--skip-preflight)\n")
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


def _missing_crd(obj: Mapping[str, Any], error: KubeError) -> str:
    """A 404 on creating a custom resource: its CRD is not installed."""
    flavour = flavours.by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
    if error.status != 404 or flavour is None or flavour.operator is None:
        return ""
    return f" (the cluster does not serve {flavour.api[1]} {flavour.api[0]}: is {flavour.operator} installed?)"


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
    LaunchError raised at the end. Another flavour's kind, when forbidden, is skipped (said
    only when it could hold the job). First the access check of the job's flavour (the
    default one when its ConfigMap is gone): AccessDenied says what it could not delete."""
    api, ns = cluster.api, namespace or cluster.namespace
    try:
        spec = read_spec(api, name, ns)
    except KubeError:
        spec = None  # the ConfigMap's own deletion below says why
    flavour = spec.flavour if spec is not None else flavours.flavour_of(flavours.DEFAULT)
    check_access(cluster, flavour, "cancel", ns, doing=f"job {name} was not cancelled, nothing was deleted")
    deleted: list[str] = []
    failed: list[str] = []
    unchecked = None
    found_job = False
    kinds = [f.api for f in flavours.FLAVOURS.values()]
    candidates = [*((kind, name) for kind in kinds), (SERVICE, name),
                  (CONFIGMAP, f"{name}-config"), (CONFIGMAP, f"rings-config-{name}")]
    for (api_version, kind), obj_name in candidates:
        what = f"{kind} {obj_name}"
        try:
            obj = api.get(api_version, kind, ns, obj_name)
            if obj is None or not is_ours(obj, name):
                continue
            found_job = found_job or (api_version, kind) in kinds
            if api.delete(api_version, kind, ns, obj_name, propagation="Background"):
                deleted.append(what)
        except KubeError as error:
            other = flavours.by_kind(api_version, kind)
            if other is not None and other is not flavour and error.forbidden:
                if not found_job and spec is None:
                    unchecked = f"{other.title} {name} could not be looked for ({error})"
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


def measured_cache_size(spec: js.JobSpec) -> tuple[str | None, str]:
    """/cache's size for what the pods will stage, read from storage with this machine's
    credentials and --storage-endpoint: (size, how it was found) or (None, why not)."""
    from launcher.spec import disk
    from launcher.storage import StorageOptions
    from launcher.storage.sizes import staged_bytes

    urls = [u for u in (spec.data_url, spec.init_url) if u and u.startswith(("s3://", "obs://"))]
    if spec.cache_size is not None or not urls:
        return None, ""
    # short: a submit does not wait long for a number it can default
    options = StorageOptions(endpoint=spec.storage_endpoint, progress=False, timeout=30, max_attempts=1,
                             connect_timeout=5, read_timeout=20)
    try:
        data = staged_bytes(spec.data_url, options) if spec.data_url in urls else 0
        init = staged_bytes(spec.init_url, options) if spec.init_url in urls else 0
    except (LaunchError, OSError) as error:
        return None, (f"/cache size not measured ({str(error).splitlines()[0]}): "
                      f"{disk.default_cache_size(spec)} (set it with --cache-size)")
    zipped = bool(spec.data_url and spec.data_url.lower().endswith(".zip"))
    size = disk.cache_size(data, init, zipped=zipped)
    return size, f"/cache size {size}: {round((data + init) / disk.GI, 1)} GiB to stage, plus room to unpack and work"


@dataclasses.dataclass(frozen=True)
class KubernetesPlan:
    """The validated manifests of a job, in creation order (`Plan`, launcher.backends.base)."""

    spec: js.JobSpec
    objects: list[dict[str, Any]]
    notes: tuple[str, ...] = ()  # said on stderr when submitted
    preflight: bool = True  # False: --skip-preflight

    def text(self) -> str:
        from launcher.render.render import dump

        return dump(self.objects)

    def write_dir(self, directory: str) -> list[Any]:
        from launcher.render.render import write_dir

        return write_dir(self.objects, directory)

    def documents(self) -> list[dict[str, Any]]:
        return list(self.objects)

    def names(self) -> list[str]:
        return [f"{obj['kind'].lower()}/{obj['metadata']['name']}" for obj in self.objects]


class KubernetesBackend:
    """`Backend` over a cluster (see launcher.backends.base). The cluster is connected on
    first use: planning needs none unless a kubeconfig names the namespace."""

    name = "k8s"
    describe = "Kubernetes"
    poll = POLL
    runs_pods = True

    def __init__(self, cluster: Cluster | None = None, namespace: str | None = None, *,
                 context: str | None = None) -> None:
        self._cluster, self._namespace, self._context = cluster, namespace, context

    @classmethod
    def connect(cls, context: str | None = None, namespace: str | None = None) -> KubernetesBackend:
        return cls(None, namespace, context=context)

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = connect(self._context, self._namespace)
        return self._cluster

    @property
    def namespace(self) -> str:
        return self._namespace or self.cluster.namespace

    def plan(self, spec: js.JobSpec, *, preflight: bool = True) -> KubernetesPlan:
        """The manifests, in the context's namespace when no --namespace was given (with no
        Kubernetes configuration at all: the spec's own)."""
        from launcher.render.render import render_validated

        if self._namespace is None and (self._cluster is not None or kube_configured()):
            if spec.namespace != self.cluster.namespace:
                spec = dataclasses.replace(spec, namespace=self.cluster.namespace)
        size, note = measured_cache_size(spec)
        if size is not None:
            spec = dataclasses.replace(spec, cache_size=size)
        return KubernetesPlan(spec, render_validated(spec), (note,) if note else (), preflight)

    def submit(self, plan: KubernetesPlan, *, out: TextIO, err: TextIO) -> None:
        submit(self.cluster, plan.spec, plan.objects, out=out, err=err, check=plan.preflight)
        for note in plan.notes:  # after success: a failing submit says its one error line only
            err.write(f"leo-launch: note: {note}\n")

    def status(self, name: str, *, progress: bool = True) -> JobStatus:
        return JobStatus(**status(self.cluster, name, self.namespace, progress=progress))

    def list(self, *, all_namespaces: bool = False) -> list[JobStatus]:
        return [JobStatus(**item) for item in
                list_jobs(self.cluster, self.namespace, all_namespaces=all_namespaces)]

    def logs(self, name: str, *, rank: int | None = None, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None, out: TextIO, err: TextIO) -> int:
        return logs(self.cluster, name, self.namespace, rank=rank, all_ranks=all_ranks,
                    follow=follow, tail=tail, out=out, err=err)

    def cancel(self, name: str) -> str:
        return cancel(self.cluster, name, self.namespace)

    def outputs(self, name: str) -> JobOutputs:
        found = outputs_of(name, namespace=self.namespace, cluster=self.cluster)
        if found is None:
            raise JobNotFoundError(f"unknown job {name!r}: the cluster has no job of that name in "
                                   f"namespace {self.namespace}; pass the job's URL instead "
                                   f"(<train_url>/{name})")
        return found
