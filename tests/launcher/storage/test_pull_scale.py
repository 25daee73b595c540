"""`pull --tree` of a huge listing (issue 22 low list): planned as keys, not as one task
object per key (10^6 keys planned at 2.8 GB RSS before), and no GET starts after the first
failure (a 404 kept the rest of the tree's GETs going). A fake store stands in for 10^5+
objects: only the listing and the GETs' count matter here, not the bytes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from launcher.storage import NotFoundError, ObjectInfo, StorageOptions, StorageURL
from launcher.storage.sync import sync_down
from tests.conftest import ROOT


class FakeStore:
    """A listing of `count` objects; GET number `fail_at` (and later ones) answer 404."""

    def __init__(self, count: int, fail_at: int, concurrency: int = 10) -> None:
        self.count, self.fail_at = count, fail_at
        self.url = StorageURL("s3", "bkt", "job")
        self.options = StorageOptions(progress=False, concurrency=concurrency)
        self.gets = 0
        self.lock = threading.Lock()

    def list(self, prefix: str = "") -> dict[str, ObjectInfo]:
        return {key: ObjectInfo(key, 1000 + i, etag=f"{i:032x}", mtime=1.7e9 + i)
                for i in range(self.count)
                for key in (f"checkpoints/step-{i:07d}/weights-{i}.npz",)}

    def get_file(self, key: str, dest: Path, info=None, progress=None) -> str:  # noqa: ANN001
        with self.lock:
            self.gets += 1
            number = self.gets
        if number >= self.fail_at:
            raise NotFoundError(f"s3://bkt/job/{key} does not exist")
        return "0" * 64


def test_no_get_starts_after_the_first_404(tmp_path):
    store = FakeStore(20_000, fail_at=5, concurrency=4)
    with pytest.raises(NotFoundError):
        sync_down(store, tmp_path / "out")
    assert store.gets < 5 + 4, store.gets  # the failed one, and at most the ones running


def test_every_key_is_fetched_once(tmp_path):
    store = FakeStore(3_000, fail_at=10**9)
    report = sync_down(store, tmp_path / "out")
    assert (report.files, report.transferred, store.gets) == (3_000, 3_000, 3_000)


_PEAK = """
import resource, sys
from pathlib import Path
from tests.launcher.storage.test_pull_scale import FakeStore
from launcher.storage.sync import sync_down

store = FakeStore(int(sys.argv[1]), fail_at=10**9)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = sync_down(store, Path(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert report.transferred == store.gets == int(sys.argv[1])
print(after - before)
"""


def test_planning_a_huge_listing_stays_compact(tmp_path):
    """200,000 keys: the whole pull (listing included) adds well under 1.5 kB a key
    (measured ~0.3 kB; the old plan of futures and lambdas ~2.6 kB)."""
    count = 200_000
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(count), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    added_kib = int(proc.stdout)
    print(f"pull --tree plan of {count} keys: +{added_kib / 1024:.0f} MiB peak RSS")
    assert added_kib * 1024 / count < 1500, added_kib
