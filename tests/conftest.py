"""Shared pytest configuration. Fixtures that start servers live in their own modules."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# msrun and subprocess-based tests start `python` from PATH: make it this interpreter's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# Keep MindSpore's C++ log to warnings and errors.
os.environ.setdefault("GLOG_v", "2")
