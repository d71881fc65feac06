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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    rng = anatomy_rng = np.random.default_rng([seed, 4242])
    h = int(size)
    w = int(np.rint(size * rng.uniform(0.85, 1.2))) if vary_shape else h
    cv = _Canvas(h, w)
    X, Y = cv.X, cv.Y
    labels = {name: int(rng.random() < prevalence) for name in PHANTOM_LABELS}
    labels.update({k: int(bool(v)) for k, v in (findings or {}).items() if k in labels})
    finding_rng = {name: np.random.default_rng([seed, 4242, k + 1]) for k, name in enumerate(PHANTOM_LABELS)}
    masks = {name: np.zeros((h, w), bool) for name in PHANTOM_LABELS}

    # --- geometry ------------------------------------------------------------------------
    cx = 0.5 + rng.normal(0, 0.012)
    lung_dx = rng.uniform(0.17, 0.20)  # lung centre distance from midline
    lung_ax = rng.uniform(0.13, 0.15)  # lung half-width
    lung_top = rng.uniform(0.12, 0.17)
    dome_y = {-1: rng.uniform(0.66, 0.72), +1: 0.0}  # image-left = patient right, higher dome
    dome_y[+1] = dome_y[-1] + rng.uniform(0.01, 0.04)
    body_hw = rng.uniform(0.42, 0.48)

    # --- body: neck, shoulders, torso, abdomen --------------------------------------------
    shoulder = np.clip((Y - 0.02) / 0.14, 0, 1) ** 0.6
    half_width = 0.11 + (body_hw - 0.11) * shoulder
    body = _smoothstep(np.abs(X - cx) - half_width, 0.02) * (Y > -0.2)
    atten = 0.42 * body
    atten += 0.06 * body * np.clip(1 - np.abs(X - cx) / half_width, 0, 1)  # thicker in the middle
    arm = _smoothstep(np.abs(np.abs(X - cx) - (body_hw + 0.06)) - 0.05, 0.02) * (Y < 0.55)
    atten += 0.30 * arm * rng.uniform(0.0, 1.0)

    # --- lungs ----------------------------------------------------------------------------
    lungs = cv.layer()
    lung_side: dict[int, dict[str, Any]] = {}
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
        lung_side[side] = {"lcx": lcx, "lcy": lcy, "ax": lung_ax, "ay": ay, "soft": soft, "dome": dome}
        lungs = np.maximum(lungs, soft)
    lung_mask = {side: lung_side[side]["soft"] > 0.5 for side in (-1, +1)}

    # vessel markings: branching lines from each hilum, denser and thicker centrally
    vessels = cv.layer()
    for side in (-1, +1):
        hx, hy = cx + side * 0.08, 0.42 + rng.normal(0, 0.01)
        for _ in range(int(rng.integers(18, 28))):
            ang = rng.uniform(-0.6 * np.pi, 0.75 * np.pi)
            length = rng.uniform(0.10, 0.22)
            t = np.linspace(0, 1, 12)
            bend = rng.normal(0, 0.04)
            dx = side * np.cos(ang * 0.6) * length * t
            dy = -np.sin(ang) * length * t * 0.8 + bend * t**2
            pts = np.stack([hx + dx, hy + dy], 1)
            vessels = np.maximum(vessels, cv.polyline(pts, rng.uniform(0.003, 0.007)) * rng.uniform(0.5, 1))
    vessels = _blur(vessels, 0.002 * cv.s)
    texture = _lowpass_noise(rng, (h, w), 0.012 * cv.s)

    # --- pneumothorax changes the lung before anything is drawn over it --------------------
    air_rim = cv.layer()
    pleural_line = cv.layer()
    if labels["Pneumothorax"]:
        rng_f = finding_rng["Pneumothorax"]
        side = int(rng_f.choice([-1, 1]))
        ls = lung_side[side]
        frac = rng_f.uniform(0.08, 0.14)
        # the collapsed lung: the same lung shrunk towards the hilum (medial, lower), so the
        # air rim is widest at the apex and tapers out along the lateral wall
        ccx, ccy = ls["lcx"] - side * ls["ax"] * frac, ls["lcy"] + ls["ay"] * frac
        ax_c, ay_c = ls["ax"] * (1 - frac), ls["ay"] * (1 - frac)
        collapsed = (np.abs((X - ccx) / ax_c) ** 2.2 + np.abs((Y - ccy) / ay_c) ** 2.0) < 1.0
        rim = lung_mask[side] & ~collapsed & (Y < ls["lcy"] + 0.12)
        # keep only the main apical/lateral crescent
        n, comp, stats, _ = cv2.connectedComponentsWithStats(rim.astype(np.uint8), connectivity=8)
        if n > 1:
            big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            rim = comp == big
        air_rim = _blur(rim.astype(np.float32), 0.002 * cv.s)
        edge = cv2.morphologyEx(collapsed.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        pleural_line = _blur((edge > 0).astype(np.float32) * lung_mask[side] * (Y < ls["lcy"] + 0.12), 0.7)
        # the visceral pleural line is drawn by this finding too, so it belongs to its mask
        masks["Pneumothorax"] = rim | (pleural_line > 0.25)

    markings = (0.10 * vessels + 0.025 * texture) * lungs * (1 - air_rim)
    atten = atten - 0.28 * lungs + markings - 0.13 * air_rim + 0.22 * pleural_line

    # --- mediastinum, aortic knob, spine ---------------------------------------------------
    med_hw = 0.045 + 0.03 * np.clip((Y - 0.2) / 0.4, 0, 1)
    mediastinum = _smoothstep(np.abs(X - cx - 0.005) - med_hw, 0.015) * (Y < 0.75)
    knob = _smoothstep(np.hypot(X - (cx + 0.055), (Y - 0.30) * 1.2) - 0.03, 0.01)
    atten += 0.22 * np.maximum(mediastinum, knob) * np.maximum(lungs, mediastinum)
    spine = _smoothstep(np.abs(X - cx) - 0.03, 0.008)
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (Y / 0.04))
    atten += spine * (0.07 + 0.03 * vert)

    # --- heart ---------------------------------------------------------------------------
    thoracic_width = 2 * (lung_dx + lung_ax)
    ctr = rng.uniform(*NORMAL_CTR)  # drawn always so the anatomy stream does not depend on the label
    if labels["Cardiomegaly"]:
        ctr = finding_rng["Cardiomegaly"].uniform(*ENLARGED_CTR)
    heart_w = ctr * thoracic_width
    hcx = cx + 0.2 * heart_w - 0.5 * heart_w + heart_w * 0.55 - 0.02  # bulges to image right
    hcy = min(dome_y[-1], dome_y[+1]) - 0.06
    hax, hay = heart_w / 2, rng.uniform(0.10, 0.13) + 0.3 * (heart_w / 2 - 0.13)
    heart_edge = np.hypot((X - hcx) / hax, (Y - hcy) / hay) - 1.0
    heart = _smoothstep(heart_edge * min(hax, hay), 0.01) * (Y < max(dome_y.values()) + 0.02)
    heart = np.maximum(heart, 0)
    # X-ray attenuation follows the path length through the heart: an ellipsoid's projected
    # depth falls off as sqrt(1 - rho^2) from its centre, and its depth grows with its width,
    # so an enlarged heart is also a denser shadow (normal hearts scale about 1 +- 0.1).
    rho2 = np.clip((heart_edge + 1.0) ** 2, 0.0, 1.0)
    depth = (ctr / np.mean(NORMAL_CTR)) * (0.5 + 0.5 * np.sqrt(1.0 - rho2))
    atten += 0.36 * depth * heart * np.maximum(lungs, 0.35)
    if labels["Cardiomegaly"]:
        masks["Cardiomegaly"] = heart > 0.5

    # --- below the diaphragm: liver / stomach --------------------------------------------
    below = np.zeros_like(atten)
    for side in (-1, +1):
        near = np.abs(X - lung_side[side]["lcx"]) < lung_ax * 1.3
        below = np.maximum(below, (near & (Y > lung_side[side]["dome"])).astype(np.float32))
    below = _blur(below, 0.004 * cv.s) * body
    atten += 0.08 * below
    if rng.random() < 0.6:
        bx, by = lung_side[+1]["lcx"] + rng.normal(0, 0.02), dome_y[+1] + 0.05
        bubble = _smoothstep(np.hypot((X - bx) / 1.6, Y - by) - 0.025, 0.01) * (Y > dome_y[+1] + 0.02)
        atten -= 0.12 * bubble

    # --- bones: ribs, clavicles, humeral heads ---------------------------------------------
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
        head = _smoothstep(np.hypot(X - (cx + side * (body_hw + 0.04)), Y - 0.12) - 0.055, 0.008)
        bones = np.maximum(bones, 1.2 * head)
    bones = _blur(bones, 0.0025 * cv.s)
    atten += 0.09 * bones * body

    # --- findings drawn over the anatomy ---------------------------------------------------
    def random_lung_point(
        rng: np.random.Generator, side: int, y_lo: float, y_hi: float
    ) -> tuple[float, float]:
        ls = lung_side[side]
        for _ in range(200):
            px_ = ls["lcx"] + rng.uniform(-0.75, 0.75) * ls["ax"]
            py_ = rng.uniform(y_lo, y_hi)
            c, r = cv.px(px_, py_)
            if 0 <= r < h and 0 <= c < w and lung_mask[side][r, c] and not heart[r, c] > 0.3:
                return px_, py_
        return ls["lcx"], (y_lo + y_hi) / 2

    if labels["Lung Opacity"]:
        rng = finding_rng["Lung Opacity"]
        side = int(rng.choice([-1, 1]))
        ox, oy = random_lung_point(rng, side, 0.35, 0.62)
        blob = cv.layer()
        for _ in range(int(rng.integers(3, 6))):
            bx, by = ox + rng.normal(0, 0.025), oy + rng.normal(0, 0.025)
            sig = rng.uniform(0.025, 0.045)
            blob += np.exp(-((X - bx) ** 2 + (Y - by) ** 2) / (2 * sig**2))
        blob = np.clip(blob / blob.max(), 0, 1) * np.clip(0.8 + 0.3 * texture, 0, 1.2)
        region = (blob > 0.35) & lung_mask[side]
        masks["Lung Opacity"] = region
        atten += (
            rng.uniform(0.55, 0.65) * np.clip(blob, 0, 1) * lung_side[side]["soft"] * (region | (blob > 0.2))
        )

    if labels["Lung Lesion"]:
        rng = finding_rng["Lung Lesion"]
        side = int(rng.choice([-1, 1]))
        nx, ny = random_lung_point(rng, side, 0.22, 0.60)
        radius = rng.uniform(0.024, 0.042)
        polar = np.arctan2(Y - ny, X - nx)
        lobulation = 1 + 0.12 * np.sin(3 * polar + rng.uniform(0, 6)) * rng.random()
        dist = np.hypot(X - nx, Y - ny) / lobulation
        disc = _smoothstep(dist - radius, 0.004)
        masks["Lung Lesion"] = disc > 0.5
        atten += rng.uniform(0.62, 0.75) * disc

    if labels["Pleural Effusion"]:
        rng = finding_rng["Pleural Effusion"]
        side = int(rng.choice([-1, 1]))
        ls = lung_side[side]
        level = dome_y[side] - rng.uniform(0.08, 0.18)
        lateral = np.clip((X - ls["lcx"]) * side / ls["ax"] + 1.0, 0, 2) / 2  # 0 medial .. 1 lateral
        surface = level - rng.uniform(0.03, 0.07) * lateral**2  # meniscus climbs laterally
        fluid = lung_mask[side] & (Y > surface)
        masks["Pleural Effusion"] = fluid
        grade = np.clip((Y - surface) / 0.03, 0, 1)
        atten += rng.uniform(0.55, 0.65) * _blur(fluid.astype(np.float32), 0.003 * cv.s) * (0.6 + 0.4 * grade)

    if labels["Support Devices"]:
        rng = finding_rng["Support Devices"]
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
        masks["Support Devices"] = cv2.dilate(dev_mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        atten += 0.6 * dev

    # --- exposure, detector and noise ------------------------------------------------------
    rng = anatomy_rng
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

    return Phantom(seed=int(seed), image=image, labels=labels, masks=masks)


def render_batch(seeds: range | list[int], size: int = 512, vary_shape: bool = False) -> list[Phantom]:
    """``render_phantom`` for each seed (convenience for datasets and tests)."""
    return [render_phantom(s, size=size, vary_shape=vary_shape) for s in seeds]
