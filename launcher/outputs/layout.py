"""The file names of a job's outputs, the one copy of them.

Under `<train_url>/<job>/` (and in the local output directory `leo_core.train` writes)::

    job.yaml                          the resolved JobSpec and experiment config
    metrics.jsonl                     one JSON object per logged step / validation
    checkpoints/step-<n>/...          + MANIFEST.json (sizes, sha256), written last
    checkpoints/latest.json, best.json   pointers, updated after the manifest
    logs/rank-<r>.log
    result.json                       meta-test accuracy of the best checkpoint
    profile/rank-<r>/...              `--profile`: each rank's profiler summary and trace
                                      (launcher.outputs.profile; every node its own ranks)
"""

from __future__ import annotations

import re

from launcher.spec.contract import JOB_FILE  # noqa: F401 - part of the layout
from launcher.storage import parse_url

METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
MANIFEST = "MANIFEST.json"
POINTERS = ("latest", "best")
PROFILE_DIR = "profile"  # also the node-local folder `leo_core.train --profile` writes into
_RANK_LOG = re.compile(r"(?:^|/)rank-(\d+)\.log$")


def pointer_file(which: str) -> str:
    """`latest.json` or `best.json` (inside checkpoints/)."""
    return f"{which}.json"


def rank_log(rank: int | str) -> str:
    """The log file name of a rank (inside logs/); "*" gives the glob of them all."""
    return f"rank-{rank}.log"


def profile_rank(rank: int | str) -> str:
    """A rank's folder inside profile/ (what `leo_core.train --profile DIR` names it)."""
    return f"rank-{rank}"


def rank_of_log(key: str) -> int | None:
    """The rank of a `.../rank-<r>.log` key, None for any other key."""
    match = _RANK_LOG.search(key)
    return int(match.group(1)) if match else None


def job_url_of(train_url: str | None, name: str) -> str | None:
    """`<train_url>/<name>`, the job's outputs; None without a train_url."""
    if not train_url:
        return None
    return str(parse_url(train_url).child(name))
