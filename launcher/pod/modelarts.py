"""The ModelArts-style entry: `python -m launcher.bootstrap --data_url=obs://… --train_url=obs://…`.

Huawei ModelArts training jobs (and the MindSpore ModelZoo scripts, `enable_modelarts`,
`data_url`, `train_url`) start a boot command with the job's input and output as
`--data_url=…` and `--train_url=…` (OBS URLs, or local paths where ModelArts mounts or
downloads them). With such arguments the bootstrap builds the job itself instead of reading
a ConfigMap: a single-node JobSpec from these flags, its `job.yaml`/`experiment.yaml` under
`$LEO_CACHE_DIR/modelarts/config`, node rank 0 and a local msrun master; then it runs as in
a pod (staging, resume, msrun training, publication to `<train_url>/<name>/`, meta-test).

Flags: `--data_url`/`--data-url` (required), `--train_url`/`--train-url`, `--exp` (default:
from the ModelZoo flags `--dataset_name` and `--num_tr_examples_per_class`, else
mini_1shot, the ModelZoo default), `--init`/`--checkpoint_url` (initial weights, a
`.ckpt` or `.npz`), `--device_target Ascend|GPU|CPU` (default
`$LEO_ACCELERATOR`, else Ascend), `--device_num`/`--cards` (processes on this node, default
1), `--steps`, `--set key=value`, `--name`, `--storage-endpoint`, `--storage-region`, `--enable_profiling=True|False`
(the ModelZoo's flag: `leo-launch submit --profile`, MindSpore's profiler on every rank for
the default number of steps). Other flags (the ModelZoo's `enable_modelarts`, `data_path`,
`save_path`, `ckpt_file`, …, or the platform's own) are ignored, each with a note.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.errors import UsageError
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.util.files import atomic_write

DEFAULT_EXPERIMENT = "mini_1shot"  # the ModelZoo's default_config: miniImageNet, 1 shot
_DEVICES = {"ascend": "ascend", "gpu": "nvidia", "cpu": "cpu"}
_DATASETS = {"miniimagenet": "mini", "tieredimagenet": "tiered"}
# the ModelZoo parses its boolean flags with ast.literal_eval: `--enable_profiling=True`
_BOOLEANS = {"true": True, "false": False}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"python -m launcher.bootstrap: {message}")


def _boolean(value: str) -> bool:
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}") from None


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m launcher.bootstrap", add_help=True,
                description="Run one LEO training job on this node as a ModelArts-style job: stage "
                            "data_url, train, publish to <train_url>/<name>/. Without arguments the "
                            "bootstrap reads the job from its ConfigMap instead.")
    p.add_argument("--data_url", "--data-url", dest="data_url", required=True,
                   help="the embeddings: obs://bucket/prefix, s3://…, or a local path")
    p.add_argument("--train_url", "--train-url", dest="train_url",
                   help="where checkpoints, metrics, logs and result.json go (under <train_url>/<name>/)")
    p.add_argument("--exp", "--experiment", dest="exp", help=f"experiment (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--init", "--checkpoint_url", dest="init_url",
                   help="initial weights, a .ckpt or .npz file (the ModelZoo's checkpoint_url)")
    p.add_argument("--dataset_name", help="ModelZoo flag: miniImageNet or tieredImageNet (with "
                   "--num_tr_examples_per_class, picks the experiment)")
    p.add_argument("--num_tr_examples_per_class", type=int, help="ModelZoo flag: shots, 1 or 5")
    p.add_argument("--device_target", help="Ascend, GPU or CPU (default $LEO_ACCELERATOR, else Ascend)")
    p.add_argument("--device_num", "--cards", dest="cards", type=int, default=1,
                   help="training processes on this node (cards; default 1)")
    p.add_argument("--steps", type=int, help="num_steps_limit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="experiment override, repeatable")
    p.add_argument("--name", help="job name: outputs go to <train_url>/<name>/ (default leo-<exp>-<accel><cards>)")
    p.add_argument("--storage-endpoint", "--storage_endpoint", dest="storage_endpoint",
                   help="S3/OBS endpoint (default $AWS_ENDPOINT_URL; OBS from $OBS_REGION)")
    p.add_argument("--storage-region", "--storage_region", dest="storage_region",
                   help="storage region (default $OBS_REGION, $AWS_REGION): obs:// goes to "
                        "https://obs.<region>.myhuaweicloud.com")
    p.add_argument("--enable_profiling", "--enable-profiling", dest="profile", type=_boolean, default=False,
                   metavar="{True,False}",
                   help=f"ModelZoo flag: MindSpore's profiler on every rank for {js.DEFAULT_PROFILE_STEPS} "
                        "steps, published to <train_url>/<name>/profile/rank-<r>/ (leo-launch submit --profile)")
    return p


def _experiment(args: argparse.Namespace) -> str:
    if args.exp:
        return args.exp
    if args.dataset_name or args.num_tr_examples_per_class:
        dataset = _DATASETS.get(str(args.dataset_name or "miniImageNet").lower())
        if dataset is None:
            raise UsageError(f"--dataset_name {args.dataset_name!r}: expected miniImageNet or tieredImageNet")
        return f"{dataset}_{args.num_tr_examples_per_class or 1}shot"
    return DEFAULT_EXPERIMENT


def ignored_notes(unknown: Sequence[str]) -> list[str]:
    """One note per flag we do not use (the platform may add its own)."""
    notes = []
    for item in unknown:
        if item.startswith("-"):
            flag = item.split("=", 1)[0]
            notes.append(f"note: {flag} is ignored (leo-launch stages data_url, resumes and publishes to "
                         "train_url itself)")
    return notes


def prepare(argv: Sequence[str], env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Build the job from ModelArts-style arguments and write its configuration; returns the
    environment for the bootstrap and the notes to print. UsageError on bad arguments."""
    args, unknown = parser().parse_known_args(list(argv))
    target = args.device_target or env.get(contract.ENV_ACCELERATOR) or "ascend"
    accelerator = _DEVICES.get(str(target).lower(), str(target).lower())
    values = {"storage_endpoint": args.storage_endpoint} if args.storage_endpoint else {}
    if args.storage_region:
        values["storage_region"] = args.storage_region
    if args.init_url:
        values["init_url"] = args.init_url
    spec = js.build_job_spec(experiment=_experiment(args), accelerator=accelerator, cards=args.cards,
                             nodes=1, name=args.name, set_overrides=args.overrides, steps=args.steps,
                             data_url=args.data_url, train_url=args.train_url, profile=args.profile,
                             **values)
    cache = Path(env.get(contract.ENV_CACHE_DIR) or contract.CACHE_DIR)
    config_dir = cache / "modelarts" / "config"
    import yaml

    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(config_dir / contract.JOB_FILE, spec.to_yaml().encode())
        atomic_write(config_dir / contract.EXPERIMENT_FILE,
                     yaml.safe_dump(spec.experiment_config().to_dict(), sort_keys=False).encode())
    except OSError as err:
        raise UsageError(f"cannot write the job's configuration under {config_dir}: "
                         f"{err.strerror or err}") from err
    out = dict(env)
    out[contract.ENV_CONFIG_DIR] = str(config_dir)
    out[contract.ENV_NODE_RANK] = "0"  # one node: ModelArts' own VC_TASK_INDEX is not needed
    out.setdefault(contract.ENV_MASTER_ADDR, "127.0.0.1")
    notes = ignored_notes(unknown)
    notes.append(f"ModelArts-style job {spec.name}: {spec.experiment} on {spec.cards} {spec.accelerator} "
                 f"process(es); outputs under {spec.train_url}/{spec.name}/" if spec.train_url else
                 f"ModelArts-style job {spec.name}: {spec.experiment} on {spec.cards} {spec.accelerator} "
                 "process(es); no --train_url: outputs stay in this container")
    return out, notes
