"""Server-side dry-run (issue 23): every object is sent with `dryRun=All`, so the cluster's
own validation and admission (ResourceQuota object counts, LimitRange, policy webhooks such
as Kyverno or Gatekeeper, Pod Security's warnings on pod templates) answer before anything
is created. Nothing is stored (checked: a server that stores a dry-run object anyway, such as
an emulator, gets it deleted and a note); a refusal is one line per object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.k8s.api import ClusterAPI, KubeError


@dataclass
class DryRun:
    refusals: list[str] = field(default_factory=list)  # one line per refused object
    warnings: list[str] = field(default_factory=list)  # admission's warnings (Pod Security: warn)
    ignored: str | None = None  # the server stored a dry-run object: it does not honour dryRun


def dry_run(api: ClusterAPI, objects: list[Mapping[str, Any]]) -> DryRun:
    """Ask the API server to create each object without storing it. An unreachable API
    raises (KubeError status 0): nothing else would work either."""
    out = DryRun()
    for obj in objects:
        what = f"{obj['kind']} {(obj.get('metadata') or {}).get('name')}"
        try:
            api.create(obj, dry_run=True)
        except KubeError as err:
            if err.status == 0:
                raise
            out.refusals.append(f"{what}: {err}")
            continue
        out.warnings += [f"{what}: {text}" for text in getattr(api, "warnings", None) or ()]
        if _stored(api, obj):  # an emulator without dryRun: undo it, and ask no further
            out.ignored = f"the API server stored {what} despite dryRun=All (deleted it again); admission not asked"
            return out
    return out


def _stored(api: ClusterAPI, obj: Mapping[str, Any]) -> bool:
    """The dry-run object exists (it did not before: create answered no 409); delete it."""
    meta = obj.get("metadata") or {}
    try:
        if api.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta.get("name")) is None:
            return False
    except KubeError as err:
        if err.forbidden:  # submit's Role need not read what it creates: assume it honoured dryRun
            return False
        raise
    api.delete(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta.get("name"))
    return True
