"""`--scheduler volcano`: a gang-scheduled batch.volcano.sh/v1alpha1 Job (vcjob)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from launcher.flavours.base import Flavour, number, reason_text
from launcher.spec import contract
from launcher.spec import names as syn

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
    nickname = "vcjob"
    own_service = False  # its svc plugin makes the Service (named after the job)
    queue_help = "a Volcano queue (default: default)"
    operator = "Volcano"
    crd = "jobs.batch.volcano.sh"
    crd_title = "Volcano"
    schema_file = "volcano/batch.volcano.sh_jobs.yaml"
    podgroup = PODGROUP
    rank_keys = (TASK_INDEX,)
    rings_config_always = True
    controller_rank_table = True
    scheduler_name = "volcano"

    def pod_hostname(self, spec: Any, node_rank: int) -> str:
        return f"{spec.name}-{contract.VOLCANO_TASK}-{node_rank}"

    def template_context(self, spec: Any, ctx: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002
        return {"task_name": contract.VOLCANO_TASK, "volcano_queue": spec.queue or "default"}

    def pod_templates(self, obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [(f"spec.tasks[{i}].template", task.get("template") or {})
                for i, task in enumerate((obj.get("spec") or {}).get("tasks") or []) if isinstance(task, Mapping)]

    def object_problems(self, obj: Mapping[str, Any], rendered: Any) -> list[str]:
        out = []
        spec = obj.get("spec") or {}
        name = obj["metadata"]["name"]
        if spec.get("schedulerName") != "volcano":
            out.append("spec.schedulerName must be volcano")
        if (queue := spec.get("queue")) is not None and (problem := syn.dns1123_label_problem(str(queue))):
            out.append(f"spec.queue {queue!r} {problem}")
        tasks = [t for t in spec.get("tasks") or [] if isinstance(t, Mapping)]
        replicas = sum(int(t.get("replicas") or 0) for t in tasks)
        if not isinstance(spec.get("minAvailable"), int) or not 0 < spec["minAvailable"] <= replicas:
            out.append(f"spec.minAvailable {spec.get('minAvailable')!r} must be 1..{replicas} (the pods)")
        out += policy_problems(spec.get("policies") or [], "spec.policies")
        task_names: set[Any] = set()
        for index, task in enumerate(tasks):
            where = f"spec.tasks[{index}]"
            task_name = task.get("name")
            if (problem := syn.dns1123_label_problem(str(task_name))):
                out.append(f"{where}.name {task_name!r} {problem}")
            if task_name in task_names:
                out.append(f"{where}.name {task_name!r} is used twice")
            task_names.add(task_name)
            if len(f"{name}-{task_name}-{int(task.get('replicas') or 1) - 1}") > 63:
                out.append(f"{where}: pod host names {name}-{task_name}-<index> are longer than 63 characters")
            out += policy_problems(task.get("policies") or [], f"{where}.policies")
            out += rendered.template(task.get("template") or {}, f"{where}.template")
        return out

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
        body = obj.get("spec") or {}
        attempts = number(body.get("maxRetry"))  # Volcano counts attempts: restarts + 1
        return number(body.get("minAvailable")), None if attempts is None else max(attempts - 1, 0)

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:
        state = (obj.get("status") or {}).get("state") or {}
        vphase = state.get("phase")
        mapped = PHASES.get(vphase or "Pending", "Pending")
        if mapped == "Failed":
            # Volcano sets no reason or message: the failed pods (it keeps them) say why
            text = reason_text(state.get("reason"), state.get("message"))
            if last_failure and last_failure not in text:
                text = f"{text}; last failure: {last_failure}" if text else last_failure
            return "Failed", text or vphase
        if mapped in ("Succeeded", "Running"):
            return mapped, None
        if mapped == "Restarting":
            return "Restarting", last_failure or reason_text(state.get("reason"), state.get("message")) or None
        return None

    def restarts(self, obj: Mapping[str, Any]) -> int | None:
        # retryCount counts failed attempts; the one that reached maxRetry was not restarted
        retries = (obj.get("status") or {}).get("retryCount")
        if not isinstance(retries, int):
            return None
        limit = self.job_fields(obj)[1]
        return retries if limit is None else min(retries, limit)

    def failed_pods(self, obj: Mapping[str, Any]) -> int:
        # a restart deletes the failed pods at once (the vcjob is Restarting for under a
        # second, then Pending again): retryCount is what remains of them
        retries = (obj.get("status") or {}).get("retryCount")
        return retries if isinstance(retries, int) else 0

    def preflight_reads(self) -> list[tuple[str, str, str]]:
        return [(QUEUE[0].rpartition("/")[0], "queues", "get")]  # preflight's queue (cluster-scoped)

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


def policy_problems(policies: Any, where: str) -> list[str]:
    """Volcano's lifecycle policies: each an event or an exit code, never exit code 0."""
    out = []
    for index, policy in enumerate(policies):
        has_event = bool(policy.get("event") or policy.get("events"))
        has_code = policy.get("exitCode") is not None
        if has_event == has_code:
            out.append(f"{where}[{index}] needs either event(s) or exitCode, not both or neither")
        if policy.get("exitCode") == 0:
            out.append(f"{where}[{index}]: exit code 0 cannot be a failure")
    return out


FLAVOUR = Volcano()
