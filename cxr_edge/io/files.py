"""Which files count as X-ray images when a folder is given (``infer``, calibration sets, eval)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: File suffixes a folder expands to. ``load_xray`` finds the format from the bytes, so a file
#: given by name is read whatever its suffix; DICOM files without a suffix are skipped in folders.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def find_image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; hidden files (``.name``) are skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (``find_image_files``).

    Missing paths and folders without images are kept as-is, so they fail as one bad input.
    """
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(find_image_files(item) or [item])
        else:
            files.append(item)
    return files
