"""Synthetic frontal chest radiographs with planted findings and exact pixel masks.

Deterministic by seed: ``render_phantom(seed)`` always returns the same image, labels and
masks. Anatomy (body outline, lungs with vessel markings, mediastinum, heart, spine, ribs,
clavicles, humeral heads, diaphragm domes), exposure and noise vary per seed; sometimes a
side marker ("L"/"R") or a collimator/border artifact is added, independent of the labels,
so a model that keys on them is a shortcut learner.

Findings (CheXpert names, each planted independently with probability ``prevalence``):
Cardiomegaly (cardiothoracic ratio >= 0.56, normal hearts <= 0.47; the heart's shadow
density follows its depth, so an enlarged heart is also denser), Lung Opacity (patchy
airspace blob), Lung Lesion (round nodule/mass), Pneumothorax (apical-lateral air rim without
lung markings, and the visceral pleural line), Pleural Effusion (dependent fluid with
meniscus), Support Devices (pacemaker/port with lead). Each positive label has a mask of
the pixels it changed; negative labels have an empty mask.

Structure: ``_build_anatomy`` draws the normal chest; Pneumothorax and Cardiomegaly change it
(``_draw_pneumothorax``, ``_draw_cardiomegaly`` return the changed anatomy and a mask); the other
findings are drawn over it (``_draw_lung_opacity`` ... return attenuation and a mask);
``_expose`` turns the attenuation into the 8-bit radiograph. Random streams: anatomy and
exposure draw from ``[seed, 4242]``, finding k of PHANTOM_LABELS from ``[seed, 4242, k + 1]``.
Positions are in normalised chest units (fractions of the centre square's side, origin at
its top-left corner).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from cxr_edge.metadata import CHEXPERT_LABELS

#: The planted findings, in CheXpert order.
PHANTOM_LABELS: tuple[str, ...] = tuple(
    label
    for label in CHEXPERT_LABELS
    if label
    in {"Cardiomegaly", "Lung Opacity", "Lung Lesion", "Pneumothorax", "Pleural Effusion", "Support Devices"}
)

DEFAULT_PREVALENCE = 0.3
#: Cardiothoracic ratio ranges of normal and enlarged hearts.
NORMAL_CTR, ENLARGED_CTR = (0.38, 0.47), (0.56, 0.66)


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph.

    ``image``: ``(h, w) uint8`` (bright = dense, like an "L" X-ray);
    ``labels``: ``{label: 0 | 1}`` for every label in PHANTOM_LABELS;
    ``masks``: ``{label: (h, w) bool}`` ground-truth region, all False for negatives.
    """

    seed: int
    image: np.ndarray
    labels: dict[str, int]
    masks: dict[str, np.ndarray]

    def label_vector(self, labels: tuple[str, ...] = PHANTOM_LABELS) -> np.ndarray:
        """``(len(labels),) float32`` 0/1 targets in the order of ``labels``."""
        return np.array([self.labels.get(name, 0) for name in labels], dtype=np.float32)


def _blur(layer: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0.3:
        return layer
    return cv2.GaussianBlur(layer, (0, 0), sigma_px)


def _lowpass_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Smooth noise, ``(h, w) float32`` with unit standard deviation."""
    noise = _blur(rng.standard_normal(shape).astype(np.float32), sigma_px)
    return np.asarray(noise / (noise.std() + 1e-6), dtype=np.float32)


class _Canvas:
    """Normalised chest coordinates: X, Y in [0, 1] over the centre square of side s."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.s = min(h, w)
        self.oy, self.ox = (h - self.s) / 2, (w - self.s) / 2
        ys = (np.arange(h, dtype=np.float32) - self.oy + 0.5) / self.s
        xs = (np.arange(w, dtype=np.float32) - self.ox + 0.5) / self.s
        self.Y, self.X = np.meshgrid(ys, xs, indexing="ij")

    def px(self, x: float, y: float) -> tuple[int, int]:
        """Normalised (x, y) -> integer pixel (col, row) for OpenCV drawing."""
        return int(np.rint(x * self.s + self.ox)), int(np.rint(y * self.s + self.oy))

    def layer(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.float32)

    def polyline(self, pts: np.ndarray, thickness: float) -> np.ndarray:
        """Draw normalised points ``(n, 2)`` [x, y] as an antialiased line, ``(h, w) float32`` in [0, 1]."""
        img = np.zeros((self.h, self.w), np.uint8)
        shift = 4
        p = np.stack([pts[:, 0] * self.s + self.ox, pts[:, 1] * self.s + self.oy], axis=1)
        p = np.round(p * (1 << shift)).astype(np.int32)
        cv2.polylines(img, [p], False, 255, max(1, int(np.rint(thickness * self.s))), cv2.LINE_AA, shift)
        return img.astype(np.float32) / 255.0


def _smoothstep(edge: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``edge < 0`` with a transition of ``width`` (normalised units)."""
    return np.clip(0.5 - edge / width, 0.0, 1.0)


@dataclass(frozen=True)
class _Geometry:
    """Where the chest lies, in normalised chest units (fractions of the centre square's side).

    ``cx``: midline; ``lung_dx``: lung centre distance from the midline; ``lung_ax``: lung
    half-width; ``lung_top``: apex height; ``dome_y``: diaphragm dome height by side (-1 = image
    left = patient right, the higher dome); ``body_hw``: half-width of the torso.
    """

    cx: float
    lung_dx: float
    lung_ax: float
    lung_top: float
    dome_y: dict[int, float]
    body_hw: float


@dataclass(frozen=True)
class _Lung:
    """One lung. Positions in normalised chest units; ``soft`` and ``mask`` are ``(h, w)``.

    ``centre_x``, ``centre_y``: centre of the lung's superellipse; ``half_width``: its lateral
    half-width; ``half_height``: half its height; ``soft``: float64 0..1 soft inside indicator;
    ``dome``: float32, normalised y of the diaphragm dome below each column; ``mask``: bool,
    ``soft > 0.5``.
    """

    centre_x: float
    centre_y: float
    half_width: float
    half_height: float
    soft: np.ndarray
    dome: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class _Heart:
    """The cardiac shadow: ``shadow`` ``(h, w) float32`` 0..1, ``depth`` ``(h, w) float64`` relative
    path length (about 1 at the centre of a normal heart), centre ``(centre_x, centre_y)`` normalised."""

    shadow: np.ndarray
    depth: np.ndarray
    centre_x: float
    centre_y: float


@dataclass(frozen=True)
class _Anatomy:
    """The normal chest of one phantom, before any finding is drawn over it.

    Layers are ``(h, w)`` float32 (``lung_union``, ``mediastinum``, ``abdomen``: float64; the
    dtypes only matter for bit-identical pixels): ``lung_union`` (both lungs' soft
    union), ``vessels`` and ``texture`` (lung markings), ``air_rim`` and ``pleural_line``
    (pneumothorax; zero without one), all 0..1 except ``texture`` (unit standard deviation); and
    attenuation terms in the phantom's relative attenuation units, summed in this order by
    :func:`_chest_attenuation`: ``soft_tissue`` (body and arms), ``mediastinum``, ``spine``, the
    heart's (from ``heart``), ``abdomen``, minus ``gastric_bubble`` (None when absent), ``bones``.
    ``heart_height``: the random part of the heart's half-height (normalised units).
    """

    geometry: _Geometry
    lungs: dict[int, _Lung]
    lung_union: np.ndarray
    vessels: np.ndarray
    texture: np.ndarray
    air_rim: np.ndarray
    pleural_line: np.ndarray
    soft_tissue: np.ndarray
    mediastinum: np.ndarray
    spine: np.ndarray
    heart_height: float
    heart: _Heart
    abdomen: np.ndarray
    gastric_bubble: np.ndarray | None
    bones: np.ndarray


def _draw_lungs(cv: _Canvas, geo: _Geometry) -> tuple[dict[int, _Lung], np.ndarray]:
    """Both lung fields (no random draws): per side a :class:`_Lung`, and their soft union."""
    X, Y = cv.X, cv.Y
    cx, lung_dx, lung_ax, lung_top, dome_y = geo.cx, geo.lung_dx, geo.lung_ax, geo.lung_top, geo.dome_y
    union = cv.layer()
    lungs: dict[int, _Lung] = {}
    for side in (-1, +1):
        lcx = cx + side * lung_dx
        lat = (X - lcx) * side  # > 0 lateral
        ax = np.where(lat > 0, lung_ax, lung_ax * 0.85)
        lcy = (lung_top + dome_y[side]) / 2 + 0.04
        ay = (dome_y[side] + 0.08 - lung_top) / 2 + 0.04
        ell = np.abs((X - lcx) / ax) ** 2.2 + np.abs((Y - lcy) / ay) ** 2.0 - 1.0
        dome = dome_y[side] - 0.10 * ((X - (lcx - side * 0.02)) / lung_ax) ** 2  # dome peaks mid-lung
        inside = np.maximum(ell * 0.15, Y - dome)
        soft = _smoothstep(inside, 0.008)
        lungs[side] = _Lung(lcx, lcy, lung_ax, ay, soft, dome, soft > 0.5)
        union = np.maximum(union, soft)
    return lungs, union


def _draw_vessels(cv: _Canvas, geo: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Vessel markings: 18..27 branching lines from each hilum, ``(h, w) float32`` 0..1 (blurred)."""
    vessels = cv.layer()
    for side in (-1, +1):
        hx, hy = geo.cx + side * 0.08, 0.42 + rng.normal(0, 0.01)
        for _ in range(int(rng.integers(18, 28))):
            ang = rng.uniform(-0.6 * np.pi, 0.75 * np.pi)
            length = rng.uniform(0.10, 0.22)
            t = np.linspace(0, 1, 12)
            bend = rng.normal(0, 0.04)
            dx = side * np.cos(ang * 0.6) * length * t
            dy = -np.sin(ang) * length * t * 0.8 + bend * t**2
            pts = np.stack([hx + dx, hy + dy], 1)
            vessels = np.maximum(vessels, cv.polyline(pts, rng.uniform(0.003, 0.007)) * rng.uniform(0.5, 1))
    return _blur(vessels, 0.002 * cv.s)


def _draw_heart(cv: _Canvas, geo: _Geometry, heart_height: float, ctr: float) -> _Heart:
    """The cardiac shadow for cardiothoracic ratio ``ctr`` (no random draws)."""
    X, Y = cv.X, cv.Y
    dome_y = geo.dome_y
    thoracic_width = 2 * (geo.lung_dx + geo.lung_ax)
    heart_w = ctr * thoracic_width
    hcx = geo.cx + 0.2 * heart_w - 0.5 * heart_w + heart_w * 0.55 - 0.02  # bulges to image right
    hcy = min(dome_y[-1], dome_y[+1]) - 0.06
    hax, hay = heart_w / 2, heart_height + 0.3 * (heart_w / 2 - 0.13)
    heart_edge = np.hypot((X - hcx) / hax, (Y - hcy) / hay) - 1.0
    heart = _smoothstep(heart_edge * min(hax, hay), 0.01) * (Y < max(dome_y.values()) + 0.02)
    heart = np.maximum(heart, 0)
    # X-ray attenuation follows the path length through the heart: an ellipsoid's projected
    # depth falls off as sqrt(1 - rho^2) from its centre, and its depth grows with its width,
    # so an enlarged heart is also a denser shadow (normal hearts scale about 1 +- 0.1).
    rho2 = np.clip((heart_edge + 1.0) ** 2, 0.0, 1.0)
    depth = (ctr / np.mean(NORMAL_CTR)) * (0.5 + 0.5 * np.sqrt(1.0 - rho2))
    return _Heart(heart, depth, hcx, hcy)


def _draw_bones(cv: _Canvas, geo: _Geometry) -> np.ndarray:
    """Ribs (posterior, and fainter anterior), clavicles, humeral heads: ``(h, w) float32`` (no draws)."""
    X, Y = cv.X, cv.Y
    cx, lung_dx, lung_ax, lung_top, dome_y = geo.cx, geo.lung_dx, geo.lung_ax, geo.lung_top, geo.dome_y
    bones = cv.layer()
    n_ribs = 10
    for side in (-1, +1):
        for i in range(n_ribs):
            y0 = lung_top - 0.03 + i * (dome_y[side] - lung_top + 0.02) / n_ribs
            t = np.linspace(0, 1, 24)
            xs = cx + side * (0.03 + (lung_dx + lung_ax + 0.02) * t)
            ys = y0 - 0.035 * np.sin(np.pi * t * 0.8) + 0.10 * t**2.2
            rib = cv.polyline(np.stack([xs, ys], 1), 0.016)
            # anterior ribs: fainter, descending medially from the lateral end
            xa = cx + side * (0.05 + (lung_dx + lung_ax) * t)
            ya = ys[-1] - 0.02 - 0.09 * (1 - t) ** 1.5 + 0.02
            ant = cv.polyline(np.stack([xa, ya + 0.0 * t], 1), 0.012)
            bones = np.maximum(bones, np.maximum(rib, 0.45 * ant))
        clav_t = np.linspace(0, 1, 20)
        clav_x = cx + side * (0.035 + 0.28 * clav_t)
        clav_y = lung_top + 0.02 - 0.06 * clav_t + 0.015 * np.sin(np.pi * clav_t * 2)
        bones = np.maximum(bones, 1.4 * cv.polyline(np.stack([clav_x, clav_y], 1), 0.022))
        head = _smoothstep(np.hypot(X - (cx + side * (geo.body_hw + 0.04)), Y - 0.12) - 0.055, 0.008)
        bones = np.maximum(bones, 1.2 * head)
    return _blur(bones, 0.0025 * cv.s)


def _build_anatomy(cv: _Canvas, rng: np.random.Generator) -> _Anatomy:
    """The normal chest, with every anatomy draw from ``rng`` before the exposure, in a fixed order.

    Geometry, arms, vessels, lung texture, the heart's normal cardiothoracic ratio and height,
    the gastric bubble. The heart is always drawn normal; :func:`_draw_cardiomegaly` enlarges it
    from its own stream, so the anatomy stream never depends on the labels.
    """
    X, Y = cv.X, cv.Y
    # --- geometry ------------------------------------------------------------------------
    cx = 0.5 + rng.normal(0, 0.012)
    lung_dx = rng.uniform(0.17, 0.20)  # lung centre distance from midline
    lung_ax = rng.uniform(0.13, 0.15)  # lung half-width
    lung_top = rng.uniform(0.12, 0.17)
    dome_y = {-1: rng.uniform(0.66, 0.72), +1: 0.0}  # image-left = patient right, higher dome
    dome_y[+1] = dome_y[-1] + rng.uniform(0.01, 0.04)
    body_hw = rng.uniform(0.42, 0.48)
    geo = _Geometry(cx, lung_dx, lung_ax, lung_top, dome_y, body_hw)

    # --- body: neck, shoulders, torso, abdomen --------------------------------------------
    shoulder = np.clip((Y - 0.02) / 0.14, 0, 1) ** 0.6
    half_width = 0.11 + (body_hw - 0.11) * shoulder
    body = _smoothstep(np.abs(X - cx) - half_width, 0.02) * (Y > -0.2)
    soft_tissue = 0.42 * body
    soft_tissue += 0.06 * body * np.clip(1 - np.abs(X - cx) / half_width, 0, 1)  # thicker in the middle
    arm = _smoothstep(np.abs(np.abs(X - cx) - (body_hw + 0.06)) - 0.05, 0.02) * (Y < 0.55)
    soft_tissue += 0.30 * arm * rng.uniform(0.0, 1.0)

    # --- lungs and their markings ---------------------------------------------------------
    lungs, lung_union = _draw_lungs(cv, geo)
    vessels = _draw_vessels(cv, geo, rng)
    texture = _lowpass_noise(rng, (cv.h, cv.w), 0.012 * cv.s)

    # --- mediastinum, aortic knob, spine ---------------------------------------------------
    med_hw = 0.045 + 0.03 * np.clip((Y - 0.2) / 0.4, 0, 1)
    mediastinum = _smoothstep(np.abs(X - cx - 0.005) - med_hw, 0.015) * (Y < 0.75)
    knob = _smoothstep(np.hypot(X - (cx + 0.055), (Y - 0.30) * 1.2) - 0.03, 0.01)
    spine = _smoothstep(np.abs(X - cx) - 0.03, 0.008)
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (Y / 0.04))

    # --- heart ---------------------------------------------------------------------------
    normal_ctr = rng.uniform(*NORMAL_CTR)
    heart_height = rng.uniform(0.10, 0.13)

    # --- below the diaphragm: liver / stomach --------------------------------------------
    # float64 like the summed attenuation (the lung fields are float64): the blur runs in float64
    below = np.zeros((cv.h, cv.w), np.float64)
    for side in (-1, +1):
        near = np.abs(X - lungs[side].centre_x) < lung_ax * 1.3
        below = np.maximum(below, (near & (Y > lungs[side].dome)).astype(np.float32))
    below = _blur(below, 0.004 * cv.s) * body
    gastric_bubble = None
    if rng.random() < 0.6:
        bx, by = lungs[+1].centre_x + rng.normal(0, 0.02), dome_y[+1] + 0.05
        bubble = _smoothstep(np.hypot((X - bx) / 1.6, Y - by) - 0.025, 0.01) * (Y > dome_y[+1] + 0.02)
        gastric_bubble = 0.12 * bubble

    return _Anatomy(
        geometry=geo,
        lungs=lungs,
        lung_union=lung_union,
        vessels=vessels,
        texture=texture,
        air_rim=cv.layer(),
        pleural_line=cv.layer(),
        soft_tissue=soft_tissue,
        mediastinum=0.22 * np.maximum(mediastinum, knob) * np.maximum(lung_union, mediastinum),
        spine=spine * (0.07 + 0.03 * vert),
        heart_height=heart_height,
        heart=_draw_heart(cv, geo, heart_height, normal_ctr),
        abdomen=0.08 * below,
        gastric_bubble=gastric_bubble,
        bones=0.09 * _draw_bones(cv, geo) * body,
    )


def _chest_attenuation(anatomy: _Anatomy) -> np.ndarray:
    """Sum the anatomy's layers into ``(h, w) float64`` attenuation, in a fixed order (the order
    and dtypes fix the pixels bit for bit)."""
    a = anatomy
    markings = (0.10 * a.vessels + 0.025 * a.texture) * a.lung_union * (1 - a.air_rim)
    atten: np.ndarray = (
        a.soft_tissue - 0.28 * a.lung_union + markings - 0.13 * a.air_rim + 0.22 * a.pleural_line
    )
    atten += a.mediastinum
    atten += a.spine
    atten += 0.36 * a.heart.depth * a.heart.shadow * np.maximum(a.lung_union, 0.35)
    atten += a.abdomen
    if a.gastric_bubble is not None:
        atten -= a.gastric_bubble
    atten += a.bones
    return atten


# --- findings that change the anatomy: return the changed anatomy and the finding's mask ----


def _draw_pneumothorax(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[_Anatomy, np.ndarray]:
    """Apical-lateral air rim without lung markings, and the visceral pleural line.

    The collapsed lung is the same lung shrunk towards the hilum by 8..14 % (normalised units);
    the mask is the rim plus the pleural line (``(h, w) bool``).
    """
    X, Y = cv.X, cv.Y
    side = int(rng.choice([-1, 1]))
    ls = anatomy.lungs[side]
    frac = rng.uniform(0.08, 0.14)
    # the collapsed lung: the same lung shrunk towards the hilum (medial, lower), so the
    # air rim is widest at the apex and tapers out along the lateral wall
    ccx, ccy = ls.centre_x - side * ls.half_width * frac, ls.centre_y + ls.half_height * frac
    ax_c, ay_c = ls.half_width * (1 - frac), ls.half_height * (1 - frac)
    collapsed = (np.abs((X - ccx) / ax_c) ** 2.2 + np.abs((Y - ccy) / ay_c) ** 2.0) < 1.0
    rim = ls.mask & ~collapsed & (Y < ls.centre_y + 0.12)
    # keep only the main apical/lateral crescent
    n, comp, stats, _ = cv2.connectedComponentsWithStats(rim.astype(np.uint8), connectivity=8)
    if n > 1:
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        rim = comp == big
    air_rim = _blur(rim.astype(np.float32), 0.002 * cv.s)
    edge = cv2.morphologyEx(collapsed.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    pleural_line = _blur((edge > 0).astype(np.float32) * ls.mask * (Y < ls.centre_y + 0.12), 0.7)
    # the visceral pleural line is drawn by this finding too, so it belongs to its mask
    mask = rim | (pleural_line > 0.25)
    return replace(anatomy, air_rim=air_rim, pleural_line=pleural_line), mask


def _draw_cardiomegaly(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[_Anatomy, np.ndarray]:
    """An enlarged heart: cardiothoracic ratio drawn from ENLARGED_CTR; mask = shadow > 0.5."""
    heart = _draw_heart(cv, anatomy.geometry, anatomy.heart_height, rng.uniform(*ENLARGED_CTR))
    return replace(anatomy, heart=heart), heart.shadow > 0.5


# --- findings drawn over the anatomy: return (attenuation added, mask) ----------------------


def _random_lung_point(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator, side: int, y_lo: float, y_hi: float
) -> tuple[float, float]:
    """A normalised (x, y) inside lung ``side``, off the heart, with y in [y_lo, y_hi)."""
    ls = anatomy.lungs[side]
    for _ in range(200):
        px_ = ls.centre_x + rng.uniform(-0.75, 0.75) * ls.half_width
        py_ = rng.uniform(y_lo, y_hi)
        c, r = cv.px(px_, py_)
        if 0 <= r < cv.h and 0 <= c < cv.w and ls.mask[r, c] and not anatomy.heart.shadow[r, c] > 0.3:
            return px_, py_
    return ls.centre_x, (y_lo + y_hi) / 2


def _draw_lung_opacity(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Patchy airspace opacity: 3..5 Gaussian blobs (sigma 0.025..0.045 normalised) in the mid zones."""
    X, Y = cv.X, cv.Y
    side = int(rng.choice([-1, 1]))
    ox, oy = _random_lung_point(cv, anatomy, rng, side, 0.35, 0.62)
    blob = cv.layer()
    for _ in range(int(rng.integers(3, 6))):
        bx, by = ox + rng.normal(0, 0.025), oy + rng.normal(0, 0.025)
        sig = rng.uniform(0.025, 0.045)
        blob += np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * sig**2))
    blob = np.clip(blob / blob.max(), 0, 1) * np.clip(0.8 + 0.3 * anatomy.texture, 0, 1.2)
    region = (blob > 0.35) & anatomy.lungs[side].mask
    atten = rng.uniform(0.55, 0.65) * np.clip(blob, 0, 1) * anatomy.lungs[side].soft * (region | (blob > 0.2))
    return atten, region


def _draw_lung_lesion(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Round, slightly lobulated nodule or mass, radius 0.024..0.042 normalised."""
    X, Y = cv.X, cv.Y
    side = int(rng.choice([-1, 1]))
    nx, ny = _random_lung_point(cv, anatomy, rng, side, 0.22, 0.60)
    radius = rng.uniform(0.024, 0.042)
    polar = np.arctan2(Y - ny, X - nx)
    lobulation = 1 + 0.12 * np.sin(3 * polar + rng.uniform(0, 6)) * rng.random()
    dist = np.hypot(X - nx, Y - ny) / lobulation
    disc = _smoothstep(dist - radius, 0.004)
    mask = disc > 0.5
    return rng.uniform(0.62, 0.75) * disc, mask


def _draw_pleural_effusion(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Dependent fluid in one lung, its level 0.08..0.18 above the dome, meniscus climbing laterally."""
    X, Y = cv.X, cv.Y
    side = int(rng.choice([-1, 1]))
    ls = anatomy.lungs[side]
    level = anatomy.geometry.dome_y[side] - rng.uniform(0.08, 0.18)
    lateral = np.clip((X - ls.centre_x) * side / ls.half_width + 1.0, 0, 2) / 2  # 0 medial .. 1 lateral
    surface = level - rng.uniform(0.03, 0.07) * lateral**2  # meniscus climbs laterally
    fluid = ls.mask & (Y > surface)
    grade = np.clip((Y - surface) / 0.03, 0, 1)
    atten = rng.uniform(0.55, 0.65) * _blur(fluid.astype(np.float32), 0.003 * cv.s) * (0.6 + 0.4 * grade)
    return atten, fluid


def _draw_support_devices(
    cv: _Canvas, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A pacemaker generator (rounded rectangle) or port (round reservoir) with 1..2 leads to the heart.

    The mask is the device (``> 0.3``) dilated by 2 pixels.
    """
    X, Y = cv.X, cv.Y
    cx, lung_top = anatomy.geometry.cx, anatomy.geometry.lung_top
    hcx, hcy = anatomy.heart.centre_x, anatomy.heart.centre_y
    dev = cv.layer()
    side = int(rng.choice([-1, 1], p=[0.3, 0.7]))
    gx, gy = cx + side * rng.uniform(0.18, 0.28), lung_top + rng.uniform(0.02, 0.08)
    if rng.random() < 0.6:  # pacemaker generator: rounded rectangle
        gw, gh = rng.uniform(0.035, 0.05), rng.uniform(0.025, 0.035)
        gen = _smoothstep(np.maximum(np.abs(X - gx) / gw, np.abs(Y - gy) / gh) - 1.0, 0.05)
    else:  # port: round reservoir
        gen = _smoothstep(np.hypot(X - gx, Y - gy) - rng.uniform(0.02, 0.03), 0.004)
    dev = np.maximum(dev, gen)
    for _ in range(int(rng.integers(1, 3))):
        t = np.linspace(0, 1, 30)
        tx, ty = hcx + rng.normal(0, 0.03), hcy + rng.normal(0, 0.03)
        mx, my = (gx + tx) / 2 + rng.normal(0, 0.04), (gy + ty) / 2 - 0.05
        lx = (1 - t) ** 2 * gx + 2 * (1 - t) * t * mx + t**2 * tx
        ly = (1 - t) ** 2 * gy + 2 * (1 - t) * t * my + t**2 * ty
        dev = np.maximum(dev, cv.polyline(np.stack([lx, ly], 1), 0.005))
    dev_mask = dev > 0.3
    mask = cv2.dilate(dev_mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return 0.6 * dev, mask


#: Findings drawn over the anatomy, in the order their attenuation is added.
_OVERLAID_FINDINGS = (
    ("Lung Opacity", _draw_lung_opacity),
    ("Lung Lesion", _draw_lung_lesion),
    ("Pleural Effusion", _draw_pleural_effusion),
    ("Support Devices", _draw_support_devices),
)


# --- exposure, detector and noise ---------------------------------------------------------


def _expose(cv: _Canvas, atten: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Attenuation -> ``(h, w) uint8`` radiograph: exposure, saturation, noise, vignette, and
    sometimes (25 %) a collimator/detector border and (40 %) an "L"/"R" side marker."""
    X, Y = cv.X, cv.Y
    h, w = cv.h, cv.w
    atten = _blur(atten, 0.0012 * cv.s)
    gain = rng.uniform(0.85, 1.15)
    offset = rng.uniform(-0.06, 0.06)
    img = np.clip(atten * gain + offset + 0.1, 0, None)
    img = 1.0 - np.exp(-2.2 * img)  # soft saturation of dense regions
    img = img / max(float(np.percentile(img, 99.5)), 1e-3) * rng.uniform(0.82, 0.95)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    img += rng.normal(0, rng.uniform(0.008, 0.025), (h, w)).astype(np.float32)
    img += 0.015 * _lowpass_noise(rng, (h, w), 0.05 * cv.s)
    vignette = 1 - 0.12 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2)
    img = img * vignette

    if rng.random() < 0.25:  # collimator edge / detector border artifact
        edge_w = int(rng.integers(max(2, h // 100), max(3, h // 25)))
        where = rng.integers(0, 4)
        level = rng.choice([0.0, 0.95])
        if where == 0:
            img[:edge_w, :] = level
        elif where == 1:
            img[-edge_w:, :] = level
        elif where == 2:
            img[:, :edge_w] = level
        else:
            img[:, -edge_w:] = level
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:  # side marker, as radiographers place them
        letter = str(rng.choice(["L", "R"]))
        scale = cv.s / 400
        x0 = int(cv.ox + cv.s * (0.05 if rng.random() < 0.5 else 0.85))
        y0 = int(cv.oy + cv.s * rng.uniform(0.06, 0.14))
        cv2.putText(
            image,
            letter,
            (x0, y0),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.3 * scale,
            245,
            max(1, int(3 * scale)),
            cv2.LINE_AA,
        )
    return image


def render_phantom(
    seed: int,
    size: int = 512,
    vary_shape: bool = False,
    prevalence: float = DEFAULT_PREVALENCE,
    findings: dict[str, int] | None = None,
) -> Phantom:
    """Render phantom ``seed`` with height ``size`` px.

    ``vary_shape``: width = size * U(0.85, 1.2) (non-square, like real detectors); otherwise square.
    The chest is drawn in the centre square, so the reference's centre crop keeps every finding.
    ``findings``: force labels on/off (others keep their random draw). Each finding draws from its
    own random stream, so forcing one changes only that finding's pixels (plus the global
    exposure normalisation).
    """
    rng = np.random.default_rng([seed, 4242])  # the anatomy and exposure stream
    h = int(size)
    w = int(np.rint(size * rng.uniform(0.85, 1.2))) if vary_shape else h
    cv = _Canvas(h, w)
    labels = {name: int(rng.random() < prevalence) for name in PHANTOM_LABELS}
    labels.update({k: int(bool(v)) for k, v in (findings or {}).items() if k in labels})
    finding_rng = {name: np.random.default_rng([seed, 4242, k + 1]) for k, name in enumerate(PHANTOM_LABELS)}
    masks = {name: np.zeros((h, w), bool) for name in PHANTOM_LABELS}

    anatomy = _build_anatomy(cv, rng)
    if labels["Pneumothorax"]:
        anatomy, masks["Pneumothorax"] = _draw_pneumothorax(cv, anatomy, finding_rng["Pneumothorax"])
    if labels["Cardiomegaly"]:
        anatomy, masks["Cardiomegaly"] = _draw_cardiomegaly(cv, anatomy, finding_rng["Cardiomegaly"])
    atten = _chest_attenuation(anatomy)
    for name, draw in _OVERLAID_FINDINGS:
        if labels[name]:
            finding_atten, masks[name] = draw(cv, anatomy, finding_rng[name])
            atten += finding_atten
    return Phantom(seed=int(seed), image=_expose(cv, atten, rng), labels=labels, masks=masks)


def render_batch(seeds: range | list[int], size: int = 512, vary_shape: bool = False) -> list[Phantom]:
    """``render_phantom`` for each seed (convenience for datasets and tests)."""
    return [render_phantom(s, size=size, vary_shape=vary_shape) for s in seeds]
