"""One process at a time: an exclusive, non-blocking ``fcntl.flock`` on a lock file.

The lock belongs to the open file descriptor, so a crashed holder's lock goes with its process;
a second taker is refused at once (CxrEdgeError with the caller's "busy" message), never kept
waiting. Where ``fcntl`` does not exist (not POSIX) there is no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cxr_edge.errors import CxrEdgeError


def try_lock(path: Path, busy: str, where: Path | None = None) -> int | None:
    """Open ``path`` (created 0644 if needed) and lock it exclusively without waiting: the open
    descriptor, which holds the lock until it is closed. CxrEdgeError(``where``, ``busy``) when
    another process holds it; None where ``fcntl`` does not exist (no lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CxrEdgeError(where, busy) from None
    return fd


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str, where: Path | None = None) -> Iterator[None]:
    """Hold ``try_lock(path, busy, where)`` for the ``with`` block."""
    fd = try_lock(path, busy, where)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
