"""Pod Security Standards checker for rendered pod templates (a test utility).

Applies the controls of the Kubernetes "Pod Security Standards" page to a pod spec
and returns one message per failing control, worded like the API server's Pod
Security admission ("<reason> (<detail>)", naming the field and the containers), so
that a test failure reads like the rejection a hardened namespace would give.

Source of the rules: https://kubernetes.io/docs/concepts/security/pod-security-standards/
(content/en/docs/concepts/security/pod-security-standards.md of kubernetes/website, read
from a copy at commit f915fce8 of the fork dancer1325/kubernetes-website): the "latest"
policy version as of Kubernetes v1.34, whose newest control is "Host Probes / Lifecycle
Hooks (v1.34+)". Reason strings, the order of the messages (by check ID) and which
restricted control replaces which baseline one follow the admission plugin
(k8s.io/pod-security-admission/policy in kubernetes/kubernetes). Written from the
published rules; no code was taken from Kubernetes.

Not modelled:
- the optional "known list" of host ports (the built-in admission has none either);
- relaxations for pods with `hostUsers: false` (user namespaces): the checker is
  stricter there than an API server that applies them;
- controls the admission code gained after that page version (e.g. container
  `securityContext.ulimits`, forbidden at baseline from v1.37): no launcher pod sets them.

Entry points:
    violations(pod_spec, level, metadata=None) -> list[str]
    pod_templates(obj) -> list[PodTemplate]        (Pod, batch/v1 Job, Volcano Job, AscendJob)
    check_objects(objs, level) -> dict[str, list[str]]
    admission_message(level, messages) -> str      ("violates PodSecurity ..." line)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

LEVELS = ("baseline", "restricted")

# Baseline: capabilities that may be added (the container runtime's default set).
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
# Baseline: the "safe" sysctls (the 1.27 and 1.29 additions included).
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
# Baseline: SELinux types that may be set ("" = unset); container_engine_t since 1.31.
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
ALLOWED_PROFILE_TYPES = frozenset({"RuntimeDefault", "Localhost"})  # seccomp and AppArmor
# Restricted: the only volume sources allowed.
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")  # the API server's order


# ---------------------------------------------------------------- helpers

def _quote(values: Iterable[Any]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _containers_phrase(names: list[str]) -> str:
    return f'{_plural("container", "containers", len(names))} {_quote(names)}'


def _setters(pod: bool, containers: list[str]) -> str:
    """'pod', 'container "a"', 'pod and containers "a", "b"'."""
    parts = ["pod"] if pod else []
    if containers:
        parts.append(_containers_phrase(containers))
    return " and ".join(parts)


def _containers(spec: dict) -> Iterator[dict]:
    for key in CONTAINER_LISTS:
        yield from spec.get(key) or []


def _sc(obj: dict) -> dict:
    return obj.get("securityContext") or {}


def _is_windows(spec: dict) -> bool:
    return ((spec.get("os") or {}).get("name")) == "windows"


def _volume_types(volume: dict) -> list[str]:
    return [key for key, value in volume.items() if key != "name" and value is not None]


# ---------------------------------------------------------------- baseline controls

def _host_process(spec: dict, meta: dict) -> str | None:
    pod = bool((_sc(spec).get("windowsOptions") or {}).get("hostProcess"))
    bad = [c.get("name") for c in _containers(spec) if (_sc(c).get("windowsOptions") or {}).get("hostProcess")]
    if pod or bad:
        return f"hostProcess ({_setters(pod, bad)} must not set securityContext.windowsOptions.hostProcess=true)"
    return None


def _host_namespaces(spec: dict, meta: dict) -> str | None:
    bad = [f"{field}=true" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    return f"host namespaces ({', '.join(bad)})" if bad else None


def _privileged(spec: dict, meta: dict) -> str | None:
    bad = [c.get("name") for c in _containers(spec) if _sc(c).get("privileged")]
    if bad:
        return f"privileged ({_containers_phrase(bad)} must not set securityContext.privileged=true)"
    return None


def _capabilities_baseline(spec: dict, meta: dict) -> str | None:
    bad_containers, bad_caps = [], []
    for c in _containers(spec):
        added = (_sc(c).get("capabilities") or {}).get("add") or []
        extra = [cap for cap in added if cap not in BASELINE_CAPABILITIES]
        if extra:
            bad_containers.append(c.get("name"))
            bad_caps.extend(cap for cap in extra if cap not in bad_caps)
    if bad_containers:
        return (f"non-default capabilities ({_containers_phrase(bad_containers)} must not include "
                f"{_quote(sorted(bad_caps))} in securityContext.capabilities.add)")
    return None


def _host_path(spec: dict, meta: dict) -> str | None:
    bad = [v.get("name") for v in spec.get("volumes") or [] if v.get("hostPath") is not None]
    if bad:
        return f'hostPath volumes ({_plural("volume", "volumes", len(bad))} {_quote(bad)})'
    return None


def _host_ports(spec: dict, meta: dict) -> str | None:
    bad_containers, ports = [], []
    for c in _containers(spec):
        used = [p["hostPort"] for p in c.get("ports") or [] if p.get("hostPort")]
        if used:
            bad_containers.append(c.get("name"))
            ports.extend(str(p) for p in used)
    if bad_containers:
        return (f"hostPort ({_containers_phrase(bad_containers)} "
                f"{_plural('uses', 'use', len(bad_containers))} "
                f"{_plural('hostPort', 'hostPorts', len(ports))} {', '.join(ports)})")
    return None


def _host_probes(spec: dict, meta: dict) -> str | None:
    bad_containers, hosts = [], []
    for c in _containers(spec):
        handlers = [c.get(p) or {} for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(c.get("lifecycle") or {}).get(h) or {} for h in ("postStart", "preStop")]
        found = [(h.get(kind) or {}).get("host") for h in handlers for kind in ("httpGet", "tcpSocket")]
        found = [host for host in found if host]
        if found:
            bad_containers.append(c.get("name"))
            hosts.extend(host for host in found if host not in hosts)
    if bad_containers:
        return (f"probe or lifecycle host ({_containers_phrase(bad_containers)} "
                f"{_plural('uses', 'use', len(bad_containers))} "
                f"{_plural('probe or lifecycle host', 'probe or lifecycle hosts', len(hosts))} {_quote(hosts)})")
    return None


def _apparmor(spec: dict, meta: dict) -> str | None:
    bad = []
    for key, value in sorted((meta.get("annotations") or {}).items()):
        if key.startswith(APPARMOR_ANNOTATION_PREFIX) and value and value != "runtime/default" \
                and not value.startswith("localhost/"):
            bad.append(f'metadata.annotations[{key}]="{value}"')
    pod_type = (_sc(spec).get("appArmorProfile") or {}).get("type")
    if pod_type is not None and pod_type not in ALLOWED_PROFILE_TYPES:
        bad.append(f'pod must not set securityContext.appArmorProfile.type to "{pod_type}"')
    for c in _containers(spec):
        ctype = (_sc(c).get("appArmorProfile") or {}).get("type")
        if ctype is not None and ctype not in ALLOWED_PROFILE_TYPES:
            bad.append(f'container "{c.get("name")}" must not set securityContext.appArmorProfile.type to "{ctype}"')
    if bad:
        return f'{_plural("forbidden AppArmor profile", "forbidden AppArmor profiles", len(bad))} ({"; ".join(bad)})'
    return None


def _selinux(spec: dict, meta: dict) -> str | None:
    bad_types, user, role = [], False, False

    def bad(options: dict | None) -> bool:
        nonlocal user, role
        if not options:
            return False
        wrong = False
        if (options.get("type") or "") not in SELINUX_TYPES:
            wrong = True
            if options["type"] not in bad_types:
                bad_types.append(options["type"])
        if options.get("user"):
            wrong = user = True
        if options.get("role"):
            wrong = role = True
        return wrong

    pod = bad(_sc(spec).get("seLinuxOptions"))
    containers = [c.get("name") for c in _containers(spec) if bad(_sc(c).get("seLinuxOptions"))]
    if not (pod or containers):
        return None
    what = []
    if bad_types:
        what.append(f'{_plural("type", "types", len(bad_types))} {_quote(sorted(bad_types))}')
    if user:
        what.append("user may not be set")
    if role:
        what.append("role may not be set")
    return f"seLinuxOptions ({_setters(pod, containers)} set forbidden securityContext.seLinuxOptions: {'; '.join(what)})"


def _proc_mount(spec: dict, meta: dict) -> str | None:
    bad, values = [], []
    for c in _containers(spec):
        value = _sc(c).get("procMount")
        if value is not None and value != "Default":
            bad.append(c.get("name"))
            if value not in values:
                values.append(value)
    if bad:
        return f"procMount ({_containers_phrase(bad)} must not set securityContext.procMount to {_quote(values)})"
    return None


def _seccomp_baseline(spec: dict, meta: dict) -> str | None:
    pod = (_sc(spec).get("seccompProfile") or {}).get("type") == "Unconfined"
    bad = [c.get("name") for c in _containers(spec) if (_sc(c).get("seccompProfile") or {}).get("type") == "Unconfined"]
    if pod or bad:
        return f'seccompProfile ({_setters(pod, bad)} must not set securityContext.seccompProfile.type to "Unconfined")'
    return None


def _sysctls(spec: dict, meta: dict) -> str | None:
    bad = [s.get("name") for s in _sc(spec).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]
    return f"forbidden sysctls ({', '.join(bad)})" if bad else None


# ---------------------------------------------------------------- restricted controls

def _volume_types_restricted(spec: dict, meta: dict) -> str | None:
    bad, types = [], []
    for volume in spec.get("volumes") or []:
        present = _volume_types(volume) or ["unknown"]
        wrong = [t for t in present if t not in RESTRICTED_VOLUME_TYPES]
        if wrong:
            bad.append(volume.get("name"))
            types.extend(t for t in wrong if t not in types)
    if bad:
        return (f'restricted volume types ({_plural("volume", "volumes", len(bad))} {_quote(bad)} '
                f'{_plural("uses", "use", len(bad))} '
                f'{_plural("restricted volume type", "restricted volume types", len(types))} {_quote(sorted(types))})')
    return None


def _allow_privilege_escalation(spec: dict, meta: dict) -> str | None:
    if _is_windows(spec):
        return None
    bad = [c.get("name") for c in _containers(spec) if _sc(c).get("allowPrivilegeEscalation") is not False]
    if bad:
        return (f"allowPrivilegeEscalation != false ({_containers_phrase(bad)} must set "
                f"securityContext.allowPrivilegeEscalation=false)")
    return None


def _run_as_non_root(spec: dict, meta: dict) -> str | None:
    pod_value = _sc(spec).get("runAsNonRoot")
    explicit, implicit = [], []
    for c in _containers(spec):
        value = _sc(c).get("runAsNonRoot")
        if value is False:
            explicit.append(c.get("name"))
        elif value is None and pod_value is not True:
            implicit.append(c.get("name"))
    if pod_value is False or explicit:
        return f"runAsNonRoot != true ({_setters(pod_value is False, explicit)} must not set securityContext.runAsNonRoot=false)"
    if implicit:
        return f"runAsNonRoot != true (pod or {_containers_phrase(implicit)} must set securityContext.runAsNonRoot=true)"
    return None


def _run_as_user(spec: dict, meta: dict) -> str | None:
    pod = _sc(spec).get("runAsUser") == 0
    bad = [c.get("name") for c in _containers(spec) if _sc(c).get("runAsUser") == 0]
    if pod or bad:
        return f"runAsUser=0 ({_setters(pod, bad)} must not set runAsUser=0)"
    return None


def _seccomp_restricted(spec: dict, meta: dict) -> str | None:
    if _is_windows(spec):
        return None
    pod_profile = _sc(spec).get("seccompProfile")
    pod_bad = pod_profile is not None and pod_profile.get("type") not in ALLOWED_PROFILE_TYPES
    pod_ok = pod_profile is not None and not pod_bad
    values = [pod_profile.get("type")] if pod_bad else []
    explicit, implicit = [], []
    for c in _containers(spec):
        profile = _sc(c).get("seccompProfile")
        if profile is not None:
            if profile.get("type") not in ALLOWED_PROFILE_TYPES:
                explicit.append(c.get("name"))
                if profile.get("type") not in values:
                    values.append(profile.get("type"))
        elif not pod_ok:
            implicit.append(c.get("name"))
    if pod_bad or explicit:
        return (f"seccompProfile ({_setters(pod_bad, explicit)} must not set securityContext.seccompProfile.type "
                f"to {_quote(sorted(str(v) for v in values))})")
    if implicit:
        return (f"seccompProfile (pod or {_containers_phrase(implicit)} must set "
                f'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    return None


def _capabilities_restricted(spec: dict, meta: dict) -> str | None:
    if _is_windows(spec):
        return None
    no_drop, bad_add, added = [], [], []
    for c in _containers(spec):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            no_drop.append(c.get("name"))
        extra = [cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
        if extra:
            bad_add.append(c.get("name"))
            added.extend(cap for cap in extra if cap not in added)
    details = []
    if no_drop:
        details.append(f'{_containers_phrase(no_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if bad_add:
        details.append(f"{_containers_phrase(bad_add)} must not include {_quote(sorted(added))} in "
                       f"securityContext.capabilities.add")
    return f"unrestricted capabilities ({'; '.join(details)})" if details else None


BASELINE_CHECKS = (
    _host_process, _host_namespaces, _privileged, _capabilities_baseline, _host_path, _host_ports,
    _host_probes, _apparmor, _selinux, _proc_mount, _seccomp_baseline, _sysctls,
)
RESTRICTED_CHECKS = (
    _volume_types_restricted, _allow_privilege_escalation, _run_as_non_root, _run_as_user,
    _seccomp_restricted, _capabilities_restricted,
)


# The admission plugin's check IDs, which order its messages.
CHECK_IDS = {
    _host_process: "windowsHostProcess", _host_namespaces: "hostNamespaces", _privileged: "privileged",
    _capabilities_baseline: "capabilities_baseline", _host_path: "hostPathVolumes", _host_ports: "hostPorts",
    _host_probes: "hostProbesAndHostLifecycle", _apparmor: "appArmorProfile", _selinux: "seLinuxOptions",
    _proc_mount: "procMount", _seccomp_baseline: "seccompProfile_baseline", _sysctls: "sysctls",
    _volume_types_restricted: "restrictedVolumes", _allow_privilege_escalation: "allowPrivilegeEscalation",
    _run_as_non_root: "runAsNonRoot", _run_as_user: "runAsUser", _seccomp_restricted: "seccompProfile_restricted",
    _capabilities_restricted: "capabilities_restricted",
}
# Restricted controls that replace a baseline control (the API server's check overrides).
OVERRIDES = {
    _volume_types_restricted: _host_path,
    _capabilities_restricted: _capabilities_baseline,
    _seccomp_restricted: _seccomp_baseline,
}
# Restricted controls that do not apply to Windows pods (spec.os.name: windows).
LINUX_ONLY = (_allow_privilege_escalation, _seccomp_restricted, _capabilities_restricted)


def violations(pod_spec: dict, level: str, metadata: dict | None = None) -> list[str]:
    """Messages for every control of `level` that `pod_spec` fails (empty: admitted).

    `metadata` is the pod (template) metadata; only its AppArmor annotations matter.
    Restricted includes baseline, except where a restricted control replaces a
    baseline one (volume types for hostPath, capabilities, seccomp), as in the API
    server, so each problem is reported once.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    meta = metadata or {}
    checks = list(BASELINE_CHECKS)
    if level == "restricted":
        restricted = [c for c in RESTRICTED_CHECKS if not (_is_windows(pod_spec) and c in LINUX_ONLY)]
        replaced = {OVERRIDES[c] for c in restricted if c in OVERRIDES}
        checks = [c for c in checks if c not in replaced] + restricted
    # The API server lists failed checks in the order of their check IDs.
    checks.sort(key=CHECK_IDS.__getitem__)
    return [message for message in (check(pod_spec, meta) for check in checks) if message]


def admission_message(level: str, messages: list[str]) -> str:
    """The API server's wording of a rejection (as `kubectl`/events show it)."""
    return f'violates PodSecurity "{level}:latest": ' + ", ".join(messages)


# ---------------------------------------------------------------- rendered objects

@dataclass(frozen=True)
class PodTemplate:
    where: str  # e.g. 'Job/leo-x', 'vcjob leo-x task worker', 'AscendJob leo-x replica Worker'
    metadata: dict
    spec: dict


def pod_templates(obj: dict) -> list[PodTemplate]:
    """The pod templates an object creates pods from; [] for objects without pods.

    Pod (spec), batch/v1 Job (spec.template), Volcano batch.volcano.sh Job
    (spec.tasks[*].template), AscendJob mindxdl.gitee.com (spec.replicaSpecs.*.template) and
    JobSet jobset.x-k8s.io (spec.replicatedJobs[*].template.spec.template).
    """
    kind, api = obj.get("kind"), str(obj.get("apiVersion", ""))
    name = (obj.get("metadata") or {}).get("name", "?")
    spec = obj.get("spec") or {}

    def tpl(where: str, template: dict | None) -> PodTemplate:
        template = template or {}
        return PodTemplate(where, template.get("metadata") or {}, template.get("spec") or {})

    if kind == "Pod" and api == "v1":
        return [PodTemplate(f"Pod/{name}", obj.get("metadata") or {}, spec)]
    if kind == "Job" and api.startswith("batch/"):
        return [tpl(f"Job/{name}", spec.get("template"))]
    if kind == "Job" and api.startswith("batch.volcano.sh/"):
        return [tpl(f"vcjob/{name} task {t.get('name', i)}", t.get("template"))
                for i, t in enumerate(spec.get("tasks") or [])]
    if kind == "AscendJob" and api.startswith("mindxdl.gitee.com/"):
        return [tpl(f"AscendJob/{name} replica {role}", (replica or {}).get("template"))
                for role, replica in (spec.get("replicaSpecs") or {}).items()]
    if kind == "JobSet" and api.startswith("jobset.x-k8s.io/"):
        return [tpl(f"JobSet/{name} replicated job {r.get('name', i)}",
                    ((r.get("template") or {}).get("spec") or {}).get("template"))
                for i, r in enumerate(spec.get("replicatedJobs") or [])]
    return []


def check_objects(objs: Iterable[dict], level: str) -> dict[str, list[str]]:
    """Violations per pod template of every object (templates without any are kept, empty)."""
    return {t.where: violations(t.spec, level, t.metadata)
            for obj in objs if obj for t in pod_templates(obj)}
