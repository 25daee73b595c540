"""`leo-launch submit`: plan a job on a backend and carry the plan out.

The job goes to the backend `get_backend()` picks (launcher.backends): `k8s` (the
cluster of the kubeconfig context) or `local` (the same bootstrap as detached processes
on this machine); `auto` picks k8s when a kubeconfig or an in-cluster service account
exists, else local, and says which on stderr. The backend's plan (`Backend.plan`) is
what `--dry-run` prints (for k8s exactly what `render` prints) and what `submit` does.
"""

from __future__ import annotations

import argparse
import sys

from launcher.backends import choose_backend, get_backend
from launcher.backends.base import Backend, follow_to_end, wait_and_report
from launcher.cli.cmd_render import emit
from launcher.cli.options import (
    BACKENDS,
    add_job_arguments,
    add_output_arguments,
    given_namespace,
    groups,
    print_warnings,
    spec_from_args,
)
from launcher.errors import UsageError
from launcher.spec.jobspec import JobSpec

HELP = "submit a job to Kubernetes or run it locally (--dry-run: print the backend's plan)"
EXAMPLES = """\
  leo-launch submit --exp mini_1shot --accel cpu --cards 2 --steps 20 --data-url ./embeddings
  leo-launch submit --exp mini_5shot --accel ascend --cards 8 --image REGISTRY/leo-launch:ascend \\
      --data-url obs://bkt/leo --train-url obs://bkt/runs --storage-secret obs-creds -n leo --wait
  leo-launch submit job.yaml --name leo-again --dry-run --out-dir manifests"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    grouped = groups(parser)
    grouped["cluster"].add_argument("--backend", choices=BACKENDS, default="auto",
                     help="k8s (the cluster of --context), local (processes on this machine) or "
                          "auto (default: k8s when a cluster is configured, else local)")
    sub = grouped["output"]
    sub.add_argument("--dry-run", action="store_true",
                     help="print the backend's plan and create nothing: the manifests for k8s (as "
                          "render prints them), the command, environment, paths and state folder "
                          "for local")
    sub.add_argument("--wait", action="store_true",
                     help="return once every rank runs (exit code 0) or the job failed (1), "
                          "reporting why it is pending meanwhile")
    sub.add_argument("-f", "--follow", action="store_true",
                     help="stream the logs of every rank until the job ends; exit code 0 when "
                          "it succeeded, else 1")
    grouped["cluster"].add_argument("--skip-preflight", action="store_true",
                     help="submit without the cluster checks (namespace, Secret, CRDs, nodes' devices) "
                          "for a cluster they misjudge; missing capacity is only a warning already "
                          "where an autoscaler is found or cannot be ruled out")
    add_output_arguments(parser)


def backend_for(args: argparse.Namespace, spec: JobSpec) -> Backend:
    """The backend --backend names; for auto, the one `choose_backend` picks, said on stderr."""
    kind = choose_backend(args.backend, accel=spec.accelerator)
    if args.backend == "auto":
        why = (f"--accel {spec.accelerator} runs on a cluster" if spec.accelerator != "cpu" and kind == "k8s"
               else "a Kubernetes configuration was found" if kind == "k8s"
               else "no Kubernetes configuration was found")
        print(f"leo-launch: backend {kind} ({why}; choose with --backend)", file=sys.stderr)
    return get_backend(kind, context=args.context, namespace=given_namespace(args, spec))


def run(args: argparse.Namespace) -> int:
    if args.out_dir is not None and not args.dry_run:
        # the plan is written, not carried out: say so rather than ignore --out-dir
        raise UsageError("--out-dir writes the plan with --dry-run only (or: leo-launch render --out-dir DIR)")
    spec = spec_from_args(args)
    if spec.data_url is None and not args.dry_run:
        raise UsageError("submit needs --data-url: the embeddings (s3://, obs://, file:// or a path)")
    backend = backend_for(args, spec)
    plan = backend.plan(spec, preflight=not args.skip_preflight)
    if args.dry_run:
        code = emit(plan, args.output, args.out_dir)
        print_warnings(plan.spec, pods=backend.runs_pods)
        return code
    backend.submit(plan, out=sys.stdout, err=sys.stderr)
    print_warnings(plan.spec, pods=backend.runs_pods)
    if args.follow:
        return follow_to_end(backend, spec.name, out=sys.stdout, err=sys.stderr, poll=backend.poll)
    if args.wait:
        return wait_and_report(backend, spec.name, out=sys.stdout, err=sys.stderr, poll=backend.poll)
    return 0
