"""Options shared by several commands: JOB OPTIONS of render and submit (defaults taken
from the JobSpec), the cluster options of every command that names a job, the log
options. The JobSpec validates values; argparse only parses them."""

from __future__ import annotations

import argparse
import sys

from launcher import flavours
from launcher.backends import BACKENDS
from launcher.errors import UsageError
from launcher.spec import jobspec as js


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


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output-dir", metavar="DIR",
                        help="write one YAML file per object into DIR instead of printing")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """JOB OPTIONS of render and submit (validated by JobSpec, not by argparse)."""
    job = parser.add_argument_group("job")
    job.add_argument("--exp", required=True, metavar="EXP",
                     help="experiment: mini_1shot, mini_5shot, tiered_1shot, tiered_5shot, glyphs_1shot "
                          "or glyphs_5shot (leo-launch experiments)")
    job.add_argument("--accel", required=True, metavar="{" + ",".join(js.ACCELERATORS) + "}",
                     help="accelerator of the nodes")
    job.add_argument("--cards", required=True, type=int, metavar="N",
                     help="total cards (NPUs/GPUs; worker processes for cpu) = world size")
    job.add_argument("--nodes", type=int, metavar="M",
                     help="nodes, one pod each (default: cards / 8 rounded up); cards must split "
                          "evenly, Ascend nodes take 1, 2, 4 or 8")
    job.add_argument("--name", help="job name, a DNS-1035 label (default: leo-<exp>-<accel><cards>)")
    job.add_argument("--namespace", help="namespace (default: default; submit to Kubernetes: "
                     "the kubeconfig context's namespace, else default)")
    job.add_argument("--context", help="kubeconfig context (used by submit and render --check-cluster)")
    job.add_argument("--image", help="training image (default: leo-launch:<accel>)")
    job.add_argument("--steps", type=int, metavar="N", help="meta-training steps (num_steps_limit)")
    job.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="experiment override, repeatable (e.g. metatrain_batch_size=32)")
    job.add_argument("--seed", type=int, default=0, metavar="S",
                     help="random seed of the model's initialisation and of the episodes (default: 0)")
    job.add_argument("--profile", action="store_true",
                     help="run MindSpore's profiler on every rank over a few steps after the two that "
                          "compile; each node publishes its ranks' op_summary.txt and trace_view.json "
                          "to <train_url>/<job>/profile/rank-<r>/ (leo-launch pull NAME --profile)")
    job.add_argument("--profile-steps", type=int, metavar="N",
                     help=f"steps to profile with --profile (default: {js.DEFAULT_PROFILE_STEPS}, "
                          f"at most {js.MAX_PROFILE_STEPS})")
    storage = parser.add_argument_group("storage")
    storage.add_argument("--data-url", help="embeddings: s3://bucket/prefix, obs://..., file:///abs or a path")
    storage.add_argument("--train-url", help="outputs (checkpoints, metrics, logs, result.json)")
    storage.add_argument("--init", dest="init_url", metavar="URL",
                         help="initial weights: a .ckpt or .npz file (obs://, s3://, file:// or a path; this "
                              "project's or the ModelZoo port's parameter names), staged like --data-url")
    storage.add_argument("--keep-checkpoints", type=int, metavar="N",
                         help="published checkpoints kept under <train_url>/<job>/checkpoints: the N "
                              "newest complete ones and those latest/best point at (default: all)")
    storage.add_argument("--storage-secret", metavar="SECRET",
                         help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (referenced, never copied)")
    storage.add_argument("--storage-endpoint", metavar="URL",
                         help="S3/OBS endpoint, e.g. https://obs.cn-north-4.myhuaweicloud.com")
    storage.add_argument("--storage-region", metavar="REGION",
                         help="storage region given to the pods (OBS_REGION, AWS_REGION); obs:// needs "
                              "it or --storage-endpoint: https://obs.<region>.myhuaweicloud.com")
    storage.add_argument("--path-style", action="store_true", default=None,
                         help="path-style addressing (endpoint/bucket/key) in the pods")
    sched = parser.add_argument_group("scheduling")
    sched.add_argument("--scheduler", choices=flavours.NAMES, default=flavours.DEFAULT,
                       help="; ".join(f.help for f in flavours.FLAVOURS.values()))
    sched.add_argument("--rank-table", metavar="{dynamic,controller,none,FILE}",
                       help="Ascend HCCL rank table: dynamic (default), controller (hccl-controller or "
                            "ascend-operator), none (MindSpore's dynamic cluster only) or an inventory YAML; "
                            "some schedulers default to another mode")
    sched.add_argument("--node-selector", dest="node_selectors", action="append", default=[],
                       metavar="KEY=VALUE", help="node label to require, repeatable")
    sched.add_argument("--toleration", dest="tolerations", action="append", default=[],
                       metavar="KEY[=VALUE][:EFFECT]", help="taint to tolerate, repeatable")
    sched.add_argument("--priority-class", help="PriorityClass of the pods")
    sched.add_argument("--queue", help="; ".join(f"{f.name}: {f.queue_help}" for f in flavours.FLAVOURS.values()
                                                 if f.queue_help))
    sched.add_argument("--max-restarts", type=int, default=js.DEFAULT_MAX_RESTARTS, metavar="N",
                       help=f"restarts of the whole job before it fails (default: {js.DEFAULT_MAX_RESTARTS})")
    res = parser.add_argument_group("resources and cluster settings")
    res.add_argument("--cpu", metavar="QTY", help="CPU request per pod (default: 4 per card; 1 per cpu worker)")
    res.add_argument("--memory", metavar="QTY", help="memory per pod (default: 16Gi per card; 4Gi per cpu worker)")
    res.add_argument("--shm-size", metavar="QTY", help="/dev/shm size per pod (default: 16Gi; 1Gi for cpu)")
    res.add_argument("--master-port", type=int, default=js.DEFAULT_MASTER_PORT, metavar="PORT",
                     help=f"msrun master port (default: {js.DEFAULT_MASTER_PORT})")
    res.add_argument("--cluster-timeout", type=int, default=js.DEFAULT_CLUSTER_TIMEOUT, metavar="SECONDS",
                     help=f"msrun --cluster_time_out (default: {js.DEFAULT_CLUSTER_TIMEOUT})")
    res.add_argument("--hccl-connect-timeout", type=int, default=js.DEFAULT_HCCL_CONNECT_TIMEOUT, metavar="SECONDS",
                     help=f"Ascend HCCL_CONNECT_TIMEOUT (default: {js.DEFAULT_HCCL_CONNECT_TIMEOUT})")
    res.add_argument("--nccl-socket-ifname", metavar="IFS", help=f"NVIDIA NCCL_SOCKET_IFNAME (default: {js.DEFAULT_NCCL_SOCKET_IFNAME})")
    res.add_argument("--nccl-ib-hca", metavar="HCAS", help="NVIDIA NCCL_IB_HCA (unset by default)")
    res.add_argument("--nccl-debug", metavar="LEVEL", help="NVIDIA NCCL_DEBUG (unset by default)")
    sec = parser.add_argument_group("pod security (README: Security)")
    sec.add_argument("--run-as-user", type=int, metavar="UID",
                     help=f"user id the pods run as (default: the image's, {js.IMAGE_USER['cpu']})")
    sec.add_argument("--run-as-group", type=int, metavar="GID",
                     help=f"group id and fsGroup of the pods (default: the image's, {js.IMAGE_GROUP['cpu']}; "
                          "Ascend: the host's HwHiAiUser group)")
    sec.add_argument("--ascend-driver-mount", metavar="{" + ",".join(js.ASCEND_DRIVER_MOUNTS) + "}",
                     help="Ascend driver: hostpath mounts the host's driver and hccn.conf (default; "
                          "needs a privileged Pod Security namespace); runtime leaves it to Ascend "
                          "Docker Runtime (pods pass restricted)")


def spec_from_args(args: argparse.Namespace) -> js.JobSpec:
    """The validated JobSpec of the JOB OPTIONS (UsageError on bad input)."""
    return js.build_job_spec(
        experiment=args.exp, accelerator=args.accel, cards=args.cards, nodes=args.nodes,
        name=args.name, namespace=args.namespace or "default", image=args.image, steps=args.steps,
        set_overrides=args.set_overrides, data_url=args.data_url, train_url=args.train_url,
        storage_secret=args.storage_secret, storage_endpoint=args.storage_endpoint,
        storage_region=args.storage_region, storage_path_style=args.path_style,
        keep_checkpoints=args.keep_checkpoints,
        init_url=args.init_url, scheduler=args.scheduler, rank_table=args.rank_table, node_selectors=args.node_selectors,
        tolerations=args.tolerations, priority_class=args.priority_class, queue=args.queue,
        max_restarts=args.max_restarts, cpu=args.cpu, memory=args.memory, shm_size=args.shm_size,
        master_port=args.master_port, cluster_timeout=args.cluster_timeout,
        hccl_connect_timeout=args.hccl_connect_timeout, nccl_socket_ifname=args.nccl_socket_ifname,
        nccl_ib_hca=args.nccl_ib_hca, nccl_debug=args.nccl_debug, run_as_user=args.run_as_user,
        run_as_group=args.run_as_group, ascend_driver_mount=args.ascend_driver_mount,
        profile=args.profile, profile_steps=args.profile_steps, seed=args.seed,
    )


def warnings(spec: js.JobSpec, *, pods: bool = True) -> list[str]:
    """What the job will not do that its user may expect. `pods`: also what concerns
    Kubernetes pods (a local job has a default train_url and this machine's credentials)."""
    out = []
    if pods and spec.train_url is None:
        out.append("no --train-url: checkpoints and results stay inside the pods and are lost with them")
    remote = [u for u in (spec.data_url, spec.train_url, spec.init_url) if u and u.startswith(("s3://", "obs://"))]
    if pods and remote and spec.storage_secret is None:
        out.append("object-storage URLs without --storage-secret: pods get no credentials")
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
