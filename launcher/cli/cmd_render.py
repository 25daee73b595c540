"""`leo-launch render`: a job's Kubernetes manifests, validated, as YAML."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from launcher.cli.options import (
    add_job_arguments,
    add_output_argument,
    print_warnings,
    spec_from_args,
)

HELP = "print the validated Kubernetes manifests of a job (multi-document YAML or -o DIR)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    add_output_argument(parser)


def emit(objects: list[dict[str, Any]], output_dir: str | None) -> int:
    """Print the manifests, or write them to `output_dir` and list the files."""
    from launcher.render.render import dump, write_dir

    if output_dir is None:
        sys.stdout.write(dump(objects))
        return 0
    for path in write_dir(objects, output_dir):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    from launcher.render.render import render_validated

    spec = spec_from_args(args)
    code = emit(render_validated(spec), args.output_dir)
    print_warnings(spec)
    return code
