"""`leo-launch list [-o table|json]`: the jobs of leo-launch, local and on Kubernetes."""

from __future__ import annotations

import argparse
import sys

from launcher.backends import listed_backends
from launcher.cli.format import print_json, print_list
from launcher.cli.options import add_cluster_arguments
from launcher.errors import LaunchError

HELP = "list jobs (local ones and those labelled as ours on the cluster) with phase and accuracy"
EXAMPLES = """\
  leo-launch list
  leo-launch list -A -o json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json: a list of status objects")
    parser.add_argument("-A", "--all-namespaces", action="store_true",
                        help="Kubernetes: jobs of every namespace")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    items = []
    for backend, required in listed_backends(args.backend, context=args.context, namespace=args.namespace):
        try:
            items += backend.list(all_namespaces=args.all_namespaces)
        except LaunchError as err:
            if required:
                raise
            print(f"leo-launch: warning: {backend.describe} jobs not listed: {err}", file=sys.stderr)
    rows = [item.to_dict() for item in items]
    if args.output == "json":
        print_json(rows)
    else:
        print_list(rows)
    return 0
