"""`leo-launch submit`: render, validate and submit a job.

`--dry-run` prints exactly what `render` prints. Otherwise `submit()` below hands the
job to a backend: `k8s` (launcher.cluster: the objects are created in the cluster of
the kubeconfig context) or `local` (launcher.local_backend: the same bootstrap as
detached processes on this machine); `auto` picks k8s when a kubeconfig or an
in-cluster service account exists, else local, and says which on stderr.
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
    sub.add_argument("--wait", action="store_true",
                     help="return once every rank runs (exit code 0) or the job failed (1), "
                          "reporting why it is pending meanwhile")
    sub.add_argument("-f", "--follow", action="store_true",
                     help="stream the logs of every rank until the job ends; exit code 0 when "
                          "it succeeded, else 1")
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
    import dataclasses
    import sys

    from launcher.errors import UsageError
    from launcher.jobs import choose_backend

    if spec.data_url is None:
        raise UsageError("submit needs --data-url: the embeddings (s3://, obs://, file:// or a path)")
    backend = choose_backend(args.backend)
    if args.backend == "auto":
        why = ("a Kubernetes configuration was found" if backend == "k8s"
               else "no Kubernetes configuration was found")
        print(f"leo-launch: backend {backend} ({why}; choose with --backend)", file=sys.stderr)
    if backend == "local":
        from launcher.local_backend import submit as submit_local

        return submit_local(spec, wait=args.wait, follow=args.follow)
    from launcher import cluster
    from launcher.cmd_render import warnings
    from launcher.render import render_validated

    target = cluster.connect(args.context, args.namespace)
    if args.namespace is None and spec.namespace != target.namespace:
        spec = dataclasses.replace(spec, namespace=target.namespace)  # the context's namespace
        objects = render_validated(spec)
    return cluster.submit(target, spec, objects, wait=args.wait, follow=args.follow,
                          warnings=warnings(spec))
