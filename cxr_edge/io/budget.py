"""What an input may cost before it is decoded: the kind of file, its bytes, its pixels.

Every limit is checked from the file system or the file header *before* a decoder allocates
anything, so a decompression bomb (a small PNG declaring 32768 x 32768 pixels, a deflated
DICOM, ``/dev/zero``) is refused at the cost of reading its header.

- ``read_input_file``: stat before open (directories, FIFOs, devices and sockets are refused
  without opening them; a symlink loop is named as such), open with ``O_NONBLOCK`` (a file
  swapped for a FIFO after the stat cannot block), at most ``max_bytes`` read.
- ``png_size`` / ``jpeg_size``: width and height from the PNG IHDR chunk or the JPEG frame
  header (SOFn); ``InputBudget.check_pixels`` refuses more than ``max_pixels``.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cxr_edge.errors import CxrEdgeError

#: Default pixel budget: 100 megapixels, 6x the largest detector in use (43 x 43 cm at 0.1 mm
#: is 4300 x 4300 = 18.5 MP).
DEFAULT_MAX_PIXELS = 100_000_000
#: Bytes a file may hold per budgeted pixel: room for uncompressed 16-bit samples with headers.
BYTES_PER_PIXEL = 4


@dataclass(frozen=True)
class InputBudget:
    """Upper limits on one input, checked before decoding.

    max_pixels: width x height x frames the header may declare; max_bytes: the file size (and,
    for deflated DICOM, the inflated size). ``InputBudget.megapixels(mp)`` scales both.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_PIXELS * BYTES_PER_PIXEL

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise CxrEdgeError(
                None, f"input budget must be positive, got {self.max_pixels} px, {self.max_bytes} B"
            )

    @classmethod
    def megapixels(cls, mp: float) -> InputBudget:
        """A budget of ``mp`` million pixels and ``BYTES_PER_PIXEL`` bytes per pixel."""
        if not mp > 0:
            raise CxrEdgeError(None, f"--max-megapixels must be > 0, got {mp}")
        pixels = max(1, int(mp * 1e6))
        return cls(max_pixels=pixels, max_bytes=pixels * BYTES_PER_PIXEL)

    def check_pixels(self, path: Path, width: int, height: int, frames: int = 1, what: str = "image") -> None:
        """CxrEdgeError when the header declares more than ``max_pixels`` (or a non-positive size)."""
        if width < 1 or height < 1 or frames < 1:
            raise CxrEdgeError(path, f"{what} header declares an empty image ({width} x {height})")
        pixels = width * height * frames
        if pixels > self.max_pixels:
            frames_text = f" x {frames} frames" if frames > 1 else ""
            raise CxrEdgeError(
                path,
                f"{what} declares {width} x {height}{frames_text} = {pixels / 1e6:.1f} MP, over the input "
                f"budget of {self.max_pixels / 1e6:g} MP (refused before decoding; raise with --max-megapixels)",
            )


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return f"is {kind}, not a regular file (refused without reading)"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def _stat_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link points back to itself)"
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            return "broken symbolic link (its target does not exist)"
        return "file not found"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read file ({exc.strerror or type(exc).__name__})"


def read_input_file(path: Path, budget: InputBudget) -> bytes:
    """The bytes of a regular file of at most ``budget.max_bytes``; CxrEdgeError otherwise.

    Never opens a directory, FIFO, device or socket, and never blocks on one.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CxrEdgeError(path, _stat_problem(path, exc)) from None
    problem = _kind_problem(st.st_mode)
    if problem:
        raise CxrEdgeError(path, problem)
    if st.st_size == 0:
        raise CxrEdgeError(path, "empty file (0 bytes)")
    if st.st_size > budget.max_bytes:
        raise CxrEdgeError(
            path,
            f"file is {st.st_size / 1e6:.1f} MB, over the input budget of {budget.max_bytes / 1e6:g} MB "
            "(raise with --max-megapixels)",
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CxrEdgeError(path, _stat_problem(path, exc)) from None
    try:
        problem = _kind_problem(os.fstat(fd).st_mode)  # swapped for something else after the stat?
        if problem:
            raise CxrEdgeError(path, problem)
        chunks: list[bytes] = []
        total = 0
        while total <= budget.max_bytes:
            chunk = os.read(fd, min(1 << 24, budget.max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise CxrEdgeError(path, f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)
    if total > budget.max_bytes:
        raise CxrEdgeError(
            path, f"file grew past the input budget of {budget.max_bytes / 1e6:g} MB while reading"
        )
    if total == 0:
        raise CxrEdgeError(path, "empty file (0 bytes)")
    return b"".join(chunks)


def png_size(path: Path, data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG standard puts first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise CxrEdgeError(path, "corrupt PNG (no IHDR header chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


#: JPEG frame headers: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field: TEM, RST0..7 (SOI/EOI never appear inside the header walk).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_size(path: Path, data: bytes) -> tuple[int, int]:
    """(width, height) from the first frame header (SOFn), walking the marker segments."""
    pos = 2  # after SOI
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise CxrEdgeError(path, "corrupt JPEG (marker expected in the header)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if height == 0:
                raise CxrEdgeError(path, "JPEG frame header without a height (DNL marker): not supported")
            return int(width), int(height)
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            break
        if length < 2:
            raise CxrEdgeError(path, "corrupt JPEG (bad marker segment length)")
        pos += 2 + length
    raise CxrEdgeError(path, "corrupt JPEG (no frame header before the image data)")
