"""Run a rendered pod template in a container, as the kubelet would run it (a test helper).

    argv = PodRun(pod, image=..., configmaps=..., secrets=..., facts=PodFacts(...),
                  workdir=tmp).argv(network=["--network", "host"], name="leo-0")

turns the Job's pod template (from the project's own render code) into `podman run`:
- `command` replaces the image's ENTRYPOINT, `args` its CMD;
- env: literal values; downward-API fieldRefs filled in from PodFacts (an annotation the
  pod does not have gives "", as the kubelet does); secretKeyRefs from `secrets`;
- configMap and downwardAPI volumes are written the kubelet's way (a timestamped
  directory, a `..data` symlink to it, and one symlink per key through `..data`) and
  mounted read-only; emptyDir is a fresh host directory (`medium: Memory` at /dev/shm:
  podman's --shm-size with the volume's sizeLimit);
- securityContext: runAsUser/runAsGroup → --user, fsGroup → --group-add (and owns the
  emptyDirs, setgid, as the kubelet makes them), capabilities.drop ALL → --cap-drop,
  allowPrivilegeEscalation: false → no-new-privileges, seccomp RuntimeDefault is podman's
  default;
- resources.limits: cpu → --cpus, memory → --memory;
- the pod's hostname, and the names the headless Service gives (`hosts`) via --add-host.
Anything else in the pod spec that would change how the container runs raises, so the
helper cannot silently run something other than the pod.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# fields of the pod spec this helper does not need to translate (scheduling, bookkeeping)
IGNORED_POD_KEYS = {"affinity", "automountServiceAccountToken", "enableServiceLinks", "restartPolicy",
                    "subdomain", "terminationGracePeriodSeconds", "containers", "volumes",
                    "securityContext", "nodeSelector", "tolerations", "hostname"}
IGNORED_CONTAINER_KEYS = {"name", "image", "ports", "command", "args", "env", "volumeMounts",
                          "resources", "securityContext", "imagePullPolicy",
                          "terminationMessagePolicy", "terminationMessagePath"}
_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


@dataclass
class PodFacts:
    """What the API server and kubelet know about one pod that its template does not."""
    name: str
    namespace: str = "default"
    node_name: str = "node-0"
    pod_ip: str = "127.0.0.1"
    host_ip: str = "127.0.0.1"
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def field(self, path: str) -> str:
        simple = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                  "spec.nodeName": self.node_name, "status.podIP": self.pod_ip,
                  "status.hostIP": self.host_ip}
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
        if match:
            return getattr(self, match.group(1)).get(match.group(2), "")
        raise ValueError(f"fieldRef {path!r} is not supported by tests/podrun.py")

    def field_file(self, path: str) -> str:
        """A downwardAPI volume file: whole maps as sorted `key="value"` lines."""
        if path in ("metadata.annotations", "metadata.labels"):
            values = getattr(self, path.split(".")[1])
            return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(values.items()))
        return self.field(path)


def quantity(text: str | int) -> float:
    """A Kubernetes quantity ("2", "500m", "8Gi") as a number."""
    text = str(text)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    for suffix, factor in _QUANTITY.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def write_kubelet_volume(directory: Path, files: dict[str, str]) -> Path:
    """The atomic-writer layout of configMap/secret/downwardAPI volumes:
    DIR/..2026_01_01_00_00_00.0001/KEY, DIR/..data -> that, DIR/KEY -> ..data/KEY."""
    directory.mkdir(parents=True)
    payload = directory / "..2026_01_01_00_00_00.000000001"
    payload.mkdir()
    for key, text in files.items():
        (payload / key).write_text(text)
        (payload / key).chmod(0o644)
        (directory / key).symlink_to(f"..data/{key}")
    (directory / "..data").symlink_to(payload.name)
    for path in (directory, payload):
        path.chmod(0o755)
    return directory


@dataclass
class PodRun:
    pod: dict  # the Job's spec.template
    image: str
    facts: PodFacts
    workdir: Path  # host directories for the pod's volumes go here
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address, as a Service's DNS

    def argv(self, *, name: str, network: list[str], extra_env: dict[str, str] | None = None) -> list[str]:
        spec = self.pod["spec"]
        unknown = set(spec) - IGNORED_POD_KEYS
        if unknown:
            raise ValueError(f"pod spec keys not translated: {sorted(unknown)}")
        (container,) = spec["containers"]
        unknown = set(container) - IGNORED_CONTAINER_KEYS
        if unknown:
            raise ValueError(f"container keys not translated: {sorted(unknown)}")
        argv = ["run", "--name", name, "--hostname", self.facts.name, *network]
        argv += self._security(spec.get("securityContext", {}), container.get("securityContext", {}))
        argv += self._resources(container.get("resources", {}))
        for host, address in self.hosts.items():
            argv += ["--add-host", f"{host}:{address}"]
        for key, value in {**self._env(container.get("env", [])), **(extra_env or {})}.items():
            argv += ["--env", f"{key}={value}"]
        argv += self._volumes(spec, container)
        argv += self._termination_log(container)
        command = container.get("command")
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        return [*argv, self.image, *container.get("args", [])]

    def _env(self, env: list[dict]) -> dict[str, str]:
        out = {}
        for var in env:
            if "value" in var:
                out[var["name"]] = str(var["value"])
            elif "fieldRef" in var["valueFrom"]:
                out[var["name"]] = self.facts.field(var["valueFrom"]["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in var["valueFrom"]:
                ref = var["valueFrom"]["secretKeyRef"]
                out[var["name"]] = self.secrets[ref["name"]][ref["key"]]
            else:
                raise ValueError(f"env {var['name']}: {var['valueFrom']} is not supported")
        return out

    def _security(self, pod_ctx: dict, ctx: dict) -> list[str]:
        merged = {**pod_ctx, **ctx}
        argv = []
        if "runAsUser" in merged:
            group = merged.get("runAsGroup")
            argv += ["--user", f"{merged['runAsUser']}" + (f":{group}" if group is not None else "")]
        if merged.get("runAsNonRoot") and merged.get("runAsUser", 1) == 0:
            raise ValueError("runAsNonRoot with runAsUser 0: the kubelet refuses this pod")
        if "fsGroup" in pod_ctx:
            argv += ["--group-add", str(pod_ctx["fsGroup"])]
        for group in pod_ctx.get("supplementalGroups", []):
            argv += ["--group-add", str(group)]
        for cap in ctx.get("capabilities", {}).get("drop", []):
            argv += ["--cap-drop", cap]
        for cap in ctx.get("capabilities", {}).get("add", []):
            argv += ["--cap-add", cap]
        if ctx.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        if ctx.get("readOnlyRootFilesystem"):
            argv += ["--read-only"]
        seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp != "RuntimeDefault":
            raise ValueError(f"seccompProfile {seccomp} is not supported")
        return argv

    def _resources(self, resources: dict) -> list[str]:
        limits = resources.get("limits", {})
        argv = []
        if "cpu" in limits:
            # never more than this machine has (podman refuses that; a node would not schedule it)
            argv += ["--cpus", f"{min(quantity(limits['cpu']), os.cpu_count() or 1):g}"]
        if "memory" in limits:
            argv += ["--memory", str(int(quantity(limits["memory"])))]
        return argv

    @property
    def termination_log(self) -> Path:
        """The host file behind the container's terminationMessagePath."""
        return self.workdir / "termination-log"

    def _termination_log(self, container: dict) -> list[str]:
        # the kubelet: an empty file any user may write, bind-mounted at the message path
        path = container.get("terminationMessagePath", "/dev/termination-log")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.termination_log.write_text("")
        self.termination_log.chmod(0o666)
        return ["--volume", f"{self.termination_log}:{path}:rw"]

    def _volumes(self, spec: dict, container: dict) -> list[str]:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        fs_group = spec.get("securityContext", {}).get("fsGroup")
        argv = []
        for mount in container.get("volumeMounts", []):
            volume, path = volumes[mount["name"]], mount["mountPath"]
            read_only = mount.get("readOnly", False)
            host = self.workdir / "volumes" / mount["name"]
            if "configMap" in volume:
                data = self.configmaps[volume["configMap"]["name"]]
                write_kubelet_volume(host, dict(data))
                read_only = True  # the kubelet mounts these read-only whatever the mount says
            elif "downwardAPI" in volume:
                files = {item["path"]: self.facts.field_file(item["fieldRef"]["fieldPath"])
                         for item in volume["downwardAPI"]["items"]}
                write_kubelet_volume(host, files)
                read_only = True
            elif "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
                if path != "/dev/shm":
                    raise ValueError(f"a memory-backed emptyDir at {path} is not supported")
                size = volume["emptyDir"].get("sizeLimit")
                argv += ["--shm-size", str(int(quantity(size)))] if size else []
                continue
            elif "emptyDir" in volume:
                host.mkdir(parents=True)
                if fs_group is not None:  # the kubelet: group fsGroup, setgid, group-writable
                    os.chown(host, 0, fs_group)
                    host.chmod(0o2775)
            else:
                raise ValueError(f"volume {mount['name']}: {sorted(volume)} is not supported")
            argv += ["--volume", f"{host}:{path}:{'ro' if read_only else 'rw'}"]
        return argv
