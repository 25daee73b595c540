"""Every benchmark runs in `make test`, in its smoke mode: tiny sizes, one run, no timing
claims. tests/benchmarks/ is outside pytest's paths (the scripts are not tests), so without
this an import error or a renamed function could hide in a benchmark until someone runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "tests" / "benchmarks"
# what each bench's smoke run must print (its table's or summary's first words)
EXPECTED = {
    "bench_core.py": "## LEO core benchmark",
    "bench_dp.py": "## Data-parallel meta-training on CPU",
    "bench_launcher.py": "leo-launch --help: MindSpore/boto3/Kubernetes imported",
    "bench_storage.py": "smoke run: embeddings push leo",
    "bench_startup.py": "## Start-up: job start to the first training step",
}


def test_every_benchmark_and_make_target_has_a_smoke_run():
    assert sorted(p.name for p in BENCHMARKS.glob("bench_*.py")) == sorted(EXPECTED)
    makefile = (ROOT / "Makefile").read_text()
    scripts = set(re.findall(r"tests/benchmarks/(bench_\w+\.py)", makefile))
    assert scripts == set(EXPECTED), scripts


@pytest.mark.integration
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_smoke_run(script, tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert EXPECTED[script] in result.stdout, result.stdout[-2000:]
    assert "Traceback" not in result.stderr
