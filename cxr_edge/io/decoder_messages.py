"""What native decoders print: caught, so corruption becomes a refusal and not terminal chatter.

libjpeg reports corrupt data (``Corrupt JPEG data: premature end of data segment``) only as a
*warning* printed to the process's stderr, and then returns an image padded with grey; libpng
prints its errors the same way before OpenCV returns nothing. No Python API of OpenCV exposes
these messages, so ``native_stderr`` points file descriptor 2 at a temporary file for the
duration of one decode and hands back what was written there.

The redirection is process-wide, so decodes holding it are serialised by a lock (a decode is a
few milliseconds of a prediction's seconds), and anything captured that is not a decoder message
is written back to the real stderr unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()

#: Lines that come from the image decoders (libjpeg's messages carry no prefix of their own).
_DECODER_LINE = re.compile(
    r"libpng|libjpeg|JPEG|Corrupt|Premature|Bogus|Huffman|marker|DHT|SOS|SOF|DQT|scan|"
    r"imgcodecs|imdecode|grfmt|OpenCV",
    re.IGNORECASE,
)
#: libpng warnings about ancillary chunks (colour profiles, text, gamma): harmless for pixels.
_HARMLESS_PNG = re.compile(
    r"libpng warning: .*(iCCP|sRGB|gAMA|cHRM|tEXt|zTXt|iTXt|pHYs|tIME|profile)", re.IGNORECASE
)


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 inside the block; the list is filled on exit
    with the captured decoder lines (stripped, non-empty)."""
    lines: list[str] = []
    with _LOCK:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon): nothing can be printed, nothing to catch
            yield lines
            return
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield lines
                finally:
                    sys.stderr.flush()
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    text = tmp.read().decode("utf-8", errors="replace")
        finally:
            os.close(saved)
    other: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        (lines if _DECODER_LINE.search(line) else other).append(line)
    if other:  # not ours: give it back
        sys.stderr.write("\n".join(other) + "\n")
        sys.stderr.flush()


def corruption_messages(fmt: str, lines: list[str]) -> list[str]:
    """The captured decoder lines that mean the pixels are not what the file encodes.

    JPEG: every libjpeg warning (corrupt data, premature end, extraneous bytes) means the
    decoder substituted or skipped data. PNG: every libpng error, and warnings other than those
    about ancillary chunks (``_HARMLESS_PNG``).
    """
    if fmt == "png":
        return [line for line in lines if not _HARMLESS_PNG.search(line)]
    return list(lines)
