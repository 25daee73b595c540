"""`leo-launch experiments`: the registered LEO experiments and their key settings."""

from __future__ import annotations

import argparse

HELP = "list the registered experiments (leo_core/configs) and their key settings"

_COLUMNS = (
    ("NAME", "name"),
    ("DATASET", "dataset_name"),
    ("WAYS", "num_classes"),
    ("SHOTS", "num_tr_examples_per_class"),
    ("CROP", "embedding_crop"),
    ("META-BATCH", "metatrain_batch_size"),
    ("STEPS", "num_steps_limit"),
    ("OUTER-LR", "outer_lr"),
)
EXAMPLES = """\
  leo-launch experiments
  leo-launch experiments -o json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="table (default) or json (every setting of every experiment)")


def run(args: argparse.Namespace) -> int:
    import json

    from leo_core.config import experiment_names, load_experiment

    configs = [load_experiment(name) for name in experiment_names()]
    if args.output == "json":
        print(json.dumps([cfg.to_dict() for cfg in configs], indent=2))
        return 0
    rows = [[title for title, _ in _COLUMNS]]
    rows += [[_cell(getattr(cfg, key)) for _, key in _COLUMNS] for cfg in configs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
