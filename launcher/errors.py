"""Typed errors of the launcher. Library code raises them; only launcher.cli prints and picks exit codes."""


class LaunchError(Exception):
    """A failure at run time (exit code 1). The message is one line."""

    exit_code = 1


class UsageError(LaunchError):
    """Bad usage or input (exit code 2): nothing was created or written."""

    exit_code = 2
