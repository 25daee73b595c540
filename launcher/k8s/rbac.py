"""Permissions: what each command of the Kubernetes backend calls, as RBAC rules, the
least-privilege Role `leo-launch rbac` prints from them, and the access check (one
SelfSubjectAccessReview per rule) that submit, cancel and `render --check-cluster` run
before they touch anything.

The table is one list of (API group, resource, verb) per command: the generic calls
below (`GENERIC`, with the function that makes each), and the job object's and its
gang's, which each flavour declares (`Flavour.permissions`). A rule that is not here is a
call that fails with 403 on a cluster that grants the printed Role: the tests run every
command against the in-memory API with exactly that Role.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from launcher import flavours as registry
from launcher.errors import LaunchError
from launcher.flavours import Flavour


class Rule(NamedTuple):
    group: str  # "" is the core group
    resource: str  # e.g. "pods/log" for a subresource
    verb: str

    def __str__(self) -> str:
        """As the missing-rights line says it: `verb resource.group`."""
        return f"{self.verb} {self.resource}.{self.group}" if self.group else f"{self.verb} {self.resource}"


COMMANDS = ("submit", "status", "logs", "list", "cancel")
READ_ONLY = ("status", "logs", "list")
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")  # the order printed

# the generic calls of launcher.backends (kubernetes.py, k8s_read.py, k8s_logs.py)
GENERIC: dict[str, list[Rule]] = {
    # submit: the ConfigMaps (and rollback's delete); the Service is the flavour's (below)
    "submit": [Rule("", "configmaps", "create"), Rule("", "configmaps", "delete")],
    # status: read_spec (ConfigMap), our_pods, the Warning/Scheduled events of a waiting job
    "status": [Rule("", "configmaps", "get"), Rule("", "pods", "list"), Rule("", "events", "list")],
    # logs: status's reads (it follows the job's phase), and each pod's log
    "logs": [Rule("", "configmaps", "get"), Rule("", "pods", "list"), Rule("", "events", "list"),
             Rule("", "pods/log", "get")],
    # list: our pods in the namespace (the jobs are the flavours')
    "list": [Rule("", "pods", "list")],
    # cancel: read_spec, then get and delete the Service, ConfigMaps and pods left
    "cancel": [Rule("", "configmaps", "get"), Rule("", "configmaps", "delete"),
               Rule("", "services", "get"), Rule("", "services", "delete"),
               Rule("", "pods", "list"), Rule("", "pods", "delete")],
}
# submit creates our headless Service when the flavour does not leave it to its controller
OWN_SERVICE = [Rule("", "services", "create"), Rule("", "services", "delete")]
# pre-flight's cluster-scoped reads (launcher.k8s.preflight): optional, a forbidden one is a note
PREFLIGHT_READS = [Rule("", "namespaces", "get"), Rule("", "nodes", "list"),
                   Rule("scheduling.k8s.io", "priorityclasses", "get"),
                   Rule("apiextensions.k8s.io", "customresourcedefinitions", "get")]


def rules(flavour: Flavour, command: str) -> list[Rule]:
    """What `command` calls for a job of `flavour`, each rule once."""
    out = list(GENERIC[command])
    if command == "submit" and flavour.own_service:
        out += OWN_SERVICE
    out += [Rule(*rule) for rule in flavour.permissions(command)]
    return list(dict.fromkeys(out))


def needed(flavours: Iterable[Flavour], commands: Iterable[str] = COMMANDS) -> list[Rule]:
    commands = list(commands)
    return list(dict.fromkeys(r for f in flavours for c in commands for r in rules(f, c)))


def cluster_reads(flavours: Iterable[Flavour]) -> list[Rule]:
    return list(dict.fromkeys([*PREFLIGHT_READS, *(Rule(*r) for f in flavours for r in f.preflight_reads())]))


# ------------------------------------------------------------------ the manifests


def policy_rules(wanted: Iterable[Rule]) -> list[dict[str, Any]]:
    """RBAC PolicyRules: one per (group, resource), the core group's first, its verbs in
    VERBS order."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for rule in wanted:
        verbs.setdefault((rule.group, rule.resource), set()).add(rule.verb)
    return [{"apiGroups": [group], "resources": [resource],
             "verbs": sorted(found, key=lambda v: VERBS.index(v) if v in VERBS else len(VERBS))}
            for (group, resource), found in sorted(verbs.items(), key=lambda item: (bool(item[0][0]), item[0]))]


def subject(user: str | None = None, group: str | None = None,
            service_account: str | None = None, namespace: str = "default") -> dict[str, Any] | None:
    """The RoleBinding's subject; a service account is NAME (in `namespace`) or NS:NAME."""
    if user:
        return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}
    if group:
        return {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": group}
    if service_account:
        ns, _, name = service_account.rpartition(":")
        return {"kind": "ServiceAccount", "name": name, "namespace": ns or namespace}
    return None


def manifests(flavours: Sequence[Flavour], namespace: str, *, read_only: bool = False,
              who: dict[str, Any] | None = None, cluster_role: bool = False,
              name: str = "leo-launch") -> list[dict[str, Any]]:
    """The Role (and RoleBinding for `who`); with `cluster_role` also the optional
    ClusterRole of pre-flight's reads (and its ClusterRoleBinding)."""
    name = f"{name}-read-only" if read_only else name
    rbac = "rbac.authorization.k8s.io/v1"
    labels = {"app.kubernetes.io/managed-by": "leo-launch"}
    role = {"apiVersion": rbac, "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "rules": policy_rules(needed(flavours, READ_ONLY if read_only else COMMANDS))}
    out = [role]
    if who:
        out.append({"apiVersion": rbac, "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [who]})
    if cluster_role:
        out.append({"apiVersion": rbac, "kind": "ClusterRole",
                    "metadata": {"name": f"{name}-preflight", "labels": labels},
                    "rules": policy_rules(cluster_reads(flavours))})
        if who:
            out.append({"apiVersion": rbac, "kind": "ClusterRoleBinding",
                        "metadata": {"name": f"{name}-preflight", "labels": labels},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": f"{name}-preflight"},
                        "subjects": [who]})
    return out


# ------------------------------------------------------------------ the access check


class AccessDenied(LaunchError):
    """The API server says the user lacks rights a command needs (nothing was done)."""

    def __init__(self, message: str, missing: list[Rule]) -> None:
        super().__init__(message)
        self.missing = missing


def missing(api: Any, namespace: str, wanted: Iterable[Rule]) -> list[Rule]:
    """The rules the API server does not grant in `namespace` (one
    SelfSubjectAccessReview each)."""
    return [rule for rule in wanted if not api.allowed(rule.verb, rule.group, rule.resource, namespace)]


def require(api: Any, flavour: Flavour, command: str, namespace: str, *, doing: str) -> None:
    """AccessDenied naming every missing `verb resource.group` of `command` and the
    `leo-launch rbac` line that prints the Role to ask for."""
    lacking = missing(api, namespace, rules(flavour, command))
    if not lacking:
        return
    ask = f"leo-launch rbac -n {namespace} --scheduler {flavour.name}"
    text = f"not allowed in namespace {namespace}: {', '.join(map(str, lacking))}"
    kind = {Rule(*r) for r in flavour.permissions(command)}
    if set(lacking) <= kind:  # only its kind: say so when another flavour is allowed
        others = [f for f in registry.FLAVOURS.values() if f is not flavour and not f.operator]
        usable = [f.name for f in others if not missing(api, namespace, [Rule(*r) for r in f.permissions(command)])]
        if usable:
            text += f" (--scheduler {' or '.join(usable)} is allowed)"
    raise AccessDenied(f"{text}; {doing}; a cluster admin can grant the Role `{ask}` prints", lacking)
