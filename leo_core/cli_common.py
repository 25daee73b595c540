"""Command-line pieces shared by `leo_core.train`, `leo_core.evaluate` and the dataset writers
(`leo_core.synthetic`, `leo_core.glyphs`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from leo_core.config import ConfigError, experiment_names, load_config_file, load_experiment


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help=f"one of {', '.join(experiment_names())}")
    parser.add_argument("--config", help="YAML file of config keys (over its `name` experiment)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set outer_lr=1e-4")
    parser.add_argument("--data-root", required=True,
                        help="directory holding miniImageNet/, tieredImageNet/ and/or glyphs/ embeddings")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", choices=("CPU", "GPU", "Ascend"), default=None,
                        help="device target (default $LEO_DEVICE, $DEVICE_TARGET or CPU)")


def resolve_config(args):
    if args.config:
        return load_config_file(args.config, args.experiment, args.set)
    if not args.experiment:
        raise ConfigError("give --experiment or --config")
    return load_experiment(args.experiment, args.set)


@contextlib.contextmanager
def exit_on_user_error():
    """Bad configuration, data or checkpoints: one line on stderr and exit code 2."""
    from leo_core.checkpoint import CheckpointError

    try:
        yield
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def write_files(out, write, user_errors: tuple[type[Exception], ...] = (ValueError,)) -> int:
    """Run a dataset writer's `write()` into `out`; its exit code: 0, 2 for `user_errors`
    (bad arguments or data; one line), 1 when `out` cannot be written."""
    try:
        write()
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write under {out}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


class Progress:
    """Occasional `label done/total (rate)` lines; silent on non-main ranks."""

    def __init__(self, label: str, enabled: bool = True, every_seconds: float = 10.0):
        self.label, self.enabled, self.every = label, enabled, every_seconds
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.every and done < total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        print(f"{self.label}: {done}/{total} tasks ({rate:.0f} tasks/s)", flush=True)
