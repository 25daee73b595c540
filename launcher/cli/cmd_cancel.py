"""`leo-launch cancel NAME`: stop a job and delete everything of it (idempotent)."""

from __future__ import annotations

import argparse

from launcher.backends import get_backend
from launcher.cli.options import add_job_reference
from launcher.spec.names import check_job_name

HELP = "stop a job and delete its objects (Kubernetes) or processes and state (local)"
EXAMPLES = """\
  leo-launch cancel leo-mini-5shot-ascend8 -n leo"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_reference(parser)


def run(args: argparse.Namespace) -> int:
    name = check_job_name(args.job)
    backend = get_backend(args.backend, name, context=args.context, namespace=args.namespace)
    print(backend.cancel(name))
    return 0
