"""Where jobs run. `get_backend()` is the one way a command reaches a backend:
`k8s` (launcher.backends.kubernetes: the cluster of the kubeconfig context) or `local`
(launcher.backends.local: detached processes on this machine). `auto` picks, for a
command about job NAME, a local job of that name, else the configured cluster, else
local; for submit and list, the cluster when one is configured, else local.

`job_outputs()` says where a job's outputs are and with which storage settings, for `pull`
and `report`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.backends.base import Backend, JobOutputs
from launcher.backends.kubernetes import KubernetesBackend
from launcher.backends.local import LocalBackend
from launcher.backends.localjob import job_dir
from launcher.errors import UsageError
from launcher.k8s.config import kube_configured
from launcher.spec.names import check_job_name, looks_like_url
from launcher.storage import parse_url

BACKENDS = ("auto", "k8s", "local")


def choose_backend(requested: str, name: str | None = None,
                   environ: Mapping[str, str] | None = None, *, accel: str | None = None) -> str:
    """`k8s` or `local` (see the module docstring). A new job on an accelerator (`accel`
    other than cpu) can only run on a cluster: auto picks k8s for it."""
    if requested in ("k8s", "local"):
        return requested
    if requested != "auto":
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    if name is not None and local_job_exists(name, environ):
        return "local"
    if accel not in (None, "cpu"):
        return "k8s"
    return "k8s" if kube_configured(environ) else "local"


def local_job_exists(name: str, environ: Mapping[str, str] | None = None) -> bool:
    return job_dir(name, environ).is_dir()


def get_backend(requested: str = "auto", name: str | None = None, *,
                context: str | None = None, namespace: str | None = None,
                environ: Mapping[str, str] | None = None) -> Backend:
    """The backend for a command about job `name` (None: submit, list)."""
    if choose_backend(requested, name, environ) == "local":
        return LocalBackend(environ)

    return KubernetesBackend.connect(context, namespace)


def listed_backends(requested: str = "auto", *, context: str | None = None, namespace: str | None = None,
                    environ: Mapping[str, str] | None = None) -> list[tuple[Backend, bool]]:
    """The backends `list` reads, each with whether its failure is an error (else only a
    warning): this machine's for auto and local; the cluster for k8s, and for auto when
    one is configured."""
    if requested not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    out: list[tuple[Backend, bool]] = []
    if requested in ("auto", "local"):
        out.append((LocalBackend(environ), True))
    if requested == "k8s" or (requested == "auto" and kube_configured(environ)):
        out.append((KubernetesBackend.connect(context, namespace), requested == "k8s"))
    return out


def outputs_url(name_or_url: str, **kwargs: Any) -> str:
    """The base URL of a job's outputs (see `job_outputs`)."""
    return job_outputs(name_or_url, **kwargs).url


def job_outputs(name_or_url: str, *, requested: str = "auto", context: str | None = None,
                namespace: str | None = None, environ: Mapping[str, str] | None = None) -> JobOutputs:
    """The base URL of a job's outputs and the job's storage settings: a URL or path is
    returned as given (normalised, no settings); a job NAME is looked up as `get_backend`
    would (local job registry, then the configured cluster) and becomes `<train_url>/<name>`."""
    text = name_or_url.strip()
    if looks_like_url(text):
        return JobOutputs(str(parse_url(text)))
    try:
        name = check_job_name(text)
    except UsageError as err:
        raise UsageError(f"{text!r} is neither a storage URL nor a job name (lowercase letters, "
                         "digits and '-', starting with a letter)") from err
    backend = get_backend(requested, name, context=context, namespace=namespace, environ=environ)
    return backend.outputs(name)
