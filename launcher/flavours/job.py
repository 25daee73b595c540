"""`--scheduler job`: an Indexed batch/v1 Job and our headless Service (the default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.flavours.base import Flavour, number, reason_text
from launcher.spec import contract


class IndexedJob(Flavour):
    name = "job"
    help = "job: Indexed batch/v1 Job + headless Service (default)"
    title = "an Indexed Job"
    api = ("batch/v1", "Job")
    plural = "jobs"
    template = "job.yaml.j2"
    manifest_tag = "job"
    rank_keys = (contract.JOB_INDEX_ANNOTATION,)
    sets_job_index = True  # the pods get JOB_COMPLETION_INDEX (not a controller's variable)
    kueue_queue = True  # --queue is a Kueue LocalQueue (label), not a scheduler's queue

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
        body = obj.get("spec") or {}
        nodes = number((((obj.get("metadata") or {}).get("annotations")) or {}).get(contract.ANNOTATION_NODES)) \
            or number(body.get("completions"))
        backoff = number(body.get("backoffLimit"))  # restarts of the whole job: per node
        return nodes, (backoff // nodes if backoff is not None and nodes else backoff)

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:
        conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"}
        for kind in ("Complete", "SuccessCriteriaMet"):
            if kind in conditions:
                return "Succeeded", None
        for kind in ("Failed", "FailureTarget"):
            if kind in conditions:
                text = reason_text(conditions[kind].get("reason"), conditions[kind].get("message"))
                if last_failure and last_failure not in text:
                    text = f"{text}; last failure: {last_failure}" if text else last_failure
                return "Failed", text or "failed"
        if (obj.get("spec") or {}).get("suspend") or "Suspended" in conditions:
            queue_name = (((obj.get("metadata") or {}).get("labels")) or {}).get(contract.KUEUE_QUEUE_LABEL)
            where = f" in queue {queue_name}" if queue_name else ""
            return "Pending", f"suspended: waiting to be admitted{where} (Kueue)"
        return None

    def failed_pods(self, obj: Mapping[str, Any]) -> int:
        return int((obj.get("status") or {}).get("failed") or 0)


FLAVOUR = IndexedJob()
