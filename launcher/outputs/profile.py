"""A job's profile (`submit --profile`): which profiler files are published, and pulling them.

`leo_core.train --profile DIR` writes, on every rank, `DIR/rank-<r>/`: `op_summary.txt`
(operator time per step by type, written last, once MindSpore's profiler has parsed its
data) and the profiler's own folder `<host>_<pid>_<time>_ascend_ms/` holding the trace,
per-operator tables, its log and raw data. Only the small, readable files are published,
flat, under `<train_url>/<job>/profile/rank-<r>/`:

    op_summary.txt               operator time per step by type (leo_core.profiling)
    trace_view.json              the timeline, for chrome://tracing or Perfetto
    cpu_op_detail_info_<r>.csv   per-operator times (`python -m leo_core.profiling DIR` reads it)
    cpu_op_type_info_<r>.csv     per-operator-type times
    op_statistic*.csv, step_trace_time*.csv, kernel_details*.csv   Ascend/GPU tables, when written

Not published: the profiler's framework dumps, timestamps and log (on CPU), and its raw
device data (Ascend/GPU `PROF_*` folders, which reach gigabytes). A file above
`MAX_FILE_BYTES` is skipped with a warning. Measured on CPU (mini_5shot, tiny data, 2
profiled steps, one rank): 0.36 MB published of the 0.57 MB written.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from launcher.outputs.layout import PROFILE_DIR
from launcher.storage import StorageOptions, StorageURL, parse_url, sync_down
from launcher.storage.base import NotFoundError, SyncReport

SUMMARY = "op_summary.txt"  # written last: a rank's profile with it is complete
PUBLISHED = (SUMMARY, "trace_view.json", "cpu_op_detail_info_*.csv", "cpu_op_type_info_*.csv",
             "op_statistic*.csv", "step_trace_time*.csv", "kernel_details*.csv")
MAX_FILE_BYTES = 64 * 1024 * 1024
_RANK_DIR = re.compile(r"rank-(\d+)")


@dataclass
class RankProfile:
    """The publishable files of one rank's profile folder."""

    rank: int
    files: dict[str, Path] = field(default_factory=dict)  # published name -> local file
    too_large: list[Path] = field(default_factory=list)  # above MAX_FILE_BYTES: not published

    @property
    def complete(self) -> bool:
        return SUMMARY in self.files


def local_profiles(profile_dir: Path) -> list[RankProfile]:
    """The ranks' profiles under `profile_dir` (what `leo_core.train --profile` was given),
    by rank. Where a name occurs twice (two profiler sessions) the newest file is taken;
    symbolic links are not followed."""
    if not profile_dir.is_dir():
        return []
    found = []
    for entry in sorted(profile_dir.iterdir()):
        match = _RANK_DIR.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        profile, newest = RankProfile(int(match.group(1))), {}
        for folder, _, names in os.walk(entry):
            for name in names:
                path = Path(folder) / name
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in PUBLISHED):
                    continue
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if not path.is_file() or path.is_symlink():
                    continue
                if st.st_size > MAX_FILE_BYTES:
                    profile.too_large.append(path)
                elif name not in newest or st.st_mtime_ns > newest[name][0]:
                    newest[name] = (st.st_mtime_ns, path)
        profile.files = {name: path for name, (_, path) in sorted(newest.items())}
        found.append(profile)
    return sorted(found, key=lambda p: p.rank)


def profile_url(job_url: str | StorageURL) -> StorageURL:
    """`<train_url>/<job>/profile`."""
    return parse_url(job_url).child(PROFILE_DIR)


def pull_profile(job_url: str | StorageURL, dest: str | Path, *,
                 options: StorageOptions | None = None) -> SyncReport:
    """Download a job's published profile (every rank's folder) into `dest`, each file
    verified; NotFoundError when the job published none."""
    url = profile_url(job_url)
    report = sync_down(url, dest, options=options)
    if not report.files:
        raise NotFoundError(f"no profile under {url}: was the job submitted with --profile, "
                            "and has it trained past the profiled steps?")
    return report
