"""`leo-launch pull NAME|URL [--checkpoint best|latest] [--format ckpt|npz] [--to DIR]`:
download a checkpoint (or, with --tree, everything under the URL; with --profile, the
profile of a job submitted with --profile)."""

from __future__ import annotations

import argparse
from pathlib import Path

from launcher.backends import job_outputs
from launcher.cli.format import percent
from launcher.cli.options import add_job_reference
from launcher.errors import UsageError
from launcher.outputs.checkpoints import pull
from launcher.outputs.layout import PROFILE_DIR
from launcher.outputs.profile import pull_profile
from launcher.storage import (
    StorageError,
    add_storage_arguments,
    parse_url,
    sync_down,
)

HELP = "download a job's best or latest checkpoint, verified against its manifest"
EXAMPLES = """\
  leo-launch pull leo-mini-5shot-ascend8 --to ckpt
  leo-launch pull obs://bkt/runs/leo-mini-5shot-ascend8 --checkpoint latest --format npz
  leo-launch pull leo-mini-5shot-ascend8 --tree"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_reference(parser, urls=True)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--checkpoint", choices=("best", "latest"),
                      help="which pointer to follow (default: best)")
    what.add_argument("--tree", action="store_true",
                      help="download everything under NAME|URL instead (each file verified, "
                      "unchanged files skipped, nothing deleted)")
    what.add_argument("--profile", action="store_true",
                      help="download the job's profile instead (submit --profile): "
                      "rank-<r>/op_summary.txt, trace_view.json, ... into DIR (default "
                      f"./<job name>/{PROFILE_DIR})")
    parser.add_argument("--format", choices=("ckpt", "npz"), dest="fmt",
                        help="only the MindSpore checkpoint (leo.ckpt + state.json, for "
                        "mindspore.load_checkpoint) or the NumPy files (weights.npz, optimizer.npz, "
                        "state.json; what --resume reads); default: all of them")
    parser.add_argument("--to", metavar="DIR",
                        help="local directory that receives step-<n>/ and <checkpoint>.json, or "
                        "the tree (default: ./<job name>)")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if (args.tree or args.profile) and args.fmt:
        raise UsageError(f"--format selects a checkpoint's files; it does not apply to "
                         f"{'--tree' if args.tree else '--profile'}")
    outputs = job_outputs(args.job, requested=args.backend, context=args.context,
                          namespace=args.namespace)
    base, options = outputs.url, outputs.storage.options(args)  # the job's settings; flags override
    if args.tree:
        dest = args.to or parse_url(base).name or "."
        report = sync_down(base, dest, options=options)
        if not report.files:
            raise StorageError(f"nothing exists under {base}: check the URL (nothing was pulled)")
        print(f"{report.summary('pulled')} → {dest}")
        return 0
    if args.profile:
        dest = args.to or str(Path(parse_url(base).name or ".") / PROFILE_DIR)
        report = pull_profile(base, dest, options=options)
        print(f"{report.summary('pulled')} → {dest} (summary again: python -m leo_core.profiling "
              f"{dest}/rank-0)")
        return 0
    which = args.checkpoint or "best"
    pulled = pull(base, which, args.to, options=options, fmt=args.fmt)
    extra = ""
    if "accuracy" in pulled.pointer:
        extra = f", accuracy {percent(pulled.pointer['accuracy'])}"
    what = f" ({args.fmt} files)" if args.fmt else ""
    print(f"pulled {which} checkpoint step {pulled.step}{what}{extra}: {pulled.files} file(s), "
          f"{pulled.bytes / 1e6:.1f} MB, sha256 verified → {pulled.path}")
    return 0
