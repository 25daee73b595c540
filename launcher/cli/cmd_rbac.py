"""`leo-launch rbac`: the least-privilege Role (and RoleBinding) a user of the Kubernetes
backend needs, from the table of calls in launcher.k8s.rbac; nothing is sent to a cluster."""

from __future__ import annotations

import argparse
import sys

from launcher import flavours
from launcher.errors import UsageError
from launcher.spec.names import dns1123_label_problem

HELP = "print the least-privilege RBAC Role (and RoleBinding) for submit/status/logs/list/cancel"
EXAMPLES = """\
  leo-launch rbac -n leo --user alice | kubectl apply -f -
  leo-launch rbac -n leo --scheduler volcano --read-only --group ml-readers"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="default", help="the Role's namespace (default: default)")
    parser.add_argument("--scheduler", action="append", choices=flavours.NAMES, metavar="SCHEDULER",
                        help=f"the job kinds to allow, repeatable: {', '.join(flavours.NAMES)} "
                             f"(default: {flavours.DEFAULT})")
    parser.add_argument("--read-only", action="store_true",
                        help="only what status, logs and list need (Role leo-launch-read-only)")
    parser.add_argument("--cluster-role", action="store_true",
                        help="also the optional ClusterRole of the cluster-scoped reads that only "
                             "improve submit's pre-flight checks (nodes, PriorityClasses, CRDs, namespaces)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--user", help="bind the Role to this user (a RoleBinding)")
    who.add_argument("--group", help="bind the Role to this group")
    who.add_argument("--service-account", metavar="[NS:]NAME",
                     help="bind the Role to this ServiceAccount (default namespace: the Role's)")


def run(args: argparse.Namespace) -> int:
    import yaml

    from launcher.k8s import rbac

    if (problem := dns1123_label_problem(args.namespace)):
        raise UsageError(f"--namespace {args.namespace!r} {problem}")
    chosen = [flavours.flavour_of(name) for name in dict.fromkeys(args.scheduler or [flavours.DEFAULT])]
    who = rbac.subject(args.user, args.group, args.service_account, args.namespace)
    objects = rbac.manifests(chosen, args.namespace, read_only=args.read_only, who=who,
                             cluster_role=args.cluster_role)
    # short lists in flow style: a rule per line group, as RBAC manifests are usually written
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, default_flow_style=None))
    return 0
