"""`leo-launch cancel NAME`: stop a job and delete everything of it (idempotent)."""

from __future__ import annotations

import argparse

HELP = "stop a job and delete its objects (Kubernetes) or processes and state (local)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from launcher.jobs import add_cluster_arguments

    parser.add_argument("job", metavar="NAME", help="the job's name")
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.jobs import check_name, kube_configured, local_job_exists

    name = check_name(args.job)
    backend = args.backend
    if backend == "auto":
        backend = "local" if local_job_exists(name) or not kube_configured() else "k8s"
    if backend == "local":
        from launcher.local_backend import cancel

        print(cancel(name))
        return 0
    from launcher import cluster

    print(cluster.cancel(cluster.connect(args.context, args.namespace), name))
    return 0
