"""Shared CLI plumbing: one-line errors, names safe to print, exit codes."""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from collections.abc import Iterator

import typer

from cxr_edge.errors import CxrEdgeError

#: Exit codes: 0 ok, 1 some inputs failed (batch went on), 2 bad input / usage, 3 accuracy gate failed.
EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3


def printable(text: object) -> str:
    """``text`` safe for a terminal: control and format characters (escape codes, newlines,
    bidi overrides) and undecodable bytes are shown escaped (``\\x1b``, ``\\u202e``), not sent."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line, control characters escaped."""
    typer.echo(f"error: {printable(message)}", err=True)


def print_warning(message: str) -> None:
    """``warning: <message>`` on stderr, on one line, control characters escaped."""
    typer.echo(f"warning: {printable(message)}", err=True)


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
