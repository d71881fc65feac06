"""Overlay images: a diverging saliency map blended over the X-ray at its original resolution.

``finding_overlay`` draws one finding of a ``Prediction``. ``overlay`` is the exact formula the
CUDA overlay kernel reproduces (see its docstring); ``draw_legend`` adds the small legend
(finding, probability, colour bar) with OpenCV and is kept separate so the formula stays
testable on its own.
"""

from __future__ import annotations

import numpy as np

from cxr_edge.prediction import Prediction
from cxr_edge.preprocess import CropBox

#: End colours of the diverging scale (RGB): blue = evidence against, red = evidence for.
_BLUE = np.array([33.0, 102.0, 172.0])
_WHITE = np.array([255.0, 255.0, 255.0])
_RED = np.array([178.0, 24.0, 43.0])


def _diverging_lut() -> np.ndarray:
    """(256, 3) uint8 RGB: index 0 blue, 127.5 white, 255 red, linear in RGB in between."""
    f = np.arange(256, dtype=np.float64)[:, None] / 255.0
    lower = _BLUE + (_WHITE - _BLUE) * (f / 0.5)
    upper = _WHITE + (_RED - _WHITE) * ((f - 0.5) / 0.5)
    lut: np.ndarray = np.rint(np.where(f < 0.5, lower, upper)).astype(np.uint8)
    return lut


#: (256, 3) uint8 RGB, blue -> white -> red; index = round((t + 1) * 127.5) for t in [-1, 1].
DIVERGING_LUT: np.ndarray = _diverging_lut()
DIVERGING_LUT.flags.writeable = False


def sample_map(value_map: np.ndarray, crop: CropBox) -> np.ndarray:
    """Bilinear upsample of ``value_map`` (N, N) onto the crop box: (side, side) float32.

    Display pixel (y, x) samples the map at u = (y + 0.5 - top) * N / side - 0.5 (same for x),
    clamped to the edge: exactly OpenCV's INTER_LINEAR resize (float weights for float32
    input; no antialiasing when side < N), which is used for speed.
    """
    import cv2

    m = np.ascontiguousarray(value_map, dtype=np.float32)
    return cv2.resize(m, (crop.side, crop.side), interpolation=cv2.INTER_LINEAR)


def overlay(
    gray: np.ndarray,
    value_map: np.ndarray,
    crop: CropBox,
    vmax: float,
    alpha_max: float = 0.6,
) -> np.ndarray:
    """Blend a diverging map over the X-ray; the formula the CUDA overlay kernel reproduces.

    gray: (h, w) uint8 original image. value_map: (N, N) float32 in logit units in the model
    frame. crop: the centre square the model saw, in original pixels. vmax > 0: the logit
    value drawn at full colour (the scale is symmetric, -vmax .. +vmax).

    Inside the crop: m = bilinear sample at u = (y + 0.5 - top) * N / side - 0.5 (same for
    x), t = clip(m / vmax, -1, 1), colour = LUT[round((t + 1) * 127.5)],
    a = alpha_max * |t|, out = round((1 - a) * gray + a * colour). Outside: plain gray.
    Returns (h, w, 3) uint8 RGB.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be (h, w) uint8, got {gray.shape} {gray.dtype}")
    if value_map.ndim != 2 or value_map.shape[0] != value_map.shape[1]:
        raise ValueError(f"value_map must be (N, N), got {value_map.shape}")
    out = np.repeat(gray[:, :, None], 3, axis=2)
    if not vmax > 0 or not np.isfinite(vmax):
        return out  # an all-zero map has nothing to show
    box = (slice(crop.top, crop.top + crop.side), slice(crop.left, crop.left + crop.side))
    t = sample_map(value_map, crop)
    t /= np.float32(vmax)
    np.clip(t, -1.0, 1.0, out=t)
    index = np.rint((t + 1.0) * 127.5).astype(np.uint8)  # 0..255 by construction
    a = np.abs(t)
    a *= np.float32(alpha_max)
    keep = 1.0 - a
    base = gray[box].astype(np.float32)
    inside = out[box]
    # One channel at a time keeps the temporaries 2-D (about 3x faster than (side, side, 3) floats).
    for ch in range(3):
        colour = DIVERGING_LUT[:, ch].take(index).astype(np.float32)
        blended = keep * base + a * colour
        inside[:, :, ch] = np.rint(blended)  # a convex mix of two uint8 values: stays in 0..255
    return out


def finding_overlay(
    prediction: Prediction,
    label: str,
    map_kind: str = "scaled",
    vmax: float | None = None,
    legend: bool = True,
    alpha_max: float = 0.6,
) -> np.ndarray:
    """The X-ray at its original resolution with one finding's map blended over it.

    Red = evidence for, blue = against, symmetric scale: ``vmax`` (logit units) defaults to the
    map's largest magnitude. Returns (h, w, 3) uint8 RGB.
    """
    value_map = prediction.value_map(label, map_kind)
    if vmax is None:
        vmax = float(np.max(np.abs(value_map)))
    rgb = overlay(prediction.gray, value_map, prediction.crop, vmax, alpha_max=alpha_max)
    if legend:
        f = prediction.finding(label)
        draw_legend(rgb, f.label, f.probability, vmax, map_name=map_kind, threshold=f.threshold)
    return rgb


def draw_legend(
    rgb: np.ndarray,
    label: str,
    probability: float,
    vmax: float,
    map_name: str = "",
    threshold: float | None = None,
) -> np.ndarray:
    """Draw a small legend in the top-right corner of ``rgb`` (h, w, 3) uint8 RGB, in place.

    Shows the finding, its probability (and the model's decision threshold, if any) and a
    colour bar from -vmax (blue, against) to +vmax (red, for) in logit units. Sized relative to the image so it stays legible from 256 px
    to 4k px. Returns ``rgb``.
    """
    import cv2

    h, w = rgb.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    suffix = f" ({map_name})" if map_name else ""
    decision = ""
    if threshold is not None:
        decision = f"  (threshold {threshold:.3f}: {'positive' if probability >= threshold else 'negative'})"
    lines = [f"{label}", f"p = {probability:.3f}{decision}", f"map{suffix}, logit units"]
    ticks = [f"-{vmax:.3g}", "0", f"+{vmax:.3g}"]
    scale = max(min(h, w) / 1024.0, 0.35)
    while True:
        font_scale = 0.6 * scale
        thick = max(1, round(1.5 * scale))
        pad = max(1, round(10 * scale))
        bar_w, bar_h = round(220 * scale), max(2, round(14 * scale))
        line_h = cv2.getTextSize("Ag", font, font_scale, thick)[0][1] + pad
        text_w = max(cv2.getTextSize(s, font, font_scale, thick)[0][0] for s in lines)
        box_w = max(text_w, bar_w) + 2 * pad
        box_h = pad + len(lines) * line_h + bar_h + pad + line_h
        if box_w + pad <= w and box_h + pad <= h:
            break
        if scale < 0.15:
            return rgb  # too small an image for a legible legend
        scale *= 0.8
    x0 = max(0, w - box_w - pad)
    y0 = min(pad, max(0, h - box_h))
    x1, y1 = min(w, x0 + box_w), min(h, y0 + box_h)
    # A darkened panel keeps the text readable over bright lung fields.
    rgb[y0:y1, x0:x1] = (rgb[y0:y1, x0:x1].astype(np.float32) * 0.35).astype(np.uint8)
    y = y0 + pad
    for s in lines:
        y += line_h
        cv2.putText(rgb, s, (x0 + pad, y - pad // 2), font, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    bar_y = y + pad // 2
    bar_x = x0 + pad
    ramp = np.linspace(0, 255, max(bar_w, 1)).round().astype(np.intp)
    rgb[bar_y : bar_y + bar_h, bar_x : bar_x + len(ramp)] = DIVERGING_LUT[ramp][None, :, :]
    tick_y = bar_y + bar_h + line_h - pad // 2
    for frac, s in zip((0.0, 0.5, 1.0), ticks):
        tw = cv2.getTextSize(s, font, font_scale, thick)[0][0]
        tx = int(bar_x + frac * (bar_w - 1) - frac * tw)
        cv2.putText(rgb, s, (tx, tick_y), font, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    return rgb


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 RGB image (OpenCV wants BGR)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode the overlay as PNG")
    return buf.tobytes()
