"""`leo-launch ranktable`: build an HCCL rank table (version 1.0) from pod annotations
or a static inventory and print it as JSON."""

from __future__ import annotations

import argparse
import sys

from launcher.errors import UsageError
from launcher.spec import ranktable
from launcher.spec.ranktable import RankTableError
from launcher.util.userfile import read_user_file

HELP = "print the HCCL rank table (JSON) of device-plugin annotations or a node inventory"
EXAMPLES = """\
  leo-launch ranktable --inventory nodes.yaml
  leo-launch ranktable --annotations node-0.json node-1.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--annotations", nargs="+", metavar="FILE",
                        help="one file per node, in node-rank order, each holding the pod's "
                             "ascend.kubectl.kubernetes.io/ascend-910-configuration JSON")
    source.add_argument("--inventory", metavar="FILE",
                        help="YAML: nodes: [{name, host_ip, device_ips: [...]}, ...]")
    parser.add_argument("--version", choices=("1.0",), default="1.0", help="rank table format (1.0)")


def run(args: argparse.Namespace) -> int:
    if args.inventory is not None:
        fragments = ranktable.inventory_fragments(ranktable.load_inventory(args.inventory))
    else:
        fragments = [ranktable.fragment_from_annotation(_read(path), where=path)
                     for path in args.annotations]
    sys.stdout.write(ranktable.dumps(ranktable.build_table(fragments)))
    return 0


def _read(path: str) -> str:
    try:
        return read_user_file(path)
    except UsageError as err:
        raise RankTableError(str(err)) from None
