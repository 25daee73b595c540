"""`leo-launch logs NAME [-f] [--rank R | --all] [--tail N]`: the training logs of a job."""

from __future__ import annotations

import argparse

HELP = "print (or follow) the logs of one rank (default 0) or of every rank of a job"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from launcher.jobs import add_cluster_arguments

    parser.add_argument("job", metavar="NAME|URL",
                        help="the job's name, or its published outputs <train_url>/<job> (after "
                             "the job is gone)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new lines until the job ends")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, metavar="R",
                       help="the rank to show (default 0), with its node's bootstrap lines")
    which.add_argument("--all", dest="all_ranks", action="store_true",
                       help="every rank, merged live, each line tagged [rank R]")
    parser.add_argument("--tail", type=int, metavar="N", help="only the last N lines to start with")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.jobs import check_log_arguments, check_name, choose_backend

    check_log_arguments(args)
    text = args.job.strip()
    if "://" in text or "/" in text or text.startswith((".", "~")):
        from launcher.jobs import print_published_logs
        from launcher.storage import parse_url

        if args.follow:
            from launcher.errors import UsageError

            raise UsageError("--follow needs a job name: published logs are read as they are")
        found = print_published_logs(str(parse_url(text)), rank=None if args.all_ranks else (args.rank or 0),
                                     tail=args.tail)
        return 0 if found else 1
    name = check_name(text)
    if choose_backend(args.backend, name) == "local":
        from launcher.local_backend import logs

        return logs(name, follow=args.follow, rank=args.rank, all_ranks=args.all_ranks, tail=args.tail)
    from launcher import cluster

    return cluster.logs(cluster.connect(args.context, args.namespace), name, rank=args.rank,
                        all_ranks=args.all_ranks, follow=args.follow, tail=args.tail)
