"""The Pod Security Standards checker (tests/launcher/pod_security.py) catches every control.

Each case starts from a pod that passes `restricted` (so also `baseline`), changes
one thing, and states which levels must now reject it and what the message names.
Cases that stay admitted show the allowed values of the same control.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from tests.launcher.render.pod_security import (
    LEVELS,
    admission_message,
    check_objects,
    pod_templates,
    violations,
)


def container(name: str, **extra) -> dict:
    return {
        "name": name,
        "image": "leo-launch:cpu",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        **extra,
    }


def compliant_pod() -> dict:
    """A pod spec that satisfies `restricted`: every container kind, every allowed volume type."""
    return {
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "600"}],
        },
        "initContainers": [container("stage")],
        "containers": [container("leo", ports=[{"name": "msrun", "containerPort": 8118}])],
        "ephemeralContainers": [container("debugger")],
        "volumes": [
            {"name": "config", "configMap": {"name": "leo-config"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "podinfo", "downwardAPI": {"items": []}},
            {"name": "token", "projected": {"sources": []}},
            {"name": "creds", "secret": {"secretName": "storage"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            {"name": "inline", "csi": {"driver": "example.csi"}},
        ],
    }


def sc(spec: dict, which: str = "containers", index: int = 0) -> dict:
    """The securityContext of a container (created if missing)."""
    return spec[which][index].setdefault("securityContext", {})


Mutation = Callable[[dict, dict], None]  # (spec, metadata) -> None

# (id, mutation, levels that must reject, text a message must contain: one for all levels
# or one per level where restricted reports the problem under its own control)
FAILING: list[tuple[str, Mutation, tuple[str, ...], str | dict[str, str]]] = [
    # ---- baseline: HostProcess
    ("hostProcess pod", lambda s, m: s["securityContext"].update(windowsOptions={"hostProcess": True}),
     LEVELS, "hostProcess (pod must not set securityContext.windowsOptions.hostProcess=true)"),
    ("hostProcess ephemeral", lambda s, m: sc(s, "ephemeralContainers").update(windowsOptions={"hostProcess": True}),
     LEVELS, 'hostProcess (container "debugger" must not set securityContext.windowsOptions.hostProcess=true)'),
    # ---- baseline: host namespaces
    ("hostNetwork", lambda s, m: s.update(hostNetwork=True), LEVELS, "host namespaces (hostNetwork=true)"),
    ("hostPID", lambda s, m: s.update(hostPID=True), LEVELS, "host namespaces (hostPID=true)"),
    ("hostIPC", lambda s, m: s.update(hostIPC=True), LEVELS, "host namespaces (hostIPC=true)"),
    # ---- baseline: privileged
    ("privileged init", lambda s, m: sc(s, "initContainers").update(privileged=True),
     LEVELS, 'privileged (container "stage" must not set securityContext.privileged=true)'),
    ("privileged ephemeral", lambda s, m: sc(s, "ephemeralContainers").update(privileged=True),
     LEVELS, 'container "debugger" must not set securityContext.privileged=true'),
    # ---- baseline: capabilities beyond the default set
    ("add SYS_ADMIN", lambda s, m: sc(s)["capabilities"].update(add=["SYS_ADMIN"]),
     LEVELS, {"baseline": 'non-default capabilities (container "leo" must not include "SYS_ADMIN" in '
                          'securityContext.capabilities.add)',
              "restricted": 'unrestricted capabilities (container "leo" must not include "SYS_ADMIN" in '
                            'securityContext.capabilities.add)'}),
    ("add NET_RAW init", lambda s, m: sc(s, "initContainers")["capabilities"].update(add=["NET_RAW"]),
     LEVELS, 'container "stage" must not include "NET_RAW"'),
    # ---- baseline: hostPath
    ("hostPath", lambda s, m: s["volumes"].append({"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}}),
     LEVELS, {"baseline": 'hostPath volumes (volume "driver")',
              "restricted": 'restricted volume types (volume "driver" uses restricted volume type "hostPath")'}),
    # ---- baseline: host ports
    ("hostPort", lambda s, m: s["containers"][0]["ports"][0].update(hostPort=8118),
     LEVELS, 'hostPort (container "leo" uses hostPort 8118)'),
    ("hostPort init", lambda s, m: s["initContainers"][0].update(ports=[{"containerPort": 1, "hostPort": 9000}]),
     LEVELS, 'container "stage" uses hostPort 9000'),
    # ---- baseline: host in probes and lifecycle hooks (v1.34+)
    ("probe host", lambda s, m: s["containers"][0].update(
        livenessProbe={"httpGet": {"port": 8118, "host": "10.0.0.1"}}),
     LEVELS, 'probe or lifecycle host (container "leo" uses probe or lifecycle host "10.0.0.1")'),
    ("lifecycle host", lambda s, m: s["initContainers"][0].update(
        lifecycle={"preStop": {"tcpSocket": {"port": 1, "host": "node"}}}),
     LEVELS, 'container "stage" uses probe or lifecycle host "node"'),
    # ---- baseline: AppArmor
    ("apparmor annotation", lambda s, m: m.setdefault("annotations", {}).update(
        {"container.apparmor.security.beta.kubernetes.io/leo": "unconfined"}),
     LEVELS, 'forbidden AppArmor profile (metadata.annotations[container.apparmor.security.beta.kubernetes.io/leo]'
             '="unconfined")'),
    ("apparmor pod field", lambda s, m: s["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
     LEVELS, 'pod must not set securityContext.appArmorProfile.type to "Unconfined"'),
    ("apparmor container field", lambda s, m: sc(s).update(appArmorProfile={"type": "Unconfined"}),
     LEVELS, 'container "leo" must not set securityContext.appArmorProfile.type to "Unconfined"'),
    # ---- baseline: SELinux
    ("selinux type", lambda s, m: sc(s).update(seLinuxOptions={"type": "spc_t"}),
     LEVELS, 'seLinuxOptions (container "leo" set forbidden securityContext.seLinuxOptions: type "spc_t")'),
    ("selinux user", lambda s, m: s["securityContext"].update(seLinuxOptions={"user": "system_u"}),
     LEVELS, "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: user may not be set)"),
    ("selinux role", lambda s, m: sc(s, "initContainers").update(seLinuxOptions={"role": "object_r"}),
     LEVELS, 'container "stage" set forbidden securityContext.seLinuxOptions: role may not be set'),
    # ---- baseline: /proc mount
    ("procMount", lambda s, m: sc(s, "ephemeralContainers").update(procMount="Unmasked"),
     LEVELS, 'procMount (container "debugger" must not set securityContext.procMount to "Unmasked")'),
    # ---- baseline: seccomp not Unconfined (restricted reports it under its own control)
    ("seccomp pod Unconfined", lambda s, m: s["securityContext"].update(seccompProfile={"type": "Unconfined"}),
     LEVELS, 'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")'),
    ("seccomp container Unconfined", lambda s, m: sc(s).update(seccompProfile={"type": "Unconfined"}),
     LEVELS, 'seccompProfile (container "leo" must not set securityContext.seccompProfile.type to "Unconfined")'),
    # ---- baseline: sysctls
    ("unsafe sysctl", lambda s, m: s["securityContext"]["sysctls"].append({"name": "kernel.msgmax", "value": "1"}),
     LEVELS, "forbidden sysctls (kernel.msgmax)"),
    # ---- restricted: volume types
    ("nfs volume", lambda s, m: s["volumes"].append({"name": "code", "nfs": {"server": "x", "path": "/"}}),
     ("restricted",), 'restricted volume types (volume "code" uses restricted volume type "nfs")'),
    ("volume without source", lambda s, m: s["volumes"].append({"name": "bare"}),
     ("restricted",), 'volume "bare" uses restricted volume type "unknown"'),
    # ---- restricted: privilege escalation
    ("allowPrivilegeEscalation unset init", lambda s, m: sc(s, "initContainers").pop("allowPrivilegeEscalation"),
     ("restricted",), 'allowPrivilegeEscalation != false (container "stage" must set '
                      'securityContext.allowPrivilegeEscalation=false)'),
    ("allowPrivilegeEscalation true", lambda s, m: sc(s).update(allowPrivilegeEscalation=True),
     ("restricted",), 'container "leo" must set securityContext.allowPrivilegeEscalation=false'),
    # ---- restricted: runAsNonRoot, pod level vs container level
    ("runAsNonRoot unset", lambda s, m: s["securityContext"].pop("runAsNonRoot"),
     ("restricted",), 'runAsNonRoot != true (pod or containers "stage", "leo", "debugger" must set '
                      'securityContext.runAsNonRoot=true)'),
    ("runAsNonRoot unset in one container", lambda s, m: (
        s["securityContext"].pop("runAsNonRoot"), sc(s).update(runAsNonRoot=True),
        sc(s, "initContainers").update(runAsNonRoot=True)),
     ("restricted",), 'runAsNonRoot != true (pod or container "debugger" must set securityContext.runAsNonRoot=true)'),
    ("runAsNonRoot false in container", lambda s, m: sc(s).update(runAsNonRoot=False),
     ("restricted",), 'runAsNonRoot != true (container "leo" must not set securityContext.runAsNonRoot=false)'),
    ("runAsNonRoot false in pod", lambda s, m: s["securityContext"].update(runAsNonRoot=False),
     ("restricted",), "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"),
    # ---- restricted: runAsUser != 0
    ("runAsUser 0 pod", lambda s, m: s["securityContext"].update(runAsUser=0),
     ("restricted",), "runAsUser=0 (pod must not set runAsUser=0)"),
    ("runAsUser 0 init", lambda s, m: sc(s, "initContainers").update(runAsUser=0),
     ("restricted",), 'runAsUser=0 (container "stage" must not set runAsUser=0)'),
    # ---- restricted: seccomp RuntimeDefault/Localhost at pod or every container
    ("seccomp unset", lambda s, m: s["securityContext"].pop("seccompProfile"),
     ("restricted",), 'seccompProfile (pod or containers "stage", "leo", "debugger" must set '
                      'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'),
    ("seccomp unset in one container", lambda s, m: (
        s["securityContext"].pop("seccompProfile"), sc(s).update(seccompProfile={"type": "RuntimeDefault"}),
        sc(s, "initContainers").update(seccompProfile={"type": "Localhost", "localhostProfile": "p.json"})),
     ("restricted",), 'seccompProfile (pod or container "debugger" must set'),
    # ---- restricted: capabilities drop ALL, add only NET_BIND_SERVICE
    ("capabilities not dropped", lambda s, m: sc(s).pop("capabilities"),
     ("restricted",), 'unrestricted capabilities (container "leo" must set securityContext.capabilities.drop=["ALL"])'),
    ("capabilities drop lowercase all", lambda s, m: sc(s, "ephemeralContainers")["capabilities"].update(drop=["all"]),
     ("restricted",), 'container "debugger" must set securityContext.capabilities.drop=["ALL"]'),
    ("capabilities add default CHOWN", lambda s, m: sc(s)["capabilities"].update(add=["CHOWN"]),
     ("restricted",), 'unrestricted capabilities (container "leo" must not include "CHOWN" in '
                      'securityContext.capabilities.add)'),
]


@pytest.mark.parametrize("mutate, rejected_by, expected", [c[1:] for c in FAILING], ids=[c[0] for c in FAILING])
def test_each_control_rejects_its_violation(mutate, rejected_by, expected):
    spec, meta = compliant_pod(), {}
    mutate(spec, meta)
    for level in LEVELS:
        found = violations(spec, level, meta)
        if level in rejected_by:
            text = expected[level] if isinstance(expected, dict) else expected
            assert any(text in message for message in found), (level, found)
        else:
            assert found == [], (level, found)


ALLOWED: list[tuple[str, Mutation]] = [
    ("hostProcess false", lambda s, m: s["securityContext"].update(windowsOptions={"hostProcess": False})),
    ("host namespaces false", lambda s, m: s.update(hostNetwork=False, hostPID=False, hostIPC=False)),
    ("privileged false", lambda s, m: sc(s).update(privileged=False)),
    ("hostPort 0", lambda s, m: s["containers"][0]["ports"][0].update(hostPort=0)),
    ("probe host empty", lambda s, m: s["containers"][0].update(readinessProbe={"tcpSocket": {"port": 8118, "host": ""}})),
    ("apparmor allowed", lambda s, m: (
        m.setdefault("annotations", {}).update({
            "container.apparmor.security.beta.kubernetes.io/leo": "runtime/default",
            "container.apparmor.security.beta.kubernetes.io/stage": "localhost/leo-profile"}),
        s["securityContext"].update(appArmorProfile={"type": "RuntimeDefault"}),
        sc(s).update(appArmorProfile={"type": "Localhost", "localhostProfile": "leo"}))),
    ("selinux allowed types", lambda s, m: (
        s["securityContext"].update(seLinuxOptions={"type": "container_t", "level": "s0:c1,c2"}),
        sc(s).update(seLinuxOptions={"type": "container_engine_t"}))),
    ("procMount Default", lambda s, m: sc(s).update(procMount="Default")),
    ("safe sysctls", lambda s, m: s["securityContext"]["sysctls"].extend(
        {"name": n, "value": "1"} for n in ("kernel.shm_rmid_forced", "net.ipv4.ip_unprivileged_port_start",
                                            "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_fin_timeout"))),
    ("add NET_BIND_SERVICE", lambda s, m: sc(s)["capabilities"].update(add=["NET_BIND_SERVICE"])),
    ("runAsNonRoot per container", lambda s, m: (
        s["securityContext"].pop("runAsNonRoot"),
        *(sc(s, w).update(runAsNonRoot=True) for w in ("containers", "initContainers", "ephemeralContainers")))),
    ("seccomp per container", lambda s, m: (
        s["securityContext"].pop("seccompProfile"),
        *(sc(s, w).update(seccompProfile={"type": "RuntimeDefault"})
          for w in ("containers", "initContainers", "ephemeralContainers")))),
    ("seccomp Localhost pod", lambda s, m: s["securityContext"].update(
        seccompProfile={"type": "Localhost", "localhostProfile": "profiles/leo.json"})),
    ("runAsUser unset", lambda s, m: s["securityContext"].pop("runAsUser")),
]


@pytest.mark.parametrize("mutate", [c[1] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_allowed_values_pass_restricted(mutate):
    spec, meta = compliant_pod(), {}
    mutate(spec, meta)
    assert violations(spec, "restricted", meta) == []
    assert violations(spec, "baseline", meta) == []


def test_compliant_pod_passes_both_levels():
    assert violations(compliant_pod(), "restricted") == []
    assert violations(compliant_pod(), "baseline") == []


def test_windows_pods_are_exempt_from_linux_only_controls():
    spec = compliant_pod()
    spec["os"] = {"name": "windows"}
    spec["securityContext"].pop("seccompProfile")
    for c in ("containers", "initContainers", "ephemeralContainers"):
        sc(spec, c).clear()
    assert violations(spec, "restricted") == []


def test_restricted_reports_a_replaced_baseline_control_once():
    spec = compliant_pod()
    spec["volumes"].append({"name": "driver", "hostPath": {"path": "/usr/local/Ascend/driver"}})
    sc(spec)["capabilities"]["add"] = ["SYS_ADMIN"]
    spec["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    found = violations(spec, "restricted")
    assert [m.split(" (")[0] for m in found] == [
        "unrestricted capabilities", "restricted volume types", "seccompProfile"]
    assert 'must not set securityContext.seccompProfile.type to "Unconfined"' in found[2]


def test_bare_pod_gives_the_api_servers_rejection_of_issue_16():
    """Today's NVIDIA pod (no securityContext) against restricted, worded as kube-apiserver 1.31 did."""
    spec = {"containers": [{"name": "leo", "image": "leo-launch:nvidia"}],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    assert violations(spec, "baseline") == []
    assert admission_message("restricted", violations(spec, "restricted")) == (
        'violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "leo" must set securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "leo" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "leo" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "leo" must set securityContext.seccompProfile.type to '
        '"RuntimeDefault" or "Localhost")')


def test_unknown_level_is_an_error():
    with pytest.raises(ValueError):
        violations(compliant_pod(), "privileged")


# ---------------------------------------------------------------- templates of rendered objects

def template(spec: dict, **labels) -> dict:
    return {"metadata": {"labels": labels}, "spec": spec}


def test_pod_templates_of_each_kind():
    good, bad = compliant_pod(), compliant_pod()
    bad["hostNetwork"] = True
    objs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": copy.deepcopy(good)},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
         "spec": {"template": template(copy.deepcopy(good))}},
        {"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "metadata": {"name": "v"},
         "spec": {"tasks": [{"name": "worker", "replicas": 2, "template": template(copy.deepcopy(bad))}]}},
        {"apiVersion": "mindxdl.gitee.com/v1", "kind": "AscendJob", "metadata": {"name": "a"},
         "spec": {"replicaSpecs": {"Scheduler": {"replicas": 1, "template": template(copy.deepcopy(good))},
                                   "Worker": {"replicas": 1, "template": template(copy.deepcopy(bad))}}}},
    ]
    assert [t.where for o in objs for t in pod_templates(o)] == [
        "Pod/p", "Job/j", "vcjob/v task worker", "AscendJob/a replica Scheduler", "AscendJob/a replica Worker"]
    result = check_objects(objs, "baseline")
    assert {where for where, found in result.items() if found} == {"vcjob/v task worker", "AscendJob/a replica Worker"}
    assert result["AscendJob/a replica Worker"] == ["host namespaces (hostNetwork=true)"]


def test_template_annotations_reach_the_apparmor_control():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"metadata": {"annotations": {
               "container.apparmor.security.beta.kubernetes.io/leo": "unconfined"}}, "spec": compliant_pod()}}}
    (found,) = check_objects([job], "baseline").values()
    assert found and found[0].startswith("forbidden AppArmor profile (")
