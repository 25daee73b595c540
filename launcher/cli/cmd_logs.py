"""`leo-launch logs NAME [-f] [--rank R | --all] [--tail N]`: the training logs of a job."""

from __future__ import annotations

import argparse
import sys

from launcher.backends import get_backend
from launcher.cli.options import add_job_reference, check_log_arguments
from launcher.cli.terminal import for_terminal
from launcher.errors import UsageError
from launcher.outputs.logs import print_published_logs
from launcher.spec.names import check_job_name, looks_like_url
from launcher.storage import parse_url

HELP = "print (or follow) the logs of one rank (default 0) or of every rank of a job"
EXAMPLES = """\
  leo-launch logs leo-mini-5shot-ascend8 -f
  leo-launch logs leo-mini-5shot-ascend8 --rank 3 --tail 50
  leo-launch logs leo-mini-5shot-ascend8 --all -n leo --context prod"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_reference(parser, urls=True)
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new lines until the job ends")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, metavar="R",
                       help="the rank to show (default 0), with its node's bootstrap lines")
    which.add_argument("--all", dest="all_ranks", action="store_true",
                       help="every rank, merged live, each line tagged [rank R]")
    parser.add_argument("--tail", type=int, metavar="N", help="only the last N lines to start with")


def run(args: argparse.Namespace) -> int:
    check_log_arguments(args)
    out = for_terminal(sys.stdout)  # a log's control bytes never reach a terminal raw
    text = args.job.strip()
    if looks_like_url(text):

        if args.follow:
            raise UsageError("--follow needs a job name: published logs are read as they are")
        found = print_published_logs(str(parse_url(text)),
                                     rank=None if args.all_ranks else (args.rank or 0),
                                     tail=args.tail, out=out)
        return 0 if found else 1

    name = check_job_name(text)
    backend = get_backend(args.backend, name, context=args.context, namespace=args.namespace)
    return backend.logs(name, rank=args.rank, all_ranks=args.all_ranks, follow=args.follow,
                        tail=args.tail, out=out, err=sys.stderr)
