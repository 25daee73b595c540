"""Which cluster: configuration as kubectl finds it. `$KUBECONFIG` (':'-separated files)
or ~/.kube/config with `--context`, else the in-cluster service account; the namespace is
`--namespace`, else the context's, else `default`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from launcher.errors import LaunchError, UsageError
from launcher.k8s.api import ClusterAPI, KubernetesAPI

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The kubeconfig files kubectl would read: $KUBECONFIG (':'-separated) or ~/.kube/config."""
    env = os.environ if environ is None else environ
    value = env.get("KUBECONFIG", "")
    if value.strip():
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    home = env.get("HOME") or os.path.expanduser("~")
    return [Path(home) / ".kube" / "config"]


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and Path(IN_CLUSTER_TOKEN).is_file()


def kube_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a Kubernetes cluster is configured: a kubeconfig file exists or this runs
    in a pod with a service account."""
    return any(p.is_file() for p in kubeconfig_paths(environ)) or in_cluster(environ)


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
            raise UsageError(f"kubeconfig {config_file}: {str(err).splitlines()[0]}") from err
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
            raise UsageError(f"kubeconfig {config_file}: {str(err).splitlines()[0]}") from err
        context_namespace = (chosen.get("context") or {}).get("namespace")
        name = chosen.get("name")
    elif in_cluster(env):
        if context is not None:
            raise UsageError("--context needs a kubeconfig; inside a pod the service account is used")
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as err:
            raise LaunchError(f"in-cluster configuration: {str(err).splitlines()[0]}") from err
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
