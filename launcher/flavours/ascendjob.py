"""`--scheduler ascendjob`: MindCluster's AscendJob (mindxdl.gitee.com/v1, ascend-operator).

The operator makes the pods `<job>-scheduler-0` (MindSpore's scheduler role, also its
Service) and `<job>-worker-<i>`, and injects MindSpore's cluster variables into the
container named contract.ASCENDJOB_CONTAINER."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from launcher.flavours.base import Flavour, number, reason_text
from launcher.flavours.volcano import PODGROUP
from launcher.spec import contract
from launcher.spec import names as syn

# the operator's pod labels (kubeflow/common: the old and the current spelling)
REPLICA_INDEX = ("replica-index", "training.kubeflow.org/replica-index")
# an AscendJob's state is its last true condition (kubectl's State column)
# the Scheduler pod runs only MindSpore's scheduler role (no NPUs, no data)
SCHEDULER_REQUESTS = {"cpu": "1", "memory": "4Gi", "ephemeral-storage": "2Gi"}
SCHEDULER_CACHE = "1Gi"  # the Scheduler stages nothing: its /cache holds msrun's logs only
PHASES = {"Created": "Pending", "Running": "Running", "Restarting": "Restarting",
          "Succeeded": "Succeeded", "Failed": "Failed"}


def condition(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An AscendJob's current condition: the last true one ({} when none yet)."""
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or []
                  if isinstance(c, Mapping) and c.get("status") == "True"]
    return dict(conditions[-1]) if conditions else {}


class AscendJob(Flavour):
    name = "ascendjob"
    help = "ascendjob: MindCluster's AscendJob (ascend-operator, Ascend only)"
    title = "an AscendJob"
    api = ("mindxdl.gitee.com/v1", "AscendJob")
    plural = "ascendjobs"
    template = "ascendjob.yaml.j2"
    own_service = False  # the operator makes the scheduler pod's Service
    scheduler_name = "volcano"  # the operator's pods are gang-scheduled by Volcano
    port_name = contract.ASCENDJOB_PORT_NAME  # the operator reads MS_SCHED_PORT from it
    operator_cluster = True
    queue_help = "a Volcano queue (default: default)"
    operator = "MindCluster's ascend-operator"
    crd = "ascendjobs.mindxdl.gitee.com"
    crd_title = "AscendJob"
    schema_file = "ascendjob/ascend-operator.yaml"
    podgroup = PODGROUP  # its pods are gang-scheduled by Volcano
    rank_keys = REPLICA_INDEX
    container = contract.ASCENDJOB_CONTAINER
    rank_table_modes = ("none", "controller", "file")
    rank_table_why = "its worker pods have no stable DNS names for the rendezvous"

    def missing_crd(self) -> str:
        return (f"--scheduler ascendjob: no CustomResourceDefinition {self.crd}: is {self.operator} "
                "installed? (else use --scheduler volcano or job)")
    default_rank_table = "none"
    controller_rank_table = True

    def spec_problems(self, spec: Any) -> Iterable[str]:
        if spec.accelerator != "ascend":
            yield (f"--scheduler ascendjob runs Ascend training (MindCluster's ascend-operator), "
                   f"not {spec.accelerator}; use --accel ascend")
        elif spec.cards < 2:
            # with one process MindSpore forms no cluster: the Scheduler pod would have none to serve
            yield "--scheduler ascendjob runs a MindSpore cluster of at least 2 cards; for one card use --scheduler job"

    def pod_hostname(self, spec: Any, node_rank: int) -> str:
        return f"{spec.name}-{contract.ASCENDJOB_WORKER}-{node_rank}"

    def scheduler_hostname(self, spec: Any) -> str | None:
        return f"{spec.name}-{contract.ASCENDJOB_SCHEDULER}-0"

    def master_addr(self, spec: Any) -> str:
        """The operator's Service of the scheduler pod (pods get MS_SCHED_HOST)."""
        return f"{self.scheduler_hostname(spec)}.{spec.namespace}.svc"

    def template_context(self, spec: Any, ctx: dict[str, Any]) -> dict[str, Any]:
        job_labels = dict(ctx["job_labels"])
        for key, value in (contract.ASCENDJOB_FRAMEWORK_LABEL, contract.ASCENDJOB_PRODUCT_LABEL):
            job_labels[key] = value
        return {"job_labels": job_labels, "replica_specs": self._replicas(spec, ctx),
                "volcano_queue": spec.queue or "default",
                "min_available": spec.nodes + 1}  # the Scheduler pod and every Worker, as one gang

    def _replicas(self, spec: Any, ctx: dict[str, Any]) -> list[dict[str, Any]]:
        """The Scheduler and Worker replica types. Workers repel each other (one per node);
        the Scheduler has no NPUs, touches no storage (no credentials) and may go anywhere."""
        key, product = contract.ASCENDJOB_PRODUCT_LABEL
        out = []
        for kind, role in (("Scheduler", contract.ASCENDJOB_SCHEDULER), ("Worker", contract.ASCENDJOB_WORKER)):
            labels = {**ctx["pod_labels"], key: product, contract.LABEL_ROLE: role}
            worker = role == contract.ASCENDJOB_WORKER
            env = ctx["env"]
            out.append({
                **ctx["pod"],  # the shared pod template's values, then this replica type's
                "type": kind, "role": role, "replicas": spec.nodes if worker else 1, "labels": labels,
                "npu": worker, "restart_policy": None, "subdomain": None, "scheduler_name": None,
                "env": env if worker else [var for var in env if var["kind"] != "secret"],
                "requests": ctx["requests"] if worker else dict(SCHEDULER_REQUESTS),
                "limits": ctx["limits"] if worker else {k: SCHEDULER_REQUESTS[k] for k in ("memory", "ephemeral-storage")},
                "cache_size": ctx["pod"]["cache_size"] if worker else SCHEDULER_CACHE,
                "anti_affinity": {contract.LABEL_JOB: spec.name, contract.LABEL_ROLE: role} if worker else None,
                "node_selector": dict(spec.node_selector) if worker else {},
                "tolerations": ctx["tolerations"] if worker else [],
                "pinned_nodes": [node.name for node in spec.inventory] if worker else [],
            })
        return out

    def pod_templates(self, obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [(f"spec.replicaSpecs.{kind}.template", replica.get("template") or {})
                for kind, replica in ((obj.get("spec") or {}).get("replicaSpecs") or {}).items()
                if isinstance(replica, Mapping)]

    def worker_template(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        return ((((obj.get("spec") or {}).get("replicaSpecs") or {}).get("Worker") or {}).get("template") or {})

    def object_problems(self, obj: Mapping[str, Any], rendered: Any) -> list[str]:
        """What the ascend-operator's validation (ascendjob_validate.go) and env injection need."""
        out = []
        spec = obj.get("spec") or {}
        name = obj["metadata"]["name"]
        labels = obj["metadata"].get("labels") or {}
        key, value = contract.ASCENDJOB_FRAMEWORK_LABEL
        if labels.get(key) != value:
            out.append(f"metadata.labels must have {key}={value} (the operator picks MindSpore's roles by it)")
        replicas = {k: r for k, r in (spec.get("replicaSpecs") or {}).items() if isinstance(r, Mapping)}
        if set(replicas) != {"Scheduler", "Worker"}:
            out.append(f"spec.replicaSpecs must be Scheduler and Worker for MindSpore, not {sorted(replicas)}")
        if replicas.get("Scheduler", {}).get("replicas", 1) != 1:
            out.append("spec.replicaSpecs.Scheduler.replicas must be 1")
        total = sum(int(r.get("replicas", 1) or 0) for r in replicas.values())
        policy = (spec.get("runPolicy") or {}).get("schedulingPolicy") or {}
        if policy.get("minAvailable") != total:
            out.append(f"spec.runPolicy.schedulingPolicy.minAvailable {policy.get('minAvailable')!r} must be "
                       f"{total} (every pod: MindSpore's cluster starts only with all of them)")
        if (queue := policy.get("queue")) is not None and (problem := syn.dns1123_label_problem(str(queue))):
            out.append(f"spec.runPolicy.schedulingPolicy.queue {queue!r} {problem}")
        if spec.get("successPolicy") not in (None, "", "AllWorkers"):
            out.append(f"spec.successPolicy {spec.get('successPolicy')!r} must be empty or AllWorkers")
        for kind, replica in replicas.items():
            where = f"spec.replicaSpecs.{kind}"
            if len(f"{name}-{kind.lower()}-{int(replica.get('replicas', 1) or 1) - 1}") > 63:
                out.append(f"{where}: pod names {name}-{kind.lower()}-<index> are longer than 63 characters")
            template = replica.get("template") or {}
            containers = [c.get("name") for c in (template.get("spec") or {}).get("containers") or []
                          if isinstance(c, Mapping)]
            if contract.ASCENDJOB_CONTAINER not in containers:
                out.append(f"{where}: the operator needs a container named {contract.ASCENDJOB_CONTAINER!r} "
                           f"(it injects MindSpore's variables there only), not {containers}")
            out += rendered.template(template, f"{where}.template")
        return out

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
        body = obj.get("spec") or {}
        nodes = number(((body.get("replicaSpecs") or {}).get("Worker") or {}).get("replicas"))
        return nodes, number((body.get("runPolicy") or {}).get("backoffLimit"))

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:
        current = condition(obj)
        mapped = PHASES.get(current.get("type") or "Created", "Pending")
        text = reason_text(current.get("reason"), current.get("message"))
        if mapped == "Failed":
            if last_failure and last_failure not in text:
                text = f"{text}; last failure: {last_failure}" if text else last_failure
            return "Failed", text or "failed"
        if mapped in ("Succeeded", "Running"):
            return mapped, None
        if mapped == "Restarting":
            return "Restarting", last_failure or text or None
        return None


FLAVOUR = AscendJob()
