"""Where results go: a DICOM application entity given as ``AE@HOST:PORT``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxr_edge.errors import CxrEdgeError

#: DICOM PS3.5 AE: 1-16 characters of the default repertoire, no backslash or control characters.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(title: str, what: str = "--ae-title") -> str:
    """``title`` if it is a valid AE title (1-16 printable characters, no backslash, not blank)."""
    if not _AE_TITLE.match(title) or not title.strip():
        raise CxrEdgeError(
            None, f"{what}: {title!r} is not an AE title (1-16 printable characters, no backslash)"
        )
    return title


@dataclass(frozen=True)
class Destination:
    """A storage SCP the node sends results to."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def key(self) -> str:
        """A file-name-safe name of this destination (for the delivery journal)."""
        return re.sub(r"[^A-Za-z0-9.-]", "_", f"{self.ae_title}@{self.host}_{self.port}")


def parse_destination(text: str) -> Destination:
    """``"PACS@10.0.0.5:104"`` -> Destination; CxrEdgeError naming the problem otherwise."""
    match = re.match(r"^(?P<ae>[^@]+)@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>[0-9]{1,5})$", text)
    if not match:
        raise CxrEdgeError(None, f"--forward: {text!r} is not AE@HOST:PORT (e.g. PACS@127.0.0.1:4242)")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise CxrEdgeError(None, f"--forward: port {port} is not in 1..65535")
    return Destination(check_ae_title(match["ae"], "--forward"), match["host"].strip("[]"), port)
