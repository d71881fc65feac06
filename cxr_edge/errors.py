"""The one exception type the CLI turns into a one-line error and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class CxrEdgeError(Exception):
    """A problem with a named input: printed as ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ModelError(CxrEdgeError):
    """A problem with the model or the service running it, not with the image (``path`` names
    the model or the server): no later image can succeed, so a batch stops at the first one."""


class ServiceUnavailableError(ModelError):
    """The service that runs the model (a Triton server) cannot be reached or went away."""
