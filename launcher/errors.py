"""Typed errors of the launcher. Library code raises them; only launcher.cli prints and picks exit codes."""


class LaunchError(Exception):
    """A failure at run time (exit code 1). The message is one line."""

    exit_code = 1


class UsageError(LaunchError):
    """Bad usage or input (exit code 2): nothing was created or written."""

    exit_code = 2


class FieldError(UsageError):
    """A bad value of one job field (launcher.spec.fields): the spec names the field, the
    CLI rewrites it as the flag that sets it (`problem` is the rest of the line)."""

    def __init__(self, field: str | tuple[str, ...], problem: str) -> None:
        self.fields = (field,) if isinstance(field, str) else tuple(field)
        self.problem = problem
        super().__init__(f"{', '.join(self.fields)} {problem}")
