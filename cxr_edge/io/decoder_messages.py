"""What native decoders print: caught, so corruption becomes a refusal and not terminal chatter.

libjpeg reports corrupt data (``Corrupt JPEG data: premature end of data segment``) only as a
*warning* printed to the process's stderr, and then returns an image padded with grey; libpng
prints its errors the same way before OpenCV returns nothing. No Python API of OpenCV exposes
these messages, so ``native_stderr`` points file descriptor 2 at a temporary file for the
duration of one decode and hands back what was written there.

The redirection is process-wide, so decodes holding it are serialised by a lock (a decode is a
few milliseconds of a prediction's seconds), and anything captured that is not a decoder message
is written back to the real stderr unchanged. ``decode_image`` is the one OpenCV decode that
does this, for PNG/JPEG files and the JPEG frames of DICOM files alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_LOCK = threading.Lock()

#: libjpeg's warnings about corrupt data, whole lines as its default ``output_message`` prints
#: them (they carry no prefix of their own): its ``JWRN_*`` messages on bad entropy data, a
#: premature end, bad scan parameters and excess scanlines. (Its other warnings, an unknown JFIF
#: revision or Adobe transform and an inconsistent progression, are not caught; its fatal
#: ``JERR_*`` errors are not printed: OpenCV's ``error_exit`` jumps back silently.)
_LIBJPEG_LINE = re.compile(
    r"Corrupt JPEG data: |Premature end of JPEG file$|Invalid SOS parameters for sequential JPEG$|"
    r"Application transferred too many scanlines$"
)
#: libpng's default warning and error handlers' lines.
_LIBPNG_LINE = re.compile(r"libpng (warning|error): ")
#: OpenCV's own log lines from its image codecs (``[ WARN:0@0.059] global grfmt_png.cpp:793 ...``).
_OPENCV_CODEC_LINE = re.compile(r"\[ ?(WARN|ERROR)[^\]]*\] global \S*(grfmt_\w+|loadsave|exif|bitstrm)\.cpp")
#: libpng warnings about ancillary chunks (colour profiles, text, gamma): harmless for pixels.
_HARMLESS_PNG = re.compile(
    r"libpng warning: .*(iCCP|sRGB|gAMA|cHRM|tEXt|zTXt|iTXt|pHYs|tIME|profile)", re.IGNORECASE
)


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 inside the block; the list is filled on exit
    with the captured decoder lines (stripped, non-empty: libjpeg's warnings and libpng's
    lines and OpenCV's codec log lines, in their exact forms). Any other line (another
    thread's, say) is given back."""
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
        ours = _LIBJPEG_LINE.match(line) or _LIBPNG_LINE.match(line) or _OPENCV_CODEC_LINE.match(line)
        (lines if ours else other).append(line)
    if other:  # not ours: give it back
        sys.stderr.write("\n".join(other) + "\n")
        sys.stderr.flush()


def corruption_messages(fmt: str, lines: list[str]) -> list[str]:
    """The captured decoder lines that mean the pixels are not what the file encodes.

    JPEG: every libjpeg warning caught (corrupt data, premature end, extraneous bytes) means
    the decoder substituted or skipped data. PNG: every libpng error, and warnings other than
    those about ancillary chunks (``_HARMLESS_PNG``). Both: OpenCV's codec warnings and errors.
    """
    own = _LIBPNG_LINE if fmt == "png" else _LIBJPEG_LINE
    return [
        line
        for line in lines
        if (own.match(line) and not (fmt == "png" and _HARMLESS_PNG.search(line)))
        or _OPENCV_CODEC_LINE.match(line)
    ]


def one_line(text: str, limit: int = 160) -> str:
    """A decoder message as one short line (control characters dropped)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Decoded:
    """One ``decode_image``: the image (None when OpenCV raised or decoded nothing), every
    captured decoder line, those of them that mean corruption (``corruption_messages``), and
    OpenCV's exception as one line ("" when it raised none)."""

    image: np.ndarray | None
    messages: list[str]
    corrupt: list[str]
    error: str


def decode_image(data: bytes, fmt: str) -> Decoded:
    """``cv2.imdecode(data, IMREAD_UNCHANGED)`` of ``fmt`` ("png" or "jpeg") data, with what the
    decoder printed caught (``native_stderr``) and sorted (``corruption_messages``)."""
    import cv2

    with native_stderr() as messages:
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            image = None
            error = one_line(str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
        else:
            error = ""
    return Decoded(image, messages, corruption_messages(fmt, messages), error)
