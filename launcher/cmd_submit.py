"""`leo-launch submit`: render, validate and submit a job.

Only `--dry-run` works so far (it prints exactly what `render` prints); the
k8s and local backends arrive with the cluster-operations issue and plug in at
`submit()` below.
"""

from __future__ import annotations

import argparse
from typing import Any

from launcher.cmd_render import (
    add_job_arguments,
    add_output_argument,
    emit,
    print_warnings,
    spec_from_args,
)

HELP = "submit a job to Kubernetes or run it locally (--dry-run: print the manifests)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    sub = parser.add_argument_group("submission")
    sub.add_argument("--backend", choices=("auto", "k8s", "local"), default="auto",
                     help="k8s (the cluster of --context), local (processes on this machine) or "
                          "auto (default: k8s when a cluster is configured, else local)")
    sub.add_argument("--dry-run", action="store_true",
                     help="render and validate only; print the manifests (same output as render)")
    sub.add_argument("--wait", action="store_true", help="wait until the job ends; exit code = job result")
    sub.add_argument("-f", "--follow", action="store_true", help="stream the logs of every rank")
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.render import render_validated

    spec = spec_from_args(args)
    objects = render_validated(spec)
    if args.dry_run:
        code = emit(objects, args.output_dir)
        print_warnings(spec)
        return code
    return submit(spec, objects, args)


def submit(spec: Any, objects: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Create the job with the chosen backend (args.backend, args.context, args.wait, args.follow)."""
    from launcher.errors import LaunchError

    raise LaunchError(f"submission backends (k8s, local) arrive with the cluster-operations issue; "
                      f"--backend {args.backend} is not available yet: use --dry-run (or render) "
                      "and kubectl apply -f")
