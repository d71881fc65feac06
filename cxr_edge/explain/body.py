"""A simple body mask from the radiograph's own background, and the lung fields inside it.

Outside the patient the beam reaches the detector unattenuated, so on a displayed radiograph
(bright = dense, MONOCHROME1 already inverted) the background is the darkest region and it
touches the edge of the film. The mask, computed on the model's crop:

1. the crop is reduced to ``BODY_GRID`` x ``BODY_GRID`` block means (area interpolation;
   8 x 8 pixel blocks of the 512 frame), so noise and thin lines do not matter;
2. a block is *dark* when its mean is at most ``lo + BACKGROUND_LEVEL * (hi - lo)``, with
   ``lo`` the darkest block and ``hi`` the 99th percentile of the blocks;
3. the background is the dark blocks 4-connected to the crop's edge (the lungs are dark too,
   but the chest wall encloses them);
4. the body is the largest 4-connected component of the rest (a detached bright marker
   letter or label in the background is not body).

A flat crop (block range below ``MIN_CONTRAST`` grey levels) is all body: there is no
background to tell apart. Limits: a lung that touches the crop's edge through dark blocks
(a film cropped inside the body) counts as background; collimator shadows (bright) count as
outside the body only when detached from it.

Lung fields (``lung_fields_blocks``), used only to name zones: the body blocks at or below the
Otsu threshold of the body's block means (air-filled lung is the dark tissue), the two largest
4-connected components. Opaque lung (a large effusion, consolidation) is not dark and so is not
found: the fields then end above it.
"""

from __future__ import annotations

import numpy as np

from cxr_edge.preprocess import CropBox

#: Blocks per side of the grid the mask is computed on.
BODY_GRID = 64
#: Dark = within this fraction of the block range above the darkest block.
BACKGROUND_LEVEL = 1 / 8
#: Below this block range (8-bit grey levels) the image is flat: all body, no background.
MIN_CONTRAST = 16.0


def _blocks(square: np.ndarray) -> np.ndarray:
    """``(BODY_GRID, BODY_GRID) float32`` block means of a square image."""
    import cv2

    blocks: np.ndarray = cv2.resize(
        np.ascontiguousarray(square, dtype=np.float32), (BODY_GRID, BODY_GRID), interpolation=cv2.INTER_AREA
    )
    return blocks


def body_mask_blocks(square: np.ndarray) -> np.ndarray:
    """``(BODY_GRID, BODY_GRID) bool`` body mask of a square ``(s, s)`` uint8 image (see module)."""
    return _body_of_blocks(_blocks(square))


def _body_of_blocks(blocks: np.ndarray) -> np.ndarray:
    """The body mask (steps 2-4 of the module docstring) of ``_blocks`` means."""
    import cv2

    lo, hi = float(blocks.min()), float(np.percentile(blocks, 99))
    if hi - lo < MIN_CONTRAST:
        return np.ones((BODY_GRID, BODY_GRID), dtype=bool)  # flat: no background to tell apart
    dark = (blocks <= lo + BACKGROUND_LEVEL * (hi - lo)).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=4)  # label 0: the non-dark blocks
    edge_labels = np.setdiff1d(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]), [0])
    background = np.isin(labels, edge_labels)
    rest = (~background).astype(np.uint8)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=4)
    if count <= 1:
        return np.zeros((BODY_GRID, BODY_GRID), dtype=bool)  # all background: no body found
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    body: np.ndarray = parts == largest
    return body


def crop_square(gray: np.ndarray, crop: CropBox) -> np.ndarray:
    """The ``(side, side)`` view of ``gray`` the model saw (``crop``, original pixels)."""
    return gray[crop.top : crop.top + crop.side, crop.left : crop.left + crop.side]


def body_mask_frame(blocks: np.ndarray, size: int) -> np.ndarray:
    """``(size, size) bool``: a ``(BODY_GRID, BODY_GRID)`` body mask in the model frame (each
    block repeated over its pixels, nearest neighbour)."""
    import cv2

    mask: np.ndarray = cv2.resize(blocks.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def body_mask(gray: np.ndarray, crop: CropBox, size: int) -> np.ndarray:
    """``(size, size) bool`` body mask in the model frame of ``gray (h, w) uint8`` cropped to
    ``crop`` (``body_mask_frame`` of ``body_mask_blocks``)."""
    return body_mask_frame(body_mask_blocks(crop_square(gray, crop)), size)


def lung_fields_blocks(square: np.ndarray) -> np.ndarray:
    """``(BODY_GRID, BODY_GRID) bool`` lung fields of a square ``(s, s)`` uint8 image (see module);
    all False when the body has no dark part."""
    return body_and_lung_fields_blocks(square)[1]


def body_and_lung_fields_blocks(square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(body_mask_blocks(square), lung_fields_blocks(square))`` from one block reduction."""
    import cv2

    blocks = _blocks(square)
    body = _body_of_blocks(blocks)
    if body.sum() < 2:
        return body, np.zeros_like(body)
    values = np.clip(np.rint(blocks[body]), 0, 255).astype(np.uint8).reshape(-1, 1)
    level, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = (body & (blocks <= level)).astype(np.uint8)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=4)
    if count <= 1:
        return body, np.zeros_like(body)
    largest = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:2]
    fields: np.ndarray = np.isin(parts, largest)
    return body, fields
