"""The flavour registry, and that kind-specific code lives only in launcher/flavours/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher import flavours
from launcher.errors import UsageError
from launcher.flavours import volcano

LAUNCHER = Path(flavours.__file__).resolve().parents[1]
TEMPLATES = LAUNCHER.parent / "k8s_templates"


def kind_markers() -> list[str]:
    """What only a flavour may say: its API groups, CRD names and scheduler name."""
    groups = {kind[0].rpartition("/")[0] for f in flavours.FLAVOURS.values()
              for kind in (f.api, f.podgroup or ("", "")) if "." in kind[0]}
    groups |= {volcano.QUEUE[0].rpartition("/")[0]}
    markers = sorted(groups | {f.crd for f in flavours.FLAVOURS.values() if f.crd})
    # the default's name ("job") is an ordinary word: its literal is caught below when compared
    return markers + [f'"{f.name}"' for f in flavours.FLAVOURS.values() if f.name != flavours.DEFAULT]


def test_no_module_outside_the_flavours_names_a_kind():
    markers = kind_markers()
    assert '"volcano"' in markers and "mindxdl.gitee.com" in markers and "batch.volcano.sh" in markers
    compared = re.compile(r"scheduler\s*(==|!=|in)\s*[\"'(]")  # a branch on a scheduler's name
    found = []
    for path in sorted(LAUNCHER.rglob("*.py")):
        if flavours.__file__ and path.parent == Path(flavours.__file__).parent:
            continue
        text = path.read_text()
        rel = path.relative_to(LAUNCHER.parent)
        found += [f"{rel}: {m}" for m in markers if m in text]
        found += [f"{rel}: {m.group(0)}" for m in compared.finditer(text)]
    assert found == []


def test_the_check_would_find_a_kind_named_in_generic_code(tmp_path):
    text = 'if spec.scheduler == "volcano":\n    api = ("batch.volcano.sh/v1alpha1", "Job")\n'
    assert [m for m in kind_markers() if m in text] == ["batch.volcano.sh", '"volcano"']


def test_the_registry_maps_scheduler_names_to_flavours():
    assert flavours.NAMES[0] == flavours.DEFAULT == "job"
    for name, flavour in flavours.FLAVOURS.items():
        assert flavours.flavour_of(name) is flavour and flavour.name == name
        assert flavours.by_kind(*flavour.api) is flavour
        assert (TEMPLATES / flavour.template).is_file(), flavour.template
        if flavour.operator:  # a custom resource: its CRD is vendored with its licence
            assert flavour.schema is not None and flavour.schema.is_file()
            assert "License" in (flavour.schema.parent / "NOTICE").read_text()
    assert flavours.by_kind("batch/v1", "CronJob") is None
    with pytest.raises(UsageError, match=r"unknown scheduler 'slurm'; choose job, volcano, ascendjob"):
        flavours.flavour_of("slurm")
