"""Placeholder: the 'quantize' command is being written (see the issue that owns it)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this command to the app."""
