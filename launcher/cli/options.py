"""Options shared by several commands: the job options of render and submit (declared
in launcher.spec.fields, with their help groups), the cluster options of every command
that names a job, the output options, the log options. The JobSpec validates values;
argparse only parses them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from launcher.backends import BACKENDS
from launcher.errors import FieldError, UsageError
from launcher.spec import fields
from launcher.spec import jobspec as js
from launcher.spec.values import registry_host


def add_cluster_arguments(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """--backend, --namespace, --context of status, logs, list and cancel."""
    group = parser.add_argument_group("cluster")
    if backend:
        group.add_argument("--backend", choices=BACKENDS, default="auto",
                           help="where the job runs (default auto: a local job of that name, "
                                "else the configured Kubernetes cluster)")
    group.add_argument("-n", "--namespace",
                       help="Kubernetes namespace (default: the context's, else default)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")


def check_log_arguments(args: argparse.Namespace) -> None:
    if args.rank is not None and args.rank < 0:
        raise UsageError("--rank must be 0 or more")
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be 0 or more")


OUTPUT_FORMATS = ("yaml", "json", "name")


def groups(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The help groups of launcher.spec.fields.GROUPS on `parser`, created once, in order."""
    existing = getattr(parser, "_leo_groups", None)
    if existing is None:
        existing = {name: parser.add_argument_group(name) for name in fields.GROUPS}
        parser._leo_groups = existing  # type: ignore[attr-defined]
    return existing


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """-o FORMAT and --out-dir DIR of render and submit --dry-run."""
    out = groups(parser)["output"]
    out.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="yaml",
                     help="yaml (default: multi-document), json (a list) or name (kind/name lines)")
    out.add_argument("--out-dir", metavar="DIR",
                     help="write one YAML file per object into DIR and list the files")


def add_job_arguments(parser: argparse.ArgumentParser, *, positional_file: bool = True) -> None:
    """The job options of render and submit, from launcher.spec.fields (validated by the
    JobSpec, not by argparse; default None: unset, so that a job file's value stays).
    `positional_file=False`: JOB_FILE only as --file (a command with subcommands)."""
    grouped = groups(parser)
    if positional_file:
        grouped["job"].add_argument("job_file", nargs="?", metavar="JOB_FILE",
                                    help="a job file: YAML with the fields of job.yaml; flags override it")
    else:
        parser.set_defaults(job_file=None)
    grouped["job"].add_argument("--file", metavar="JOB_FILE", help="the same as JOB_FILE")
    for option in fields.FIELDS:
        if option.flag is None:
            continue
        names = [option.short, option.flag] if option.short else [option.flag]
        kwargs: dict[str, Any] = {"dest": option.field, "help": fields.help_of(option), "default": None}
        if option.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(metavar=option.metavar, action="append" if option.repeat else "store")
            if option.type is not str:
                kwargs["type"] = option.type
            if option.field == "scheduler":  # the registry's names, shown as choices
                kwargs["choices"] = option.choices
        grouped[option.group].add_argument(*names, **kwargs)
    grouped["cluster"].add_argument("--context", help="kubeconfig context (default: the current one)")


def job_file(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the job file given as JOB_FILE or --file ({} without one), read
    through the bounded reader."""
    if args.job_file and args.file:
        raise UsageError("give the job file once: JOB_FILE or --file")
    path = args.job_file or args.file
    if not path:
        return {}
    import yaml

    from launcher.util.userfile import load_yaml, read_user_file

    text = read_user_file(path, what="job file")
    try:
        data = load_yaml(text, f"job file {path}")
    except yaml.YAMLError as err:
        raise UsageError(f"job file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"job file {path} must be a mapping of job fields (as job.yaml)")
    return data


def given_job_values(args: argparse.Namespace) -> dict[str, Any]:
    """Field → value of the job flags that were given."""
    return {o.field: getattr(args, o.field) for o in fields.FIELDS
            if o.flag is not None and getattr(args, o.field, None) is not None}


def spec_from_args(args: argparse.Namespace) -> js.JobSpec:
    """The validated JobSpec of a job file and the job flags (UsageError naming the flag)."""
    try:
        return js.spec_from_values(job_file(args), given_job_values(args))
    except FieldError as err:
        raise UsageError(f"{', '.join(map(fields.flag_of, err.fields))} {err.problem}") from None


def given_namespace(args: argparse.Namespace, spec: js.JobSpec) -> str | None:
    """The namespace the user chose (-n, else a job file's), None for the context's."""
    if args.namespace:
        return args.namespace
    return spec.namespace if args.job_file or args.file else None


def warnings(spec: js.JobSpec, *, pods: bool = True) -> list[str]:
    """What the job will not do that its user may expect. `pods`: also what concerns
    Kubernetes pods (a local job has a default train_url and this machine's credentials)."""
    out = []
    if pods and spec.train_url is None:
        out.append("no --train-url: checkpoints and results stay inside the pods and are lost with them")
    remote = [u for u in (spec.data_url, spec.train_url, spec.init_url) if u and u.startswith(("s3://", "obs://"))]
    if pods and remote and spec.storage_secret is None:
        out.append("object-storage URLs without --storage-secret: pods get no credentials")
    if pods and registry_host(spec.image) is None:
        accel = spec.accelerator
        out.append(f"image {spec.image} names no registry host: nodes can only run it from their "
                   f"local image cache; build and push it (make image-{accel} IMAGE_REPO=REGISTRY/leo-launch; "
                   f"docker push REGISTRY/leo-launch:{accel}) and pass --image REGISTRY/leo-launch:{accel}")
    if spec.profile_steps is not None:
        steps = spec.experiment_config().num_steps_limit
        if steps < js.PROFILE_SKIP + spec.profile_steps:
            out.append(f"--profile-steps {spec.profile_steps}: the job trains {steps} step(s), so at most "
                       f"{max(steps - js.PROFILE_SKIP, 0)} are profiled (the first {js.PROFILE_SKIP} compile)")
    return out


def print_warnings(spec: js.JobSpec, *, pods: bool = True) -> None:
    """After success only: a failing command prints its one error line and nothing else."""
    for warning in warnings(spec, pods=pods):
        print(f"leo-launch: warning: {warning}", file=sys.stderr)


def add_job_reference(parser: argparse.ArgumentParser, *, urls: bool = False) -> None:
    """The NAME (or NAME|URL) argument and the cluster options of a command about one job."""
    if urls:
        parser.add_argument("job", metavar="NAME|URL",
                            help="the job's name (a local job, else one on the cluster), or its "
                                 "published outputs <train_url>/<job> (also after the job is gone)")
    else:
        parser.add_argument("job", metavar="NAME", help="the job's name")
    add_cluster_arguments(parser)
