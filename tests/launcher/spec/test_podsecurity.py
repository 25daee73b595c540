"""The pre-flight's Pod Security question, against plain namespace labels."""

from __future__ import annotations

import pytest

from launcher.spec import podsecurity as ps
from launcher.spec.jobspec import build_job_spec

ENFORCE = ps.ENFORCE_LABEL


def ns(name: str = "ml", labels: dict[str, str] | None = None) -> dict[str, str]:
    """A namespace's labels as the API server returns them (it adds the name label)."""
    return {ps.NAMESPACE_NAME_LABEL: name, **(labels or {})}


@pytest.mark.parametrize(("enforced", "admitted"), [
    ("privileged", {"privileged", "baseline", "restricted"}),
    ("baseline", {"baseline", "restricted"}),
    ("restricted", {"restricted"}),
])
def test_a_level_is_admitted_where_the_namespace_enforces_it_or_less(enforced, admitted):
    for level in ps.LEVELS:
        problem = ps.admission_problem({**ns(), ENFORCE: enforced}, level)
        assert (problem is None) == (level in admitted), (enforced, level, problem)


def test_the_refusal_names_the_namespace_the_levels_and_the_switch():
    problem = ps.admission_problem({**ns("team-a"), ENFORCE: "baseline"}, "privileged")
    assert problem is not None and "\n" not in problem
    assert "namespace 'team-a' enforces Pod Security baseline" in problem
    assert ENFORCE in problem and "need privileged" in problem and "hostPath" in problem
    assert "--ascend-driver-mount runtime" in problem
    # a level without a known switch still says what would help
    problem = ps.admission_problem({ENFORCE: "restricted"}, "baseline")
    assert problem is not None and problem.startswith("the namespace enforces Pod Security restricted")
    assert problem.endswith("use a namespace that enforces baseline")


@pytest.mark.parametrize("labels", [None, {}, ns(), ns(labels={"pod-security.kubernetes.io/warn": "restricted"}),
                                    ns(labels={"pod-security.kubernetes.io/audit": "restricted"})])
def test_without_an_enforce_label_nothing_is_refused(labels):
    # warn and audit never reject; without enforce the cluster default applies, unknown here
    assert ps.admission_problem(labels, "privileged") is None


@pytest.mark.parametrize("value", ["Restricted", "strict", "", "privileged "])
def test_an_unknown_enforce_value_is_read_as_restricted_as_the_api_server_does(value):
    problem = ps.admission_problem({**ns(), ENFORCE: value}, "privileged")
    assert problem is not None and f"{value!r}, read as restricted" in problem
    assert ps.admission_problem({**ns(), ENFORCE: value}, "restricted") is None


def test_an_unknown_level_is_a_programming_error():
    with pytest.raises(ValueError, match="level must be one of"):
        ps.admission_problem(ns(), "strict")


def test_the_job_level_follows_the_spec():
    def spec(accel: str, **values):
        values.setdefault("cards", 8)
        return build_job_spec(experiment="mini_5shot", accelerator=accel, **values)

    assert ps.pod_security_level(spec("nvidia")) == ps.pod_security_level(spec("cpu", cards=2)) == "restricted"
    assert ps.pod_security_level(spec("ascend")) == "privileged"
    assert ps.pod_security_level(spec("ascend", ascend_driver_mount="runtime")) == "restricted"
    assert ps.pod_security_level(spec("ascend", rank_table="controller", scheduler="volcano")) == "privileged"
    restricted_ns = {**ns(), ENFORCE: "restricted"}
    assert ps.job_admission_problem(restricted_ns, spec("nvidia")) is None
    assert ps.job_admission_problem(restricted_ns, spec("ascend", ascend_driver_mount="runtime")) is None
    assert "--ascend-driver-mount runtime" in ps.job_admission_problem(restricted_ns, spec("ascend"))
    assert ps.job_admission_problem({**ns(), ENFORCE: "privileged"}, spec("ascend")) is None
