"""What the job's pods may do, and which Pod Security level admits them.

The pod template takes its securityContext and its hostPath volumes from here, so the
level `pod_security_level` states holds by construction (tests/launcher/render checks
it against the Pod Security Standards on every rendered flavour). `admission_problem`
is the pre-flight's question: does a namespace, by its labels, admit such pods?

Lives in spec/ (not render/) so the cluster pre-flight (launcher/k8s) can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.spec import contract
from launcher.spec.jobspec import JobSpec
from launcher.spec.ranktable import HCCN_CONF

# Pod Security Standards levels, least restrictive first.
LEVELS = ("privileged", "baseline", "restricted")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
# Why pods of a level fail stricter ones, and the switch that makes them pass: the only
# level below restricted comes from Ascend's hostPath driver mounts.
REASONS = {"privileged": ("hostPath volumes: the Ascend driver",
                          "use --ascend-driver-mount runtime on nodes with Ascend Docker Runtime "
                          "(restricted pods)")}


def host_path_mounts(spec: JobSpec) -> tuple[str, ...]:
    """The host paths the pods mount: Ascend's driver, plus hccn.conf for the dynamic rank
    table, unless Ascend Docker Runtime injects the driver (--ascend-driver-mount runtime)."""
    if spec.accelerator != "ascend" or spec.ascend_driver_mount == "runtime":
        return ()
    paths = [contract.ASCEND_DRIVER_DIR]
    if spec.rank_table == "dynamic":
        paths.append(HCCN_CONF)  # the bootstrap's fallback when the device-plugin annotation is missing
    return tuple(paths)


def pod_security_context(spec: JobSpec) -> dict[str, Any]:
    """The pod's securityContext: the image's non-root ids, RuntimeDefault seccomp, and an
    fsGroup owning the pod's volumes (/cache, /dev/shm) so that user can write them."""
    return {
        "runAsNonRoot": True,
        "runAsUser": spec.run_as_user,
        "runAsGroup": spec.run_as_group,
        "fsGroup": spec.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(spec: JobSpec) -> dict[str, Any]:
    """The container's securityContext: no privilege escalation, no capabilities (NPUs and
    GPUs are reached through device nodes the runtime or device plugin opens to the group)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_level(spec: JobSpec) -> str:
    """The strictest Pod Security level ("restricted", "baseline" or "privileged") that
    admits every pod of `spec`: hostPath volumes fail baseline, everything else the
    templates write passes restricted."""
    return "privileged" if host_path_mounts(spec) else "restricted"


def admission_problem(namespace_labels: Mapping[str, str] | None, level: str) -> str | None:
    """One line when a namespace with these labels would reject pods that need `level`,
    else None.

    Reads `pod-security.kubernetes.io/enforce` as the API server does: an unknown value
    enforces restricted (it fails closed). Without the label the cluster's default applies,
    which the labels cannot tell; None then (the API server's own default is privileged).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    labels = namespace_labels or {}
    if ENFORCE_LABEL not in labels:
        return None
    value = labels[ENFORCE_LABEL]
    enforced = value if value in LEVELS else "restricted"
    if LEVELS.index(level) >= LEVELS.index(enforced):
        return None
    namespace = labels.get(NAMESPACE_NAME_LABEL)
    where = f"namespace {namespace!r}" if namespace else "the namespace"
    shown = enforced if value == enforced else f"{value!r}, read as restricted"
    reason, switch = REASONS.get(level, ("", ""))
    return (f"{where} enforces Pod Security {shown} ({ENFORCE_LABEL}) but this job's pods need "
            f"{level}{f' ({reason})' if reason else ''}, so none would be created; "
            f"{switch + ' or ' if switch else 'use '}a namespace that enforces {level}")


def job_admission_problem(namespace_labels: Mapping[str, str] | None, spec: JobSpec) -> str | None:
    """`admission_problem` for the pods of `spec` (what the pre-flight calls)."""
    return admission_problem(namespace_labels, pod_security_level(spec))
