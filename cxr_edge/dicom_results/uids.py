"""Deterministic UIDs for result objects, so that re-sending a result after a crash stores the
same instance again in the PACS instead of a second copy.

A UID is ``2.25.<the 128-bit integer of a name-based UUID>`` (ITU-T X.667 / DICOM PS3.5 B.2),
named by the source image's SOP Instance UID, the model's sha256, the run settings and which
object it is. Same source, model and settings -> same UIDs; anything different -> new UIDs.
"""

from __future__ import annotations

import uuid

#: Namespace of cxr-edge's name-based UUIDs (itself a name-based UUID of the project URL form).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-edge:dicom-results")


def derived_uid(*parts: str) -> str:
    """``2.25.<int>`` from a SHA-1 name-based UUID of the parts (each part separated, so
    ("ab", "c") and ("a", "bc") differ). At most 44 characters, within the 64 a UID may have."""
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


class ResultUids:
    """The UIDs of everything made from one source image by one model with one setting."""

    def __init__(self, source_sop_instance_uid: str, model_sha256: str, settings: str) -> None:
        """settings: the run parameters that change the content (e.g. "steps=4 map=scaled")."""
        self._key = (str(source_sop_instance_uid), model_sha256, settings)

    def _uid(self, *what: str) -> str:
        return derived_uid(*self._key, *what)

    @property
    def overlay_series(self) -> str:
        return self._uid("overlay-series")

    def overlay_instance(self, label: str) -> str:
        return self._uid("overlay", label)

    @property
    def report_series(self) -> str:
        return self._uid("report-series")

    @property
    def report_instance(self) -> str:
        return self._uid("report")

    def tracking(self, label: str) -> str:
        """Tracking UID of one finding in the report (its image-level and evidence groups share it)."""
        return self._uid("tracking", label)

    @property
    def device_observer(self) -> str:
        """UID of the observing device: the model (same for every image it reads)."""
        return derived_uid("device", self._key[1])
