"""DICOM results filed back into the source study: a Secondary Capture per overlay (``sc``), a
TID 1500 Structured Report of all findings (``sr``), coded concepts (``codes``), deterministic
UIDs (``uids``), the model's identity in headers (``identity``), all of them built and encoded
(``results``). File names and writing: ``cxr_edge.outputs``.

Needs the ``dicom`` extra (highdicom). See docs/dicom.md for what a PACS receives.
"""

from __future__ import annotations

from cxr_edge.dicom_results.results import DicomResult, build_dicom_results, read_source

__all__ = ["DicomResult", "build_dicom_results", "read_source"]
