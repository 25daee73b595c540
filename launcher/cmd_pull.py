"""`leo-launch pull NAME|URL --checkpoint best|latest --to DIR`: download a checkpoint."""

from __future__ import annotations

import argparse

HELP = "download a job's best or latest checkpoint, verified against its manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from launcher.storage import add_storage_arguments

    parser.add_argument("job", metavar="NAME|URL",
                        help="a job name (looked up in the local job registry) or the job's "
                        "base URL <train_url>/<job>")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="which pointer to follow (default: best)")
    parser.add_argument("--to", metavar="DIR",
                        help="local directory that receives step-<n>/ and <checkpoint>.json "
                        "(default: ./<job name>)")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.publish import pull, resolve_job_url
    from launcher.storage import StorageOptions

    options = StorageOptions.from_args(args)
    base = resolve_job_url(args.job)
    pulled = pull(base, args.checkpoint, args.to, options=options)
    extra = ""
    if "accuracy" in pulled.pointer:
        extra = f", accuracy {pulled.pointer['accuracy']}"
    print(f"pulled {args.checkpoint} checkpoint step {pulled.step}{extra}: {pulled.files} file(s), "
          f"{pulled.bytes / 1e6:.1f} MB, sha256 verified → {pulled.path}")
    return 0
