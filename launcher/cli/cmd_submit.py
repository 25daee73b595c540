"""`leo-launch submit`: render, validate and submit a job.

`--dry-run` prints exactly what `render` prints. Otherwise the job goes to the backend
`get_backend()` picks (launcher.backends): `k8s` (the cluster of the kubeconfig context)
or `local` (the same bootstrap as detached processes on this machine); `auto` picks k8s
when a kubeconfig or an in-cluster service account exists, else local, and says which on
stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from launcher.backends import choose_backend, get_backend
from launcher.backends.base import follow_to_end, wait_and_report
from launcher.cli.cmd_render import emit
from launcher.cli.options import (
    BACKENDS,
    add_job_arguments,
    add_output_argument,
    print_warnings,
    spec_from_args,
)
from launcher.errors import UsageError

HELP = "submit a job to Kubernetes or run it locally (--dry-run: print the manifests)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    sub = parser.add_argument_group("submission")
    sub.add_argument("--backend", choices=BACKENDS, default="auto",
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
    from launcher.render.render import render_validated

    spec = spec_from_args(args)
    objects = render_validated(spec)
    if args.dry_run:
        code = emit(objects, args.output_dir)
        print_warnings(spec)
        return code
    if spec.data_url is None:
        raise UsageError("submit needs --data-url: the embeddings (s3://, obs://, file:// or a path)")


    kind = choose_backend(args.backend)
    if args.backend == "auto":
        why = ("a Kubernetes configuration was found" if kind == "k8s"
               else "no Kubernetes configuration was found")
        print(f"leo-launch: backend {kind} ({why}; choose with --backend)", file=sys.stderr)
    backend = get_backend(kind, context=args.context, namespace=args.namespace)
    namespace = getattr(backend, "namespace", None)
    if kind == "k8s" and args.namespace is None and spec.namespace != namespace:
        spec = dataclasses.replace(spec, namespace=namespace)  # the context's namespace
        objects = render_validated(spec)
    backend.submit(spec, objects, out=sys.stdout, err=sys.stderr)
    print_warnings(spec, pods=kind == "k8s")
    if args.follow:
        return follow_to_end(backend, spec.name, out=sys.stdout, err=sys.stderr, poll=POLL[kind])
    if args.wait:
        return wait_and_report(backend, spec.name, out=sys.stdout, err=sys.stderr, poll=POLL[kind])
    return 0


POLL = {"k8s": 2.0, "local": 0.5}  # seconds between status reads while waiting
