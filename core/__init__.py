"""dpl.core: the library behind the dpl command line. No typer, no printing."""

__version__ = "0.1.0"


class DplError(ValueError):
    """Bad usage or bad input: the CLI prints the message on one line and exits with code 2."""


class RunError(RuntimeError):
    """A failure while running (exit code 1): a non-finite loss, a full disk."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped a run after it saved a resume state (exit 128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
