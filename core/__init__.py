"""dpl.core: the library behind the dpl command line. No typer, no printing."""

__version__ = "0.1.0"


class DplError(ValueError):
    """Bad usage or bad input: the CLI prints the message on one line and exits with code 2."""
