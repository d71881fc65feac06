"""Write outputs atomically so a failure never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp makes 0600 files; finished outputs get the usual umask-based mode (read once, at import).
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Ending of every temporary file ``atomic_path`` makes: "." + final name + "." + 8 random
#: characters (``tempfile.mkstemp``'s) + TEMP_SUFFIX, beside the final file.
TEMP_SUFFIX = ".part"
#: Bytes a temporary name adds to the final name's.
TEMP_OVERHEAD = len(".") + len(".XXXXXXXX") + len(TEMP_SUFFIX)
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` has the form of an ``atomic_path`` temporary file (a stale one, once no
    writer holds the folder)."""
    return _TEMP_NAME.match(name) is not None


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``.

    On any exception the temporary file is removed and ``final`` is left untouched.
    durable: fsync the file before the rename and the folder after it, so that once this
    returns, ``final`` survives a power cut or a kill -9 (what a DICOM node must promise before
    it answers "stored").
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            fsync_path(tmp_path)
        os.replace(tmp_path, final)
        if durable:
            fsync_path(final.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(final: str | Path, data: bytes, durable: bool = False) -> None:
    with atomic_path(final, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | Path, text: str, durable: bool = False) -> None:
    with atomic_path(final, durable=durable) as tmp:
        tmp.write_text(text)
