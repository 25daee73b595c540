"""`leo-launch list [-o table|json]`: the jobs of leo-launch, local and on Kubernetes."""

from __future__ import annotations

import argparse
import sys

HELP = "list jobs (local ones and those labelled as ours on the cluster) with phase and accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from launcher.jobs import add_cluster_arguments

    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json: a list of status objects")
    parser.add_argument("-A", "--all-namespaces", action="store_true",
                        help="Kubernetes: jobs of every namespace")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.jobs import kube_configured, print_json, print_list

    items = []
    if args.backend in ("auto", "local"):
        from launcher.local_backend import list_jobs

        items += list_jobs()
    if args.backend == "k8s" or (args.backend == "auto" and kube_configured()):
        from launcher import cluster
        from launcher.errors import LaunchError

        try:
            items += cluster.list_jobs(cluster.connect(args.context, args.namespace),
                                       all_namespaces=args.all_namespaces)
        except LaunchError as err:
            if args.backend == "k8s":
                raise
            print(f"leo-launch: warning: Kubernetes jobs not listed: {err}", file=sys.stderr)
    if args.output == "json":
        print_json(items)
    else:
        print_list(items)
    return 0
