"""The one exception type the CLI turns into a one-line error and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class CxrEdgeError(Exception):
    """A problem with a named input: printed as ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ServiceUnavailableError(CxrEdgeError):
    """The service that runs the model (a Triton server) cannot be reached or went away.

    Not a problem of one input: a batch stops at the first one instead of failing every file.
    """
