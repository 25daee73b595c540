"""`leo-launch render`: a job's Kubernetes manifests, validated, as YAML.

Also home of the JOB OPTIONS shared with `submit` (`add_job_arguments`,
`spec_from_args`) and of the output step (`emit`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "print the validated Kubernetes manifests of a job (multi-document YAML or -o DIR)"

ACCELERATORS = ("ascend", "nvidia", "cpu")  # launcher.jobspec.ACCELERATORS, kept import-free


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    add_output_argument(parser)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output-dir", metavar="DIR",
                        help="write one YAML file per object into DIR instead of printing")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """JOB OPTIONS of render and submit (validated by JobSpec, not by argparse)."""
    job = parser.add_argument_group("job")
    job.add_argument("--exp", required=True, metavar="EXP",
                     help="experiment: mini_1shot, mini_5shot, tiered_1shot or tiered_5shot")
    job.add_argument("--accel", required=True, metavar="{" + ",".join(ACCELERATORS) + "}",
                     help="accelerator of the nodes")
    job.add_argument("--cards", required=True, type=int, metavar="N",
                     help="total cards (NPUs/GPUs; worker processes for cpu) = world size")
    job.add_argument("--nodes", type=int, metavar="M",
                     help="nodes, one pod each (default: cards / 8 rounded up); cards must split "
                          "evenly, Ascend nodes take 1, 2, 4 or 8")
    job.add_argument("--name", help="job name, a DNS-1035 label (default: leo-<exp>-<accel><cards>)")
    job.add_argument("--namespace", help="namespace (default: default; submit to Kubernetes: "
                     "the kubeconfig context's namespace, else default)")
    job.add_argument("--context", help="kubeconfig context (used by submit)")
    job.add_argument("--image", help="training image (default: leo-launch:<accel>)")
    job.add_argument("--steps", type=int, metavar="N", help="meta-training steps (num_steps_limit)")
    job.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="experiment override, repeatable (e.g. metatrain_batch_size=32)")
    storage = parser.add_argument_group("storage")
    storage.add_argument("--data-url", help="embeddings: s3://bucket/prefix, obs://..., file:///abs or a path")
    storage.add_argument("--train-url", help="outputs (checkpoints, metrics, logs, result.json)")
    storage.add_argument("--storage-secret", metavar="SECRET",
                         help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (referenced, never copied)")
    storage.add_argument("--storage-endpoint", metavar="URL",
                         help="S3/OBS endpoint, e.g. https://obs.cn-north-4.myhuaweicloud.com")
    sched = parser.add_argument_group("scheduling")
    sched.add_argument("--scheduler", choices=("job", "volcano"), default="job",
                       help="job: Indexed batch/v1 Job + headless Service (default); volcano: a gang-scheduled vcjob")
    sched.add_argument("--rank-table", metavar="{dynamic,controller,FILE}",
                       help="Ascend HCCL rank table: dynamic (default), controller (hccl-controller, "
                            "volcano) or an inventory YAML")
    sched.add_argument("--node-selector", dest="node_selectors", action="append", default=[],
                       metavar="KEY=VALUE", help="node label to require, repeatable")
    sched.add_argument("--toleration", dest="tolerations", action="append", default=[],
                       metavar="KEY[=VALUE][:EFFECT]", help="taint to tolerate, repeatable")
    sched.add_argument("--priority-class", help="PriorityClass of the pods")
    sched.add_argument("--queue", help="Volcano queue (default: default) or Kueue LocalQueue for --scheduler job")
    sched.add_argument("--max-restarts", type=int, default=3, metavar="N",
                       help="restarts of the whole job before it fails (default: 3)")
    res = parser.add_argument_group("resources and cluster settings")
    res.add_argument("--cpu", metavar="QTY", help="CPU request per pod (default: 4 per card; 1 per cpu worker)")
    res.add_argument("--memory", metavar="QTY", help="memory per pod (default: 16Gi per card; 4Gi per cpu worker)")
    res.add_argument("--shm-size", metavar="QTY", help="/dev/shm size per pod (default: 16Gi; 1Gi for cpu)")
    res.add_argument("--master-port", type=int, default=8118, metavar="PORT", help="msrun master port (default: 8118)")
    res.add_argument("--cluster-timeout", type=int, default=1800, metavar="SECONDS",
                     help="msrun --cluster_time_out (default: 1800)")
    res.add_argument("--hccl-connect-timeout", type=int, default=1200, metavar="SECONDS",
                     help="Ascend HCCL_CONNECT_TIMEOUT (default: 1200)")
    res.add_argument("--nccl-socket-ifname", metavar="IFS", help="NVIDIA NCCL_SOCKET_IFNAME (default: eth0)")
    res.add_argument("--nccl-ib-hca", metavar="HCAS", help="NVIDIA NCCL_IB_HCA (unset by default)")
    res.add_argument("--nccl-debug", metavar="LEVEL", help="NVIDIA NCCL_DEBUG (unset by default)")


def spec_from_args(args: argparse.Namespace) -> Any:
    """The validated JobSpec of the JOB OPTIONS (UsageError on bad input)."""
    from launcher.jobspec import build_job_spec

    return build_job_spec(
        experiment=args.exp, accelerator=args.accel, cards=args.cards, nodes=args.nodes,
        name=args.name, namespace=args.namespace or "default", image=args.image, steps=args.steps,
        set_overrides=args.set_overrides, data_url=args.data_url, train_url=args.train_url,
        storage_secret=args.storage_secret, storage_endpoint=args.storage_endpoint,
        scheduler=args.scheduler, rank_table=args.rank_table, node_selectors=args.node_selectors,
        tolerations=args.tolerations, priority_class=args.priority_class, queue=args.queue,
        max_restarts=args.max_restarts, cpu=args.cpu, memory=args.memory, shm_size=args.shm_size,
        master_port=args.master_port, cluster_timeout=args.cluster_timeout,
        hccl_connect_timeout=args.hccl_connect_timeout, nccl_socket_ifname=args.nccl_socket_ifname,
        nccl_ib_hca=args.nccl_ib_hca, nccl_debug=args.nccl_debug,
    )


def warnings(spec: Any) -> list[str]:
    out = []
    if spec.train_url is None:
        out.append("no --train-url: checkpoints and results stay inside the pods and are lost with them")
    remote = [u for u in (spec.data_url, spec.train_url) if u and u.startswith(("s3://", "obs://"))]
    if remote and spec.storage_secret is None:
        out.append("object-storage URLs without --storage-secret: pods get no credentials")
    return out


def emit(objects: list[dict[str, Any]], output_dir: str | None) -> int:
    """Print the manifests, or write them to `output_dir` and list the files."""
    from launcher.render import dump, write_dir

    if output_dir is None:
        sys.stdout.write(dump(objects))
        return 0
    for path in write_dir(objects, output_dir):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    from launcher.render import render_validated

    spec = spec_from_args(args)
    code = emit(render_validated(spec), args.output_dir)
    print_warnings(spec)
    return code


def print_warnings(spec: Any) -> None:
    """After success only: a failing command prints its one error line and nothing else."""
    for warning in warnings(spec):
        print(f"leo-launch: warning: {warning}", file=sys.stderr)
