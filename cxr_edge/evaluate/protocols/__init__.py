"""Localization protocols of ``cxr-edge eval``, one module each, and how to pick them by name.

- ``chexlocalize`` (default): CheXlocalize v1.0.0's official hit rate and mIoU.
- ``medicalpatchnet``: the MedicalPatchNet paper's evaluation (CheXlocalize with clipped maps,
  published geometry and tuned thresholds).
- ``cxr-edge``: cxr-edge's own model-frame check (not comparable with published figures).
"""

from __future__ import annotations

from cxr_edge.errors import CxrEdgeError
from cxr_edge.evaluate.protocols.base import LocalizationProtocol
from cxr_edge.evaluate.protocols.chexlocalize import CheXlocalizeProtocol
from cxr_edge.evaluate.protocols.cxr_edge import CxrEdgeProtocol
from cxr_edge.evaluate.protocols.medicalpatchnet import MedicalPatchNetProtocol

#: Protocol names, in report order; ``all`` on the command line selects every one.
PROTOCOLS: tuple[str, ...] = ("chexlocalize", "medicalpatchnet", "cxr-edge")
DEFAULT_PROTOCOL = "chexlocalize"


def parse_protocols(text: str) -> tuple[str, ...]:
    """ "all", one name, or a comma-separated list -> names in report order (CxrEdgeError otherwise)."""
    names = PROTOCOLS if text.strip() == "all" else tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise CxrEdgeError(None, f"--protocol must be all or one of {', '.join(PROTOCOLS)}, got {text!r}")
    return tuple(p for p in PROTOCOLS if p in names)


def make_protocol(name: str, rule: str | float | None = None, fraction: float = 0.5) -> LocalizationProtocol:
    """The protocol ``name``. rule: how CheXlocalize-style protocols binarise maps for mIoU
    ("otsu", "tuned" or a fixed threshold; None = the protocol's own: Otsu for chexlocalize,
    tuned for medicalpatchnet); fraction: the cxr-edge protocol's share of the map maximum."""
    if name == "chexlocalize":
        return CheXlocalizeProtocol("otsu" if rule is None else rule)
    if name == "medicalpatchnet":
        return MedicalPatchNetProtocol("tuned" if rule is None else rule)
    if name == "cxr-edge":
        return CxrEdgeProtocol(fraction)
    raise CxrEdgeError(None, f"unknown protocol {name!r} (one of {', '.join(PROTOCOLS)})")
