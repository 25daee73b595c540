"""`leo-launch status NAME [-o table|json]`: a job's phase, why it waits, ranks, progress."""

from __future__ import annotations

import argparse

HELP = "show a job's phase (and why it is pending), its ranks, progress and result"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from launcher.jobs import add_cluster_arguments

    parser.add_argument("job", metavar="NAME", help="the job's name")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json: one object with name, phase, ranks and, "
                             "when known, step, best_accuracy, reason, result")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.jobs import check_name, choose_backend, print_json, print_status

    name = check_name(args.job)
    if choose_backend(args.backend, name) == "local":
        from launcher.local_backend import status

        result = status(name)
    else:
        from launcher import cluster

        result = cluster.status(cluster.connect(args.context, args.namespace), name)
    if args.output == "json":
        print_json(result)
    else:
        print_status(result)
    return 0
