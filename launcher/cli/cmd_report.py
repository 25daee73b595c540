"""`leo-launch report NAME|URL [--png FILE] [-o table|json]`: a run's summary and curves."""

from __future__ import annotations

import argparse

from launcher.backends import job_outputs
from launcher.cli.options import add_job_reference
from launcher.outputs.report import (
    check_png_target,
    load_report,
    write_png,
)
from launcher.storage import add_storage_arguments

HELP = ("summarise a job's run (steps, steps/s, best meta-validation and meta-test accuracy) "
        "and plot its training curves")
EXAMPLES = """\
  leo-launch report leo-mini-1shot-cpu2
  leo-launch report obs://bkt/runs/leo-mini-5shot-ascend8 --png curves.png -o json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_reference(parser, urls=True)
    parser.add_argument("--png", metavar="FILE",
                        help="also write meta-train and meta-validation accuracy over steps "
                        "to FILE (PNG)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json (accuracies as fractions)")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json


    png = check_png_target(args.png) if args.png else None  # refused before any reading
    outputs = job_outputs(args.job, requested=args.backend, context=args.context, namespace=args.namespace)
    report = load_report(outputs.url, options=outputs.storage.options(args, progress=False))
    if png is not None:
        png = write_png(report, png)
    if args.output == "json":
        data = report.to_dict()
        if png is not None:
            data["png"] = str(png)
        print(json.dumps(data, indent=2))
        return 0
    print(report.table())
    if png is not None:
        print(f"training curves → {png}")
    return 0
