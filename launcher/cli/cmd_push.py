"""`leo-launch push LOCAL_PATH URL`: upload a file or a directory tree."""

from __future__ import annotations

import argparse
import os
import sys

from launcher.storage import (
    StorageOptions,
    add_storage_arguments,
    parse_url,
    push,
)

HELP = "upload a file or directory to s3://, obs://, file:// or a path (unchanged files skipped)"
EXAMPLES = """\
  leo-launch push ./embeddings obs://bkt/leo
  leo-launch push ./embeddings s3://bkt/leo --delete"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("local_path", metavar="LOCAL_PATH", help="file or directory to upload")
    parser.add_argument("url", metavar="URL",
                        help="destination: s3://bucket/prefix, obs://bucket/prefix, file:///path or a path")
    parser.add_argument("--delete", action="store_true",
                        help="also delete objects under URL that LOCAL_PATH does not have")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    url = parse_url(args.url)  # malformed → exit 2 before anything is read
    report = push(args.local_path, args.url if args.url.endswith("/") else url,
                  options=StorageOptions.from_args(args), delete=args.delete)
    for link in report.links:
        if os.path.islink(os.path.join(args.local_path, link)):
            print(f"leo-launch: warning: skipped the symbolic link {link} (links are never "
                  "followed; what it points to is not pushed)", file=sys.stderr)
        else:
            print(f"leo-launch: warning: skipped {link}: not a regular file (a FIFO, socket or "
                  "device is never read)", file=sys.stderr)
    print(f"{report.summary('pushed')} → {url}")
    return 0
