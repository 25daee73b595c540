"""What a job flavour (one Kubernetes kind that runs the pods) decides, as one class.

Generic code (spec validation, rendering, status, cancel, pre-flight) asks the flavour of
`spec.scheduler` (launcher.flavours.flavour_of) and never branches on a kind's name. A
flavour sees the job through duck-typed arguments (a JobSpec, API objects as dicts): this
package sits below launcher.spec in the import layers, so that JobSpec can ask it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from launcher.spec import contract

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


# The calls the Kubernetes backend makes on a flavour's job object, per command (RBAC
# verbs, launcher.k8s.rbac): find_job reads it (get), submit creates it and deletes it
# again on a rollback, list_jobs lists the kind, cancel reads and deletes it.
KIND_VERBS = {"submit": ("get", "create", "delete"), "status": ("get",), "logs": ("get",),
              "list": ("list",), "cancel": ("get", "delete")}


def number(value: Any) -> int | None:
    return int(value) if str(value).isdigit() else None


DEADLINE_EXCEEDED = "DeadlineExceeded"  # a Job's or a pod's activeDeadlineSeconds passed


def reason_text(reason: Any, message: Any) -> str:
    reason, message = str(reason or "").strip(), " ".join(str(message or "").split())
    if reason == DEADLINE_EXCEEDED:  # said plainly: the job ran out of --max-runtime
        return f"deadline exceeded (--max-runtime){': ' + message if message else ''}"
    if reason and message:
        return f"{reason}: {message}"
    return reason or message


def conditions_phase(obj: Mapping[str, Any], last_failure: str | None, *, succeeded: tuple[str, ...],
                     failed: tuple[str, ...]) -> tuple[str, str | None] | None:
    """The phase a job controller's True conditions state (batch/v1 Job, JobSet): the first of
    `succeeded`, then of `failed` (with the last rank failure), then suspended (Kueue)."""
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []
                  if isinstance(c, Mapping) and c.get("status") == "True"}
    if any(kind in conditions for kind in succeeded):
        return "Succeeded", None
    for kind in failed:
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


class Flavour:
    """The defaults are those of a kind whose pods are `<name>-<rank>` behind the job's
    headless Service; subclasses override what differs."""

    name: str = ""  # the --scheduler value
    help: str = ""  # one line for --scheduler's help
    title: str = ""  # its object in a sentence, e.g. "a Volcano Job"
    api: tuple[str, str] = ("", "")  # (apiVersion, kind) of the object that runs the pods
    plural: str = ""  # the API's resource name of `api`
    template: str = ""  # k8s_templates/<template>: the job object
    nickname: str | None = None  # in messages and file names (NN-<nickname>-<name>.yaml)
    own_service: bool = True  # we render the headless Service (else the controller makes one)
    scheduler_name: str | None = None  # the pods' schedulerName (None: the default scheduler)
    port_name: str = "msrun"  # the name of MindSpore's scheduler port
    operator_cluster: bool = False  # an operator gives the pods MindSpore's cluster variables
    queue_help: str = ""  # what --queue means here
    operator: str | None = None  # who serves the kind, when it is not built in
    crd: str | None = None  # its CustomResourceDefinition's name (pre-flight, schema)
    schema_file: str | None = None  # the vendored CRD under launcher/schemas/
    crd_title: str = ""  # its schema in messages ("<title> CRD schema: ...")
    podgroup: tuple[str, str] | None = None  # the gang's PodGroup kind (status reads them)
    rank_keys: tuple[str, ...] = ()  # pod annotations/labels holding the node rank
    container: str | None = None  # the training container's name (None: contract's)
    rank_table_modes: tuple[str, ...] | None = None  # None: every mode
    rank_table_why: str = ""  # why the others do not work
    default_rank_table: str = "dynamic"
    rings_config_always: bool = False  # Ascend: the controller fills rings-config
    controller_rank_table: bool = False  # --rank-table controller works (rings-config filled)
    rank_annotation: str | None = None  # the pod annotation our env reads the node rank from
    kueue_queue: bool = False  # --queue is a Kueue LocalQueue (a label), not the controller's
    deadline_in_pods: bool = False  # --max-runtime as each pod's activeDeadlineSeconds (no job field)

    # ---------------------------------------------------------------- the job (spec)

    def spec_problems(self, spec: Any) -> Iterable[str]:  # noqa: ARG002 - a hook
        """What this flavour cannot run, as sentences about the job's fields."""
        return ()

    def pod_hostname(self, spec: Any, node_rank: int) -> str:
        return f"{spec.name}-{node_rank}"

    def scheduler_hostname(self, spec: Any) -> str | None:  # noqa: ARG002 - a hook
        """A pod of its own for MindSpore's scheduler role, when the flavour has one."""
        return None

    def master_addr(self, spec: Any) -> str:
        """Stable DNS name of node rank 0's pod (resolves once the pod exists)."""
        return f"{self.pod_hostname(spec, 0)}.{spec.service_name}.{spec.namespace}.svc"

    # ---------------------------------------------------------------- the API object

    def job_fields(self, obj: Mapping[str, Any]) -> tuple[int | None, int | None]:  # noqa: ARG002
        """(nodes, max_restarts) read from the job object when the ConfigMap is missing."""
        return None, None

    def phase(self, obj: Mapping[str, Any], last_failure: str | None) -> tuple[str, str | None] | None:  # noqa: ARG002
        """The job's (phase, reason) when the controller's state decides it, else None
        (then the pods decide)."""
        return None

    def restarts(self, obj: Mapping[str, Any]) -> int | None:  # noqa: ARG002 - a hook
        """Restarts the controller counts itself (beyond the pods')."""
        return None

    def pod_failure_rules(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:  # noqa: ARG002 - a hook
        """The rules of the batch/v1 podFailurePolicy that governs the pods, if any."""
        return []

    def failed_pods(self, obj: Mapping[str, Any]) -> int:  # noqa: ARG002 - a hook
        """Failed pods the controller counts (they may be gone already)."""
        return 0

    def preflight(self, ctx: Any) -> Iterable[str]:  # noqa: ARG002 - a hook
        """Problems only this flavour's controller can have (besides a missing CRD)."""
        return ()

    def missing_crd(self) -> str:
        return (f"--scheduler {self.name}: no CustomResourceDefinition {self.crd}: is {self.operator} "
                "installed? (else use --scheduler job)")

    # ---------------------------------------------------------------- rendering, checks

    def template_context(self, spec: Any, ctx: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002
        """What this flavour's template needs beyond the shared context `ctx`."""
        return {}

    def pod_templates(self, obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The pod templates inside a job object, with where they are."""
        return [("spec.template", (obj.get("spec") or {}).get("template") or {})]

    def embedded(self, obj: Mapping[str, Any]) -> list[tuple[str, Any, str, str]]:
        """Built-in objects inside a custom resource, checked against the Kubernetes schemas
        and models: (where, object, schema file, client model)."""
        return [(where, template, "podtemplatespec-v1.json", "V1PodTemplateSpec")
                for where, template in self.pod_templates(obj)]

    def worker_template(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """The pod template of the training pods (their environment tells the job's outputs)."""
        templates = self.pod_templates(obj)
        return templates[0][1] if templates else {}

    def object_problems(self, obj: Mapping[str, Any], rendered: Any) -> list[str]:  # noqa: ARG002
        """What the controller needs that no schema states; `rendered` offers the job's other
        objects (`services`, `configmaps`) and the shared pod template check `template(t, where)`."""
        return []

    # ---------------------------------------------------------------- permissions

    def permissions(self, command: str) -> list[tuple[str, str, str]]:
        """(API group, resource, verb) this flavour's objects need for a command: its job
        object (KIND_VERBS), and its gang's PodGroups, which status (and logs) list."""
        out = [(_group(self.api[0]), self.plural, verb) for verb in KIND_VERBS.get(command, ())]
        if self.podgroup and command in ("status", "logs"):
            out.append((_group(self.podgroup[0]), _plural(self.podgroup[1]), "list"))
        return out

    def preflight_reads(self) -> list[tuple[str, str, str]]:
        """Cluster-scoped reads of `preflight` (optional: a forbidden one is skipped)."""
        return []

    @property
    def schema(self) -> Path | None:
        return SCHEMAS / self.schema_file if self.schema_file else None


def _group(api_version: str) -> str:
    """The API group of an apiVersion ("" for the core group's "v1")."""
    return api_version.rpartition("/")[0]


def _plural(kind: str) -> str:
    return f"{kind.lower()}s"
