"""`--scheduler jobset`: a JobSet (jobset.x-k8s.io/v1alpha2, kubernetes-sigs/jobset), the
upstream API for multi-node jobs that Kueue and the Kubeflow Trainer build on.

One replicated job of N Jobs with one pod each: node rank = the Job's index, host names
`<jobset>-<rjob>-<index>-0.<subdomain>` (the JobSet's headless Service). A pod exiting with
a non-retriable code fails its Job by the pod failure policy (reason PodFailurePolicy),
which fails the whole set, as does a Job past --max-runtime (its activeDeadlineSeconds); any
other failure restarts the set, up to --max-restarts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.flavours.base import Flavour, conditions_phase, number

REPLICATED_JOB = "worker"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"  # label and annotation of its Jobs and pods
BAD_CONFIG_RULE = "badConfiguration"
JOB_FAILED_BY_POLICY = "PodFailurePolicy"  # batch/v1's reason when a FailJob rule matched
JOB_DEADLINE_EXCEEDED = "DeadlineExceeded"  # --max-runtime: a restart would not finish either


class JobSet(Flavour):
    name = "jobset"
    help = "jobset: a JobSet (kubernetes-sigs/jobset, Kueue-ready)"
    title = "a JobSet"
    api = ("jobset.x-k8s.io/v1alpha2", "JobSet")
    plural = "jobsets"
    template = "jobset.yaml.j2"
    own_service = False  # the JobSet controller makes the headless Service (its subdomain)
    operator = "the JobSet controller"
    crd = "jobsets.jobset.x-k8s.io"
    crd_title = "JobSet"
    schema_file = "jobset/jobset-v1alpha2.schema.json"
    rank_keys = (JOB_INDEX,)
    rank_annotation = JOB_INDEX
    kueue_queue = True
    queue_help = "a Kueue LocalQueue (label kueue.x-k8s.io/queue-name)"

    def pod_hostname(self, spec: Any, node_rank: int) -> str:
        return f"{spec.name}-{REPLICATED_JOB}-{node_rank}-0"

    def template_context(self, spec: Any, ctx: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002
        return {"replicated_job": REPLICATED_JOB, "bad_config_rule": BAD_CONFIG_RULE,
                "job_failure_reasons": [JOB_FAILED_BY_POLICY, JOB_DEADLINE_EXCEEDED]}

    def pod_templates(self, obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [(f"spec.replicatedJobs[{i}].template.spec.template",
                 ((rjob.get("template") or {}).get("spec") or {}).get("template") or {})
                for i, rjob in enumerate(_replicated_jobs(obj))]

    def embedded(self, obj: Mapping[str, Any]) -> list[tuple[str, Any, str, str]]:
        return [(f"spec.replicatedJobs[{i}].template", rjob.get("template") or {},
                 "jobtemplatespec-batch-v1.json", "V1JobTemplateSpec")
                for i, rjob in enumerate(_replicated_jobs(obj))]

    def object_problems(self, obj: Mapping[str, Any], rendered: Any) -> list[str]:
        out = []
        spec = obj.get("spec") or {}
        name = obj["metadata"]["name"]
        rjobs = _replicated_jobs(obj)
        if [r.get("name") for r in rjobs] != [REPLICATED_JOB]:
            out.append(f"spec.replicatedJobs must be one named {REPLICATED_JOB!r}")
        network = spec.get("network") or {}
        if network.get("enableDNSHostnames") is not True or network.get("subdomain") != name:
            out.append(f"spec.network needs enableDNSHostnames: true and subdomain {name!r} (the pods' host names)")
        rules = (spec.get("failurePolicy") or {}).get("rules") or []
        if not any(r.get("action") == "FailJobSet" and JOB_FAILED_BY_POLICY in (r.get("onJobFailureReasons") or [])
                   for r in rules):
            out.append(f"spec.failurePolicy needs a FailJobSet rule on {JOB_FAILED_BY_POLICY} (exit code 2 ends the set)")
        for index, rjob in enumerate(rjobs):
            where = f"spec.replicatedJobs[{index}]"
            job = (rjob.get("template") or {}).get("spec") or {}
            pod = (job.get("template") or {}).get("spec") or {}
            if job.get("completionMode") != "Indexed" or job.get("completions") != 1 or job.get("parallelism") != 1:
                out.append(f"{where}: each Job runs one pod (Indexed, completions and parallelism 1)")
            if job.get("backoffLimit") != 0:
                out.append(f"{where}: backoffLimit must be 0 (the JobSet restarts, not the Job)")
            fail_rules = [r for r in (job.get("podFailurePolicy") or {}).get("rules") or [] if r.get("action") == "FailJob"]
            if not fail_rules or pod.get("restartPolicy") != "Never":
                out.append(f"{where}: a FailJob podFailurePolicy rule and restartPolicy Never are needed")
            replicas = rjob.get("replicas")
            if not isinstance(replicas, int) or replicas < 1:
                out.append(f"{where}.replicas {replicas!r} must be >= 1")
            elif len(f"{name}-{rjob.get('name')}-{replicas - 1}-0") > 63:
                out.append(f"{where}: pod host names {name}-{rjob.get('name')}-<index>-0 are longer than 63 characters")
            out += rendered.template((job.get("template") or {}), f"{where}.template.spec.template")
        return out

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:
        rjobs = _replicated_jobs(obj)
        nodes = number(rjobs[0].get("replicas")) if rjobs else None
        return nodes, number(((obj.get("spec") or {}).get("failurePolicy") or {}).get("maxRestarts"))

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:
        return conditions_phase(obj, last_failure, succeeded=("Completed",), failed=("Failed",))

    def pod_failure_rules(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        rjobs = _replicated_jobs(obj)
        job = ((rjobs[0].get("template") or {}).get("spec") or {}) if rjobs else {}
        return list((job.get("podFailurePolicy") or {}).get("rules") or [])

    def restarts(self, obj: Mapping[str, Any]) -> int | None:
        restarts = (obj.get("status") or {}).get("restarts")
        return restarts if isinstance(restarts, int) else None


def _replicated_jobs(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in (obj.get("spec") or {}).get("replicatedJobs") or [] if isinstance(r, Mapping)]


FLAVOUR = JobSet()
