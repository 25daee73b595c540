"""Job flavours: one module per Kubernetes kind that runs a job's pods, and the registry
from `--scheduler` names to them. To add a flavour: a module here with a `Flavour`
subclass (launcher.flavours.base), its template under k8s_templates/, its vendored CRD
under launcher/schemas/, and one line in FLAVOURS below."""

from __future__ import annotations

from launcher.errors import UsageError
from launcher.flavours import ascendjob, job, jobset, volcano
from launcher.flavours.base import Flavour

__all__ = ["DEFAULT", "FLAVOURS", "NAMES", "Flavour", "by_kind", "flavour_of"]

FLAVOURS: dict[str, Flavour] = {f.name: f for f in (job.FLAVOUR, volcano.FLAVOUR, ascendjob.FLAVOUR,
                                                    jobset.FLAVOUR)}
NAMES = tuple(FLAVOURS)
DEFAULT = "job"


def flavour_of(name: str) -> Flavour:
    """The flavour of a `--scheduler` name; UsageError naming the choices."""
    try:
        return FLAVOURS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown scheduler {name!r}; choose {', '.join(NAMES)}") from None


def describe_kind(api_version: str, kind: str) -> str:
    """A kind as messages and file names call it (e.g. vcjob)."""
    flavour = by_kind(api_version, kind)
    return (flavour.nickname if flavour is not None and flavour.nickname else kind)


def by_kind(api_version: str, kind: str) -> Flavour | None:
    """The flavour whose job object is (apiVersion, kind)."""
    return next((f for f in FLAVOURS.values() if f.api == (api_version, kind)), None)
