"""dpl.cli: the typer layer."""
