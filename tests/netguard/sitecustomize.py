"""Python imports `sitecustomize` at start-up from sys.path: tests/conftest.py puts this
folder first on PYTHONPATH, so every Python process the tests start (the CLI, the
bootstrap, msrun's workers, their children) runs the network guard (leo_netguard.py)."""

import os
import sys

if os.environ.get("LEO_TEST_NETGUARD") != "off":  # leo_netguard.OPT_OUT: see its one user
    import leo_netguard

    leo_netguard.install()


def _chain() -> None:
    """Run the sitecustomize this one shadows, if there is one (the venv has none today)."""
    import importlib.util
    from importlib.machinery import PathFinder

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_chain()
