"""`leo-launch`: the command-line entry point.

Each command lives in its own module `launcher.cli.cmd_<name>` with `HELP`,
`EXAMPLES` (the epilog of its --help), `add_arguments(parser)` and `run(args) -> int`. Command modules import heavy
libraries (MindSpore, boto3, the Kubernetes client) inside `run` only, so that
`leo-launch --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback

from launcher.errors import LaunchError
from launcher.storage.base import redact_urls  # no user:password@ of a URL is printed

# Order is the order shown by --help.
COMMANDS = (
    "experiments",
    "render",
    "submit",
    "status",
    "logs",
    "list",
    "cancel",
    "rbac",
    "pull",
    "push",
    "ranktable",
    "report",
    "sweep",
)


def _commands():
    for name in COMMANDS:
        yield name, importlib.import_module(f"launcher.cli.cmd_{name}")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI contract's one-line usage errors (exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


EXAMPLES = """\
examples:
  leo-launch experiments
  leo-launch submit --exp mini_1shot --accel cpu --cards 2 --steps 20 --data-url ./embeddings
  leo-launch status leo-mini-1shot-cpu2
  leo-launch pull leo-mini-1shot-cpu2 --to ckpt
  leo-launch COMMAND --help      (each command's options and examples)"""


def version_text() -> str:
    """leo-launch's, MindSpore's and Python's versions, read from package metadata (no
    MindSpore import: it takes seconds)."""
    import platform
    from importlib import metadata

    def of(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"leo-launch {of('leo-launch')}, MindSpore {of('mindspore')}, Python {platform.python_version()}"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help=kwargs.get("help"))

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="leo-launch",
        description="Train LEO (Latent Embedding Optimization) with MindSpore on CPU, Ascend\n"
        "or NVIDIA nodes, locally or on Kubernetes.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the versions of leo-launch, MindSpore "
                        "and Python")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _commands():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP,
                                 epilog="examples:\n" + module.EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks of failures")
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("leo-launch: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
        code = _exit_code(err)

        if args.debug:
            print(redact_urls(traceback.format_exc()), end="", file=sys.stderr)
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"leo-launch: error: {printable(redact_urls(message))}", file=sys.stderr)
        return code


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters (terminal escapes in object keys, file names) shown
    as \\xNN instead of acting on the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _exit_code(err: Exception) -> int:
    if isinstance(err, LaunchError):
        return err.exit_code
    # Bad experiment names and overrides come from leo_core's registry.
    from leo_core.config import ConfigError

    if isinstance(err, ConfigError):
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
