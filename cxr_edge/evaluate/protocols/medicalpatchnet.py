"""The ``medicalpatchnet`` protocol: the MedicalPatchNet paper's localization evaluation.

Source: TruhnLab/MedicalPatchNet (commit d5f057c2ce96, untagged; the public code of Wienholt et al., Sci Rep
2026): ``evalClassification.py`` (``genChexlocalizeMap``, ``applyPatchLocalisation``,
``NORM_VAL = 200``, ``execEval``) and ``tune_heatmap_threshold_opt.py`` (``tune_threshold``), run
inside CheXlocalize v1.0.0 (``protocols.chexlocalize``), as its README describes. Read, not
copied; definitions:

- Maps at S = 64 steps, for the "Raw" and "Scaled" figures. The paper's "Scaled" maps are the
  public code's batched variant (map kind ``scaled-published``), not cxr-edge's ``scaled``.
- Each model-frame map is clipped to [-200, 200] and mapped to [0, 1] by ``(m + 200) / 400``
  (float32), then handed to CheXlocalize, which resizes it bilinearly to the image size
  recorded for it: the size of the *uncropped* image, although the map covers the centre crop.
  So the crop's map is stretched over the whole image (``geometry.stretched``): on a non-square
  image it is misregistered. Reproduced as published and flagged in the report.
- Hit rate: CheXlocalize's (first argmax, non-empty masks only).
- mIoU: CheXlocalize's min-max normalisation and ``map > t`` with per-pathology thresholds
  ``t`` found on validation data by ``tune_threshold``'s search: start at 0.5 with step 0.25;
  ten rounds, each scoring ``t - step, t, t + step`` (``best + x * step``, x = -1, 0, 1) by the
  mIoU of the tuning split (NaN candidates dropped; none left ends the search), keeping the
  best (ties: the last of the three, i.e. the largest) and halving the step. No probability
  cutoff. Two figures: "TP only" (CheXlocalize's ``true_pos_only``) and "TP, FP, FN"
  (``true_pos_only`` false), each with thresholds tuned under its own inclusion rule (the
  script's ``--true_pos_only`` flag applies to both tuning and evaluation).
- Summary: CheXlocalize's per-pathology bootstrap (``evaluate.bootstrap``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cxr_edge.evaluate.geometry import NativeMap, stretched
from cxr_edge.evaluate.protocols.base import MapCase
from cxr_edge.evaluate.protocols.chexlocalize import CheXlocalizeProtocol, IouCurve, curve_miou

SOURCE = (
    "TruhnLab/MedicalPatchNet commit d5f057c: evalClassification.py (genChexlocalizeMap, NORM_VAL, "
    "applyPatchLocalisation), tune_heatmap_threshold_opt.py (tune_threshold), run in "
    "rajpurkarlab/cheXlocalize tag v1.0.0"
)
#: ``evalClassification.NORM_VAL``: maps are clipped to [-200, 200] before mapping to [0, 1].
CLIP = 200.0
#: ``execEval(..., stepsPerPatch=64)``: the paper's maps.
PAPER_STEPS = 64
#: The map kinds of the paper's two columns, "Raw" and "Scaled".
PAPER_MAP_KINDS = ("raw", "scaled-published")


def clip_to_unit(model_map: np.ndarray) -> np.ndarray:
    """``(clip(m, -200, 200) + 200) / 400`` in float32, the map the public code stores."""
    m = np.asarray(model_map, dtype=np.float32)
    out: np.ndarray = (np.clip(m, np.float32(-CLIP), np.float32(CLIP)) + np.float32(CLIP)) / np.float32(
        2 * CLIP
    )
    return out


def search_threshold(miou_at: Callable[[float], float], rounds: int = 10) -> float:
    """``tune_threshold``'s search for the threshold maximising ``miou_at(t)`` (module docstring)."""
    cache: dict[float, float] = {}
    best, step = 0.5, 0.25
    for _ in range(rounds):
        scored = []
        for x in (-1, 0, 1):
            t = best + (x * step)
            if t not in cache:
                cache[t] = miou_at(t)
            if not math.isnan(cache[t]):
                scored.append((cache[t], t))
        if not scored:
            break
        top = max(m for m, _ in scored)
        best = [t for m, t in scored if m == top][-1]  # a stable sort's last: the largest tied t
        step = step / 2
    return best


class MedicalPatchNetProtocol(CheXlocalizeProtocol):
    """The MedicalPatchNet paper's evaluation (module docstring): clipped maps, stretched
    geometry, thresholds tuned per figure."""

    name = "medicalpatchnet"

    def __init__(self, rule: str | float = "tuned") -> None:
        super().__init__(rule)

    def native(self, case: MapCase) -> NativeMap:
        return stretched(clip_to_unit(case.model_map), case.shape)

    def tune(self, kind: str, label: str, samples: list[Any]) -> None:
        curves: list[IouCurve] = samples
        for metric, tp_only in (("miou_tp_only", True), ("miou_tp_fp_fn", False)):

            def miou_at(t: float, tp: bool = tp_only) -> float:
                return curve_miou(curves, t, tp)

            self.thresholds[(kind, label, metric)] = search_threshold(miou_at)

    def describe(self, steps: int, kinds: tuple[str, ...]) -> dict[str, Any]:
        stretch = (
            "published geometry: the centre crop's map is stretched over the uncropped image "
            "(as the public code does); misregistered on non-square images"
        )
        deviations = [stretch]
        if steps != PAPER_STEPS:
            deviations.append(f"maps at S={steps}; the paper uses S={PAPER_STEPS}")
        if "scaled" in kinds:
            deviations.append(
                "map 'scaled' is cxr-edge's definition; the paper's 'Scaled' column is the public "
                "code's batched variant ('scaled-published')"
            )
        if self.rule != "tuned":
            deviations.append(
                f"mIoU thresholds: {self.rule}; the paper tunes them per pathology on validation data"
            )
        return {
            "source": SOURCE,
            "definition": (
                "maps clipped to [-200, 200] and mapped to [0, 1] by (m + 200) / 400, resized bilinearly "
                "to the uncropped image; hit: CheXlocalize's first argmax in the native mask; mIoU: "
                "min-max normalised map > per-pathology threshold (search from 0.5, step 0.25 halved "
                "over 10 rounds, on the tuning split), no probability cutoff; 'TP only' "
                "(miou_tp_only) and 'TP, FP, FN' (miou_tp_fp_fn), each tuned under its own rule"
            ),
            "geometry": "stretched: the centre crop's map resized over the whole uncropped image",
            "paper_map_kinds": list(PAPER_MAP_KINDS),
            "threshold_rule": self.rule,
            "thresholds": super().describe(steps, kinds)["thresholds"],
            "deviations": deviations,
        }
