"""Shared CLI plumbing: one-line errors and exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from cxr_edge.errors import CxrEdgeError

#: Exit codes: 0 ok, 1 some inputs failed (batch went on), 2 bad input / usage, 3 accuracy gate failed.
EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


def print_error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a CxrEdgeError into ``error: <path>: <problem>`` on stderr and exit code 2."""
    try:
        yield
    except CxrEdgeError as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
