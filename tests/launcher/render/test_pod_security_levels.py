"""Every rendered flavour is admitted at the Pod Security level it claims.

The claim is `podsecurity.pod_security_level(spec)` (what the pre-flight compares with
a namespace's enforce label); the measure is the independent Standards checker in
tests/launcher/render/pod_security.py, applied to every pod template of the render.
"""

from __future__ import annotations

import itertools

import pytest

from launcher.errors import UsageError
from launcher.render import render
from launcher.spec import contract, podsecurity
from launcher.spec import jobspec as js
from launcher.spec.jobspec import build_job_spec
from tests.launcher.render.pod_security import admission_message, check_objects, pod_templates
from tests.launcher.render_helpers import write_inventory


def measured_level(objects: list[dict]) -> str:
    """The strictest level whose checker admits every pod template of `objects`."""
    templates = [t for obj in objects for t in pod_templates(obj)]
    assert templates, "the render has no pod template"
    for level in ("restricted", "baseline"):
        if not any(check_objects(objects, level).values()):
            return level
    return "privileged"


def problems(objects: list[dict], level: str) -> str:
    return "; ".join(f"{where}: {admission_message(level, found)}"
                     for where, found in check_objects(objects, level).items() if found)


CARDS = (1, 8, 16)  # one node with one card, one full node, two nodes
FLAVOURS = [
    *[("ascend", c, s, m, d) for c, s, m, d in itertools.product(
        CARDS, js.SCHEDULERS, js.RANK_TABLE_MODES, js.ASCEND_DRIVER_MOUNTS)],
    *[(a, c, s, None, None) for a, c, s in itertools.product(("nvidia", "cpu"), CARDS, ("job", "volcano", "jobset"))],
]
# What each flavour claims (issue 16): hostPath driver mounts need privileged.
EXPECTED = {("ascend", "hostpath"): "privileged", ("ascend", "runtime"): "restricted",
            ("nvidia", None): "restricted", ("cpu", None): "restricted"}


@pytest.mark.parametrize(("accel", "cards", "scheduler", "mode", "mount"), FLAVOURS,
                         ids=["-".join(str(p) for p in row if p is not None) for row in FLAVOURS])
def test_every_flavour_passes_the_level_it_claims(tmp_path, accel, cards, scheduler, mode, mount):
    nodes = -(-cards // 8)
    values = {"scheduler": scheduler}
    if cards > 12:
        values["set_overrides"] = [f"metatrain_batch_size={cards}"]
    if accel == "ascend":
        values["ascend_driver_mount"] = mount
        values["rank_table"] = str(write_inventory(tmp_path / "inv.yaml", nodes, cards // nodes)) \
            if mode == "file" else mode
    refused = ((mode == "controller" and scheduler in ("job", "jobset"))
               or (scheduler == "ascendjob" and (cards < 2 or mode == "dynamic")))
    if refused:  # combinations the JobSpec refuses (see test_jobspec)
        with pytest.raises(UsageError):
            build_job_spec(experiment="mini_5shot", accelerator=accel, cards=cards, **values)
        return
    spec = build_job_spec(experiment="mini_5shot", accelerator=accel, cards=cards, **values)
    objects = render.render_validated(spec)  # the strict schema validation stays green
    claimed = podsecurity.pod_security_level(spec)
    assert claimed == EXPECTED[(accel, mount)]
    assert measured_level(objects) == claimed, problems(objects, "restricted")
    if claimed == "restricted":
        assert problems(objects, "restricted") == ""
    else:  # below baseline only because of the driver's hostPath volumes
        found = [m for ms in check_objects(objects, "baseline").values() for m in ms]
        assert found and all(m.startswith("hostPath volumes (") for m in found), found
        assert "ascend-driver" in found[0]
        assert ("hccn-conf" in found[0]) == (mode == "dynamic")
    if scheduler == "ascendjob":  # the scheduler replica and the workers alike
        assert len(pod_templates(objects[-1])) == 2


def test_the_security_context_uses_the_image_ids_and_overrides():
    spec = build_job_spec(experiment="mini_5shot", accelerator="nvidia", cards=8)
    pod = pod_templates(render.render(spec)[-1])[0].spec
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": js.IMAGE_USER["nvidia"],
                                      "runAsGroup": js.IMAGE_GROUP["nvidia"], "fsGroup": js.IMAGE_GROUP["nvidia"],
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False and "hostNetwork" not in pod
    spec = build_job_spec(experiment="mini_5shot", accelerator="ascend", cards=8, run_as_user=1234,
                          run_as_group=5678, scheduler="volcano")
    pod = pod_templates(render.render_validated(spec)[-1])[0].spec
    context = pod["securityContext"]
    # fsGroup follows the group: /cache and /dev/shm (emptyDirs) stay writable for that user
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (1234, 5678, 5678)
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounted = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] in emptydirs}
    assert {contract.CACHE_DIR, contract.SHM_DIR} <= mounted


def test_the_runtime_driver_mount_drops_every_host_path():
    hostpath = build_job_spec(experiment="mini_5shot", accelerator="ascend", cards=8)
    runtime = build_job_spec(experiment="mini_5shot", accelerator="ascend", cards=8, ascend_driver_mount="runtime")
    assert hostpath.ascend_driver_mount == "hostpath"  # MindCluster's samples mount the driver
    assert podsecurity.host_path_mounts(hostpath) == (contract.ASCEND_DRIVER_DIR, "/etc/hccn.conf")
    assert podsecurity.host_path_mounts(runtime) == ()
    pods = {s.ascend_driver_mount: pod_templates(render.render(s)[-1])[0].spec for s in (hostpath, runtime)}
    assert {v["name"] for v in pods["hostpath"]["volumes"]} - {v["name"] for v in pods["runtime"]["volumes"]} \
        == {"ascend-driver", "hccn-conf"}
    mounts = {m["mountPath"] for m in pods["runtime"]["containers"][0]["volumeMounts"]}
    assert contract.ASCEND_DRIVER_DIR not in mounts and "/etc/hccn.conf" not in mounts
    # the rest of the pod is the same: devices, environment, the rank-table wiring
    for pod in pods.values():
        pod["volumes"] = [v for v in pod["volumes"] if "hostPath" not in v]
        pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"]
                                                if m["name"] not in ("ascend-driver", "hccn-conf")]
    assert pods["hostpath"] == pods["runtime"]
