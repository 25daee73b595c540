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

# the operator's pod labels (kubeflow/common: the old and the current spelling)
REPLICA_INDEX = ("replica-index", "training.kubeflow.org/replica-index")
# an AscendJob's state is its last true condition (kubectl's State column)
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
    manifest_tag = "ascendjob"
    own_service = False  # the operator makes the scheduler pod's Service
    operator = "MindCluster's ascend-operator"
    crd = "ascendjobs.mindxdl.gitee.com"
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
