"""`python -m launcher.pod.selfcheck`: is this installation able to run a pod?

Every training image runs it as the last step of its build, and the test suite runs it in the
venv (tests/launcher/pod/test_selfcheck.py), so the check the images make cannot drift from
the code: the Kubernetes templates are installed, the entrypoint and the training code
import (MindSpore included), and `msrun` and the `python` it starts workers with come from
the same environment as this interpreter. Exit 0 and one line per check, or exit 1 and the
failed checks on stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

TEMPLATE_PACKAGE = "k8s_templates"
# The entrypoint (launcher.bootstrap), what it runs in the pod, and the training code.
ENTRY_MODULES = ("launcher.bootstrap", "launcher.pod.bootstrap", "launcher.pod.modelarts",
                 "leo_core.config", "leo_core.train", "mindspore")


def template_dir() -> Path:
    """Where the installed templates are: site-packages/k8s_templates (or the clone's)."""
    # a namespace package (data only, no __init__.py): its one search location
    spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {TEMPLATE_PACKAGE} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def check_templates() -> str:
    found = sorted(p.name for p in template_dir().glob("*.j2"))
    if not found:
        raise RuntimeError(f"no *.j2 templates in {template_dir()}")
    return f"templates: {len(found)} in {template_dir()}"


def check_imports() -> str:
    for name in ENTRY_MODULES:
        importlib.import_module(name)
    return f"imports: {', '.join(ENTRY_MODULES)}"


def check_msrun() -> str:
    bin_dir = Path(sys.executable).parent
    for tool in ("msrun", "python"):
        found = shutil.which(tool)
        if found is None:
            raise RuntimeError(f"`{tool}` is not on PATH")
        # msrun starts its workers with the `python` it finds first on PATH: both must be
        # this environment's, or the workers would not see the project
        if Path(found).parent != bin_dir:
            raise RuntimeError(f"`{tool}` on PATH is {found}, not from {bin_dir}")
    return f"msrun and python: {bin_dir}"


CHECKS: tuple[Callable[[], str], ...] = (check_templates, check_imports, check_msrun)


def main() -> int:
    failed = 0
    for check in CHECKS:
        try:
            print(f"ok   {check()}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then exit 1
            failed += 1
            print(f"FAIL {check.__name__}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
