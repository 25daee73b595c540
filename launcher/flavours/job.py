"""`--scheduler job`: an Indexed batch/v1 Job and our headless Service (the default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.flavours.base import Flavour, conditions_phase, number
from launcher.spec import contract


class IndexedJob(Flavour):
    name = "job"
    help = "job: Indexed batch/v1 Job + headless Service (default)"
    title = "an Indexed Job"
    api = ("batch/v1", "Job")
    plural = "jobs"
    template = "job.yaml.j2"
    queue_help = "a Kueue LocalQueue (label kueue.x-k8s.io/queue-name)"
    rank_keys = (contract.JOB_INDEX_ANNOTATION,)
    rank_annotation = contract.JOB_INDEX_ANNOTATION
    kueue_queue = True  # --queue is a Kueue LocalQueue (label), not a scheduler's queue

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
        body = obj.get("spec") or {}
        nodes = number((((obj.get("metadata") or {}).get("annotations")) or {}).get(contract.ANNOTATION_NODES)) \
            or number(body.get("completions"))
        backoff = number(body.get("backoffLimit"))  # restarts of the whole job: per node
        return nodes, (backoff // nodes if backoff is not None and nodes else backoff)

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:
        return conditions_phase(obj, last_failure, succeeded=("Complete", "SuccessCriteriaMet"),
                                failed=("Failed", "FailureTarget"))

    def object_problems(self, obj: Mapping[str, Any], rendered: Any) -> list[str]:
        out = []
        spec = obj.get("spec") or {}
        name = obj["metadata"]["name"]
        template = spec.get("template") or {}
        pod = template.get("spec") or {}
        completions = spec.get("completions")
        if spec.get("completionMode") == "Indexed":
            if not isinstance(completions, int) or completions < 1:
                out.append("an Indexed Job needs completions >= 1")
            elif spec.get("parallelism") != completions:
                out.append("parallelism must equal completions: every rank runs at once")
            elif len(f"{name}-{completions - 1}") > 63:
                out.append(f"pod host name {name}-{completions - 1} is longer than 63 characters")
        if spec.get("podFailurePolicy") and pod.get("restartPolicy") != "Never":
            out.append("a podFailurePolicy needs restartPolicy: Never")
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            out.append("a Job's pods need restartPolicy Never or OnFailure")
        containers = {c.get("name") for c in pod.get("containers") or [] if isinstance(c, Mapping)}
        for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            codes = rule.get("onExitCodes") or {}
            if codes.get("containerName") not in (None, *containers):
                out.append(f"podFailurePolicy.rules[{index}] names unknown container {codes.get('containerName')!r}")
            if codes.get("operator") == "In" and 0 in (codes.get("values") or []):
                out.append(f"podFailurePolicy.rules[{index}]: exit code 0 cannot be a failure")
        subdomain = pod.get("subdomain")
        if subdomain is not None:
            service = rendered.services.get(subdomain)
            if service is None:
                out.append(f"spec.template.spec.subdomain {subdomain!r} names no rendered Service")
            elif (service.get("spec") or {}).get("clusterIP") != "None":
                out.append(f"Service {subdomain} must be headless (clusterIP: None) for pod DNS names")
        out += rendered.template(template, "spec.template")
        return out

    def pod_failure_rules(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(((obj.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or [])

    def failed_pods(self, obj: Mapping[str, Any]) -> int:
        return int((obj.get("status") or {}).get("failed") or 0)

    def restarts(self, obj: Mapping[str, Any]) -> int | None:
        # the Job controller's count of failed pods (their pods may be deleted already):
        # a restart per nodes' worth, as backoffLimit allows --max-restarts x nodes
        failed = number((obj.get("status") or {}).get("failed"))
        if not failed:
            return None
        nodes, limit = self.job_fields(obj)
        count = -(-failed // (nodes or 1))
        if (self.phase(obj, None) or ("",))[0] == "Failed":
            count -= 1  # the last failure ended the job: it was not restarted
        return max(0, count if limit is None else min(count, limit))


FLAVOUR = IndexedJob()
