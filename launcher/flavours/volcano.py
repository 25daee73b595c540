"""`--scheduler volcano`: a gang-scheduled batch.volcano.sh/v1alpha1 Job (vcjob)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from launcher.flavours.base import Flavour, number, reason_text
from launcher.spec import contract

QUEUE = ("scheduling.volcano.sh/v1beta1", "Queue")
PODGROUP = ("scheduling.volcano.sh/v1beta1", "PodGroup")
TASK_INDEX = "volcano.sh/task-index"
PHASES = {"Pending": "Pending", "Inqueue": "Pending", "Running": "Running",
          "Restarting": "Restarting", "Completing": "Running", "Completed": "Succeeded",
          "Failed": "Failed", "Aborting": "Failed", "Aborted": "Failed",
          "Terminating": "Failed", "Terminated": "Failed"}


class Volcano(Flavour):
    name = "volcano"
    help = "volcano: a gang-scheduled vcjob"
    title = "a Volcano Job"
    api = ("batch.volcano.sh/v1alpha1", "Job")
    plural = "jobs"
    template = "vcjob.yaml.j2"
    manifest_tag = "vcjob"
    operator = "Volcano"
    crd = "jobs.batch.volcano.sh"
    schema_file = "volcano/batch.volcano.sh_jobs.yaml"
    podgroup = PODGROUP
    rank_keys = (TASK_INDEX,)
    rings_config_always = True
    controller_rank_table = True
    scheduler_name = "volcano"  # the pods' schedulerName

    def pod_hostname(self, spec: Any, node_rank: int) -> str:
        return f"{spec.name}-{contract.VOLCANO_TASK}-{node_rank}"

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
        body = obj.get("spec") or {}
        return number(body.get("minAvailable")), number(body.get("maxRetry"))

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:
        state = (obj.get("status") or {}).get("state") or {}
        vphase = state.get("phase")
        mapped = PHASES.get(vphase or "Pending", "Pending")
        if mapped == "Failed":
            return "Failed", reason_text(state.get("reason") or vphase, state.get("message")) or last_failure
        if mapped in ("Succeeded", "Running"):
            return mapped, None
        if mapped == "Restarting":
            return "Restarting", last_failure or reason_text(state.get("reason"), state.get("message")) or None
        return None

    def restarts(self, obj: Mapping[str, Any]) -> int | None:
        retries = (obj.get("status") or {}).get("retryCount")
        return retries if isinstance(retries, int) else None

    def preflight(self, ctx: Any) -> Iterable[str]:
        name = ctx.spec.queue or "default"
        try:
            queue = ctx.get(QUEUE, None, name)
        except Exception as err:
            if getattr(err, "forbidden", False):
                return  # the queue is checked when readable
            raise
        if queue is None:
            yield f"--queue {name}: no Volcano queue {name}"
        elif ((queue.get("status") or {}).get("state") or "Open") != "Open":
            yield f"--queue {name}: Volcano queue {name} is {queue['status']['state']}, not Open"

    def missing_crd(self) -> str:
        return (f"--scheduler volcano: Volcano is not installed (no CustomResourceDefinition "
                f"{self.crd}); use --scheduler job")


FLAVOUR = Volcano()
