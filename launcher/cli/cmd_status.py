"""`leo-launch status NAME [-o table|json]`: a job's phase, why it waits, ranks, progress."""

from __future__ import annotations

import argparse

from launcher.backends import get_backend
from launcher.cli.format import print_json, print_status
from launcher.cli.options import add_job_reference
from launcher.spec.names import check_job_name

HELP = "show a job's phase (and why it is pending), its ranks, progress and result"
EXAMPLES = """\
  leo-launch status leo-mini-5shot-ascend8 -n leo
  leo-launch status leo-mini-1shot-cpu2 -o json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_reference(parser)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json: one object with name, phase, ranks and, "
                             "when known, step, best_accuracy, reason, result")


def run(args: argparse.Namespace) -> int:
    name = check_job_name(args.job)
    backend = get_backend(args.backend, name, context=args.context, namespace=args.namespace)
    status = backend.status(name).to_dict()
    if args.output == "json":
        print_json(status)
    else:
        print_status(status)
    return 0
