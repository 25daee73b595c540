"""The self-check every image runs at the end of its build, run in the venv."""

from __future__ import annotations

import subprocess
import sys

from launcher.pod import selfcheck
from launcher.render import render
from tests import netguard


def test_selfcheck_passes_in_the_venv():
    result = subprocess.run([sys.executable, "-m", "launcher.pod.selfcheck"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == len(selfcheck.CHECKS)


def test_selfcheck_finds_the_templates_the_renderer_uses():
    # the pod may not import the renderer: the check finds the templates on its own way
    assert selfcheck.template_dir().resolve() == render.TEMPLATE_DIR.resolve()


def test_selfcheck_fails_when_msrun_is_not_beside_python(tmp_path):
    (tmp_path / "msrun").write_text("#!/bin/sh\n")
    (tmp_path / "msrun").chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "launcher.pod.selfcheck"], capture_output=True,
                            text=True, timeout=300, env={"PATH": f"{tmp_path}:/usr/bin:/bin", "PYTHONPATH": netguard.pythonpath()})
    assert result.returncode == 1
    assert "FAIL check_msrun" in result.stderr and "not from" in result.stderr
