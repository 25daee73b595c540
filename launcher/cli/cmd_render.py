"""`leo-launch render`: a job's Kubernetes manifests, validated, as YAML."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from launcher.backends.kubernetes import KubernetesPlan
from launcher.backends.kubernetes import check_cluster as preflight
from launcher.cli.options import (
    add_job_arguments,
    add_output_arguments,
    given_namespace,
    groups,
    print_warnings,
    spec_from_args,
)
from launcher.k8s.config import connect

HELP = "print the validated Kubernetes manifests of a job (YAML, -o json|name, or --out-dir DIR)"
EXAMPLES = """\
  leo-launch render --exp mini_5shot --accel ascend --cards 8 --train-url obs://bkt/runs
  leo-launch render job.yaml --cards 16 --out-dir manifests
  leo-launch render --exp mini_1shot --accel cpu --cards 2 -o name"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    add_output_arguments(parser)
    groups(parser)["cluster"].add_argument("--check-cluster", action="store_true",
                        help="also run submit's pre-flight checks against the cluster of --context "
                             "(namespace, storage Secret, PriorityClass, Volcano, device resources); "
                             "exit code 1 and no manifests when the job would not run")


def emit(plan: Any, output: str, out_dir: str | None) -> int:
    """Print a plan (launcher.backends.base.Plan) as `output` (yaml, json, name), or write
    it to `out_dir` and list the files."""
    if out_dir is not None:
        for path in plan.write_dir(out_dir):
            print(path)
    elif output == "json":
        import json

        print(json.dumps(plan.documents(), indent=2))
    elif output == "name":
        print("\n".join(plan.names()))
    else:
        sys.stdout.write(plan.text())
    return 0


def check_cluster(args: argparse.Namespace, spec: Any, objects: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """Pre-flight against the cluster (as submit does, with the context's namespace when
    no --namespace is given); notes on stderr, LaunchError on a problem."""
    import dataclasses

    from launcher.render.render import render_validated

    namespace = given_namespace(args, spec)
    cluster = connect(args.context, namespace)
    if namespace is None and spec.namespace != cluster.namespace:
        spec = dataclasses.replace(spec, namespace=cluster.namespace)
        objects = render_validated(spec)
    preflight(cluster, spec, objects, err=sys.stderr)
    return spec, objects


def run(args: argparse.Namespace) -> int:
    from launcher.render.render import render_validated

    spec = spec_from_args(args)
    objects = render_validated(spec)
    if args.check_cluster:
        spec, objects = check_cluster(args, spec, objects)
    code = emit(KubernetesPlan(spec, objects), args.output, args.out_dir)
    print_warnings(spec)
    return code
