"""`ClusterAPI`: the thin interface the Kubernetes backend uses (create/get/list/delete
plain dict objects, read a pod's log lines), and `KubernetesAPI`, which implements it with
the official `kubernetes` client (`ApiClient.call_api`, JSON in and out). Tests use it
against the kmock emulator and also replace it with an in-memory fake."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from launcher import flavours
from launcher.errors import LaunchError

POD = ("v1", "Pod")
EVENT = ("v1", "Event")
CONFIGMAP = ("v1", "ConfigMap")
SERVICE = ("v1", "Service")
SECRET = ("v1", "Secret")
# cluster-scoped kinds: pass namespace None
NAMESPACE = ("v1", "Namespace")
NODE = ("v1", "Node")
PRIORITY_CLASS = ("scheduling.k8s.io/v1", "PriorityClass")
CRD = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Pod": "pods", "Event": "events",
           "Job": "jobs", "PodGroup": "podgroups", "Secret": "secrets", "Namespace": "namespaces",
           "Node": "nodes", "PriorityClass": "priorityclasses",
           "CustomResourceDefinition": "customresourcedefinitions", "Queue": "queues",
           **{f.api[1]: f.plural for f in flavours.FLAVOURS.values()}}


class KubeError(LaunchError):
    """An API call failed: HTTP status, the API's reason and message (one line)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason, self.message = status, reason, message
        text = f"{reason}: {message}" if message and message != reason else reason
        super().__init__(f"{text} (HTTP {status})" if status else text)

    @property
    def forbidden(self) -> bool:
        """RBAC (or authentication) refused the request: not an answer about the object."""
        return self.status in (401, 403)


# ------------------------------------------------------------------ the thin interface


class ClusterAPI(Protocol):
    """What the backend needs from a Kubernetes API server; objects are plain dicts."""

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create `obj` in its namespace; KubeError (e.g. 409 AlreadyExists) on failure."""

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object (namespace None: a cluster-scoped kind), or None when it (or its
        resource type) does not exist; KubeError 403 when RBAC forbids reading it."""

    def list(self, api_version: str, kind: str, namespace: str | None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of a kind (namespace None: every namespace, or a cluster-scoped kind);
        [] when the resource type is unknown (e.g. Volcano not installed); KubeError 403
        when RBAC forbids it."""

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *,
               propagation: str = "Background") -> bool:
        """Delete one object (dependents per `propagation`); False when it did not exist."""

    def log_lines(self, namespace: str, pod: str, *, container: str | None = None,
                  follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        """The lines of a pod's log (following it until the container ends)."""

    def allowed(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        """Whether the API server lets the caller do `verb` on `resource` ("pods/log" for a
        subresource) of API `group` in `namespace` (a SelfSubjectAccessReview)."""


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS.get(kind)
    if plural is None:
        raise LaunchError(f"the Kubernetes backend does not handle {kind} objects")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


class KubernetesAPI:
    """`ClusterAPI` over the official client's ApiClient (JSON requests and responses)."""

    def __init__(self, api_client: Any, host: str = "") -> None:
        self.client = api_client
        self.host = host or getattr(getattr(api_client, "configuration", None), "host", "")

    def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
              body: Any = None, stream: bool = False, timeout: Any = (10, 60)) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json, */*"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self.client.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False,
                _return_http_data_only=True, _request_timeout=timeout)
        except ApiException as err:
            raise api_error(err) from err
        except HTTPError as err:
            reason = getattr(err, "reason", None) or err
            raise KubeError(0, "Unreachable", f"cannot reach the Kubernetes API at {self.host}: "
                            f"{str(reason).splitlines()[0]}") from err
        if stream:
            return response
        data = response.data
        try:
            return json.loads(data) if data else {}
        except ValueError as err:
            raise KubeError(response.status, "BadResponse",
                            f"{method} {path} did not answer JSON") from err

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata", {})
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self._call("POST", path, body=dict(obj))

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", resource_path(api_version, kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        query = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        try:
            data = self._call("GET", resource_path(api_version, kind, namespace), query=query)
        except KubeError as err:
            if err.status == 404:  # the resource type is not served (CRD not installed)
                return []
            raise
        items = data.get("items") if isinstance(data, dict) else None
        return [item for item in items or [] if isinstance(item, dict)]

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *,
               propagation: str = "Background") -> bool:
        try:
            self._call("DELETE", resource_path(api_version, kind, namespace, name),
                       body={"kind": "DeleteOptions", "apiVersion": "v1",
                             "propagationPolicy": propagation})
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    def log_lines(self, namespace: str, pod: str, *, container: str | None = None,
                  follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        query = []
        if container:
            query.append(("container", container))
        if follow:
            query.append(("follow", "true"))
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        path = f"{resource_path('v1', 'Pod', namespace, pod)}/log"
        response = self._call("GET", path, query=query, stream=True,
                              timeout=(10, None) if follow else (10, 120))
        partial = b""
        try:
            for chunk in response.stream(65536, decode_content=True):
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    yield line.decode("utf-8", errors="replace").rstrip("\r")
            if partial:
                yield partial.decode("utf-8", errors="replace")
        finally:
            response.release_conn()


    def allowed(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        plural, _, sub = resource.partition("/")
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=plural, subresource=sub or None)))
        try:
            answer = client.AuthorizationV1Api(self.client).create_self_subject_access_review(
                review, _request_timeout=(10, 60))
        except ApiException as err:
            raise api_error(err) from err
        except HTTPError as err:
            raise KubeError(0, "Unreachable", f"cannot reach the Kubernetes API at {self.host}: "
                            f"{str(getattr(err, 'reason', None) or err).splitlines()[0]}") from err
        return bool(answer.status and answer.status.allowed)


def api_error(err: Any) -> KubeError:
    """A KubeError from the client's ApiException, with the API's own reason and message."""
    status = int(getattr(err, "status", 0) or 0)
    reason, message = str(getattr(err, "reason", "") or "Error"), ""
    body = getattr(err, "body", None)
    try:
        data = json.loads(body) if body else None
    except (ValueError, TypeError):
        data = None
    if isinstance(data, dict):
        reason = str(data.get("reason") or reason)
        message = str(data.get("message") or "")
    elif body:
        message = (body.decode(errors="replace") if isinstance(body, bytes) else str(body)).strip()
    return KubeError(status, reason, message.splitlines()[0] if message else "")
