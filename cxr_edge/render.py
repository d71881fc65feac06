"""Overlay images: a diverging saliency map blended over the X-ray, framed by what a reader needs.

``finding_overlay`` draws one finding of a ``Prediction`` in three composable steps:

1. ``colour_scale`` + ``centred_map``: where the colour scale is neutral. By default
   (``center="threshold"``) white is the model's decision threshold, in per-patch logit units:
   the image logit is the mean of the patch logits, so the call is positive exactly when the
   patches' mean exceeds ``t = logit(threshold)``; a patch above ``t`` pushes toward calling
   the finding (red), below it away (blue). ``center="zero"`` is the paper's display (white at
   logit 0, p = 0.5), also used for models without thresholds.
2. ``overlay``: the blend, the exact formula the CUDA overlay kernel reproduces. Centring is
   done by subtracting the centre from the map *before* ``overlay`` (``centred_map``), so the
   formula and the kernel are unchanged; a GPU overlay must be given the centred map.
3. ``frame_overlay``: the image unchanged in the middle of a larger canvas, a banner strip above
   it when the model is not meant for clinical use, and a legend strip below it (model identity,
   finding and call, colour bar with a scale, what the numbers mean, and any extra footer lines,
   e.g. a rationale). Nothing is ever drawn over the X-ray; the output is taller than the input
   by the two strips, whose text scales with the image width.

With ``explain`` (the default) ``finding_image`` / ``finding_overlay`` add what
``cxr_edge.explain`` finds: thin outlines of the call's decisive patches on the blend
(``draw_patch_outlines``: squares of the map's own patch grid, part of the map layer) and, in
the footer strip, the rationale sentence and any shortcut warning (``explanation_lines``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_edge.errors import CxrEdgeError
from cxr_edge.explain.decisive import decisive_patches
from cxr_edge.explain.evidence import decision_logit, decision_map
from cxr_edge.explain.explanations import Explanations, explained
from cxr_edge.prediction import Prediction
from cxr_edge.preprocess import CropBox

#: Outline colour of decisive patches (RGB): amber, outside the blue-white-red scale.
OUTLINE_RGB = (255, 191, 0)

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


#: Where the colour scale is neutral (white): the model's decision threshold or logit 0.
CENTERS: tuple[str, ...] = ("threshold", "zero")


def check_center(center: str, what: str = "center") -> str:
    """``center`` if it is one of ``CENTERS``, else CxrEdgeError naming ``what``."""
    if center not in CENTERS:
        raise CxrEdgeError(None, f"{what} must be one of {', '.join(CENTERS)}, got {center!r}")
    return center


@dataclass(frozen=True)
class ColourScale:
    """What a colour means on one overlay.

    centre_logit: the per-patch logit drawn white (``logit(threshold)`` or 0); reference: what
    that is, in words; vmax > 0: the distance from the centre, in map units, drawn at full
    colour (the scale is symmetric); map_kind: "raw" or "scaled".
    """

    centre_logit: float
    reference: str
    vmax: float
    map_kind: str


def colour_scale(
    prediction: Prediction,
    label: str,
    map_kind: str = "scaled",
    center: str = "threshold",
    vmax: float | None = None,
) -> ColourScale:
    """The scale of one finding's overlay; ``vmax`` defaults to the centred map's largest magnitude."""
    check_center(center)
    f = prediction.finding(label)
    if center == "threshold" and f.threshold is not None:
        centre, reference = decision_logit(prediction, label), f"decision threshold, p = {f.threshold:.3f}"
    elif center == "threshold":
        centre, reference = 0.0, "logit 0, p = 0.5 (the model has no decision threshold)"
    else:
        centre, reference = 0.0, "logit 0, p = 0.5"
    if vmax is None:
        vmax = float(np.max(np.abs(decision_map(prediction, label, map_kind, centre))))
    return ColourScale(centre, reference, float(vmax), map_kind)


def centred_map(prediction: Prediction, label: str, scale: ColourScale) -> np.ndarray:
    """(N, N) float32: the finding's map minus the scale's centre, what ``overlay`` draws
    (``explain.evidence.decision_map`` at the scale's centre)."""
    return decision_map(prediction, label, scale.map_kind, scale.centre_logit)


def clinical_use_banner(prediction: Prediction) -> str | None:
    """The banner text when the model's intended use is not clinical (``cleared_for_clinical_use``)."""
    from cxr_edge.metadata import cleared_for_clinical_use

    md = prediction.metadata
    if cleared_for_clinical_use(md.intended_use):
        return None
    use = " ".join(md.intended_use.split())
    first = use.split(";")[0].split(".")[0].strip()
    return "NOT FOR CLINICAL USE" + (f" - {first}" if first else " - intended use not stated")


def model_identity(prediction: Prediction) -> str:
    """One line naming the model: file name, variant, precision and a short sha256 of the file."""
    m = prediction.model
    path = m.get("path")
    name = Path(str(path)).name if path else prediction.backend
    sha = m.get("sha256") or m.get("checkpoint_sha256")
    digest = f", sha256 {str(sha)[:12]}" if sha else ""
    return f"model: {name} ({m.get('variant', '?')}, {m.get('precision', '?')}{digest})"


def decision_text(prediction: Prediction, label: str) -> str:
    """ "Lung Lesion: p = 0.068, threshold 0.066: POSITIVE" (or without a threshold: no call)."""
    f = prediction.finding(label)
    if f.threshold is None:
        return f"{f.label}: p = {f.probability:.3f} (the model has no threshold: no call)"
    call = "POSITIVE" if f.positive else "negative"
    return f"{f.label}: p = {f.probability:.3f}, threshold {f.threshold:.3f}: {call}"


def legend_lines(prediction: Prediction, label: str, scale: ColourScale) -> tuple[str, str]:
    """The two plain-words lines under the colour bar: colours, then units."""
    colours = f"red: pushes toward calling {label}; blue: away from it; white: neutral ({scale.reference})"
    per = "evidence per patch" if scale.map_kind == "raw" else "evidence per patch x p (scaled map)"
    if scale.centre_logit != 0.0:
        units = f"numbers: {per}, logit minus the threshold's logit {scale.centre_logit:+.2f}; positive when the patches' mean is >= 0"
    else:
        units = f"numbers: {per}, in logits; the image logit is the mean over the patches"
    return colours, units


@dataclass(frozen=True)
class Frame:
    """What the strips around an overlay show (``frame_overlay``).

    banner: text of a red strip above the image (None: no strip); lines: text above the colour
    bar; scale: the colour bar (None: none); notes: text under the bar; footer: extra lines at
    the bottom (e.g. a rationale, decisive-patch notes) added by other display features.
    """

    banner: str | None
    lines: tuple[str, ...]
    scale: ColourScale | None
    notes: tuple[str, ...] = ()
    footer: tuple[str, ...] = ()


def finding_frame(
    prediction: Prediction, label: str, scale: ColourScale, footer: Sequence[str] = ()
) -> Frame:
    """The standard frame of one finding: banner, model identity, the call, bar, legend, footer."""
    return Frame(
        banner=clinical_use_banner(prediction),
        lines=(model_identity(prediction), decision_text(prediction, label)),
        scale=scale,
        notes=legend_lines(prediction, label, scale),
        footer=tuple(footer),
    )


def finding_image(
    prediction: Prediction,
    label: str,
    map_kind: str = "scaled",
    center: str = "threshold",
    vmax: float | None = None,
    alpha_max: float = 0.6,
    explain: bool = True,
    explanations: Explanations | None = None,
) -> tuple[np.ndarray, ColourScale]:
    """The X-ray (h, w, 3) uint8 RGB with the centred map blended in (and, with ``explain``, the
    call's decisive patches outlined), and its scale (no frame). explanations: the prediction's
    ``explain.explanations.explain`` if already computed (its decisive patches are used)."""
    scale = colour_scale(prediction, label, map_kind, center, vmax)
    rgb = overlay(
        prediction.gray, centred_map(prediction, label, scale), prediction.crop, scale.vmax, alpha_max
    )
    if explain:
        if explanations is not None and explanations.prediction is prediction:
            patches = explanations.decisive_of(label).patches
        else:
            patches = decisive_patches(prediction, label).patches
        draw_patch_outlines(rgb, prediction.crop, patches, prediction.metadata.grid)
    return rgb, scale


def finding_overlay(
    prediction: Prediction,
    label: str,
    map_kind: str = "scaled",
    vmax: float | None = None,
    legend: bool = True,
    alpha_max: float = 0.6,
    center: str = "threshold",
    explain: bool = True,
    explanations: Explanations | None = None,
) -> np.ndarray:
    """One finding's overlay: ``finding_image`` framed by ``finding_frame`` (module docstring).

    Red = pushes toward calling the finding, blue = away, white = the decision threshold
    (``center="zero"``: logit 0). ``vmax`` (map units) defaults to the centred map's largest
    magnitude. legend=False: the bare (h, w, 3) blend; else (banner + h + legend, w, 3) uint8 RGB.
    explain: outline the decisive patches and add the rationale and shortcut warnings to the
    footer; explanations: the prediction's ``explain.explanations.explain`` if already computed
    (used when they cover ``label`` from ``map_kind``'s map).
    """
    if explain and legend:  # the footer needs the rationale and warnings too: all at once
        explanations = explained(prediction, [label], map_kind, explanations)
    rgb, scale = finding_image(prediction, label, map_kind, center, vmax, alpha_max, explain, explanations)
    if not legend:
        return rgb
    footer = explanation_lines(prediction, label, map_kind, explanations) if explain else []
    return frame_overlay(rgb, finding_frame(prediction, label, scale, footer))


def explanation_lines(
    prediction: Prediction, label: str, map_kind: str = "scaled", explanations: Explanations | None = None
) -> list[str]:
    """Footer lines of one finding: its rationale sentence (outlines named), then each
    shortcut warning (from ``explanations`` when they cover ``label``)."""
    ex = explained(prediction, [label], map_kind, explanations)
    r = ex.rationales[label]
    text = r.text
    if r.decisive.patches:
        text += " Decisive patches outlined in amber."
    return [text, *(f"Warning: {w.message}" for w in ex.shortcut_warnings([label]))]


def draw_patch_outlines(
    rgb: np.ndarray,
    crop: CropBox,
    patches: Sequence[tuple[int, int]],
    grid: int,
    colour: tuple[int, int, int] = OUTLINE_RGB,
) -> np.ndarray:
    """Outline patches ``(row, col)`` of the model's ``grid`` x ``grid`` patch grid on ``rgb``
    (h, w, 3) uint8 RGB, in place: each patch's square in original pixels (the crop split into
    ``grid`` equal parts, edges rounded half to even), an amber line inside a thin dark one.
    Returns ``rgb``."""
    import cv2

    if not patches:
        return rgb
    edges_y = crop.top + np.rint(np.arange(grid + 1) * crop.side / grid).astype(int)
    edges_x = crop.left + np.rint(np.arange(grid + 1) * crop.side / grid).astype(int)
    thick = max(1, round(crop.side / 512))
    for dark in (True, False):  # all dark lines first, so neighbours' amber lines stay visible
        for row, col in patches:
            top_left = (int(edges_x[col]), int(edges_y[row]))
            bottom_right = (int(edges_x[col + 1]) - 1, int(edges_y[row + 1]) - 1)
            if dark:
                cv2.rectangle(rgb, top_left, bottom_right, (0, 0, 0), thick + 2, cv2.LINE_8)
            else:
                cv2.rectangle(rgb, top_left, bottom_right, colour, thick, cv2.LINE_8)
    return rgb


_WHITE_TEXT = (255, 255, 255)
_PANEL = np.array([24, 24, 24], dtype=np.uint8)
_BANNER = np.array([150, 0, 0], dtype=np.uint8)


def _wrap(text: str, width: int, font: int, font_scale: float, thick: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels."""
    import cv2

    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and cv2.getTextSize(trial, font, font_scale, thick)[0][0] > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines


def _text_block(lines: Sequence[str], width: int, background: np.ndarray, font_scale: float) -> np.ndarray:
    """A (height, width, 3) strip with ``lines`` word-wrapped in white."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    thick = max(1, round(2 * font_scale))
    pad = max(2, round(12 * font_scale))
    text_h = cv2.getTextSize("Ag", font, font_scale, thick)[0][1]
    line_h = text_h + pad
    wrapped = [w for line in lines for w in _wrap(line, width - 2 * pad, font, font_scale, thick)]
    strip = np.empty((pad + len(wrapped) * line_h + pad // 2, width, 3), dtype=np.uint8)
    strip[:] = background
    for i, line in enumerate(wrapped):
        y = pad + i * line_h + text_h
        cv2.putText(strip, line, (pad, y), font, font_scale, _WHITE_TEXT, thick, cv2.LINE_AA)
    return strip


def _colour_bar(scale: ColourScale, width: int, font_scale: float) -> np.ndarray:
    """The colour bar (LUT from -vmax to +vmax) with five ticks, on a dark strip."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    thick = max(1, round(2 * font_scale))
    pad = max(2, round(12 * font_scale))
    text_h = cv2.getTextSize("Ag", font, font_scale, thick)[0][1]
    bar_h = max(4, round(24 * font_scale))
    strip = np.empty((pad + bar_h + pad + text_h + pad, width, 3), dtype=np.uint8)
    strip[:] = _PANEL
    bar_w = width - 2 * pad
    ramp = np.linspace(0, 255, max(bar_w, 1)).round().astype(np.intp)
    strip[pad : pad + bar_h, pad : pad + len(ramp)] = DIVERGING_LUT[ramp][None, :, :]
    v = scale.vmax
    ticks = [
        (0.0, f"{-v:+.3g} away"),
        (0.25, f"{-v / 2:+.3g}"),
        (0.5, "0 = neutral"),
        (0.75, f"{v / 2:+.3g}"),
        (1.0, f"{v:+.3g} toward"),
    ]
    y = pad + bar_h + pad + text_h
    for frac, text in ticks:
        tw = cv2.getTextSize(text, font, font_scale, thick)[0][0]
        x = int(pad + frac * (bar_w - 1) - frac * tw)
        tick_x = int(pad + frac * (bar_w - 1))
        cv2.line(strip, (tick_x, pad + bar_h), (tick_x, pad + bar_h + pad // 2), _WHITE_TEXT, thick)
        cv2.putText(strip, text, (x, y), font, font_scale, _WHITE_TEXT, thick, cv2.LINE_AA)
    return strip


def frame_font_scale(width: int) -> float:
    """OpenCV font scale of the strips: letters about 1/40 of the image width tall, never below
    legibility (0.45, ~10 px) and capped for very wide images."""
    return float(min(max(width / 1100.0, 0.45), 3.0))


def frame_overlay(rgb: np.ndarray, frame: Frame) -> np.ndarray:
    """``rgb`` (h, w, 3) uint8 untouched between a banner strip (above, if any) and a legend
    strip (below): returns (h + strips, max(w, 480), 3) uint8 RGB. Narrow images get a canvas
    at least 480 px wide so the legend stays legible; the image is centred on it."""
    h, w = rgb.shape[:2]
    width = max(w, 480)
    font_scale = frame_font_scale(width)
    parts: list[np.ndarray] = []
    if frame.banner:
        parts.append(_text_block([frame.banner], width, _BANNER, font_scale * 1.15))
    image = np.empty((h, width, 3), dtype=np.uint8)
    image[:] = _PANEL
    left = (width - w) // 2
    image[:, left : left + w] = rgb
    parts.append(image)
    if frame.lines:
        parts.append(_text_block(frame.lines, width, _PANEL, font_scale))
    if frame.scale is not None:
        parts.append(_colour_bar(frame.scale, width, font_scale))
    if frame.notes:
        parts.append(_text_block(frame.notes, width, _PANEL, font_scale * 0.85))
    if frame.footer:
        parts.append(_text_block(frame.footer, width, _PANEL, font_scale))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 RGB image (OpenCV wants BGR)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode the overlay as PNG")
    return buf.tobytes()
