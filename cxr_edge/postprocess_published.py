"""The scaled map as the public MedicalPatchNet code computes it, to reproduce the paper's figures.

cxr-edge's scaled map (``postprocess.SaliencyAccumulator``) follows the paper's definition: each
shifted copy's patch logits times sigmoid of that copy's own image logit, shifted back and
averaged. The public code (TruhnLab/MedicalPatchNet) runs the S*S copies through a DataLoader in
batches of 4 and weights each batch with image probabilities of shape (B, 1, 1, C) against patch
logits of shape (B, G*G, C); broadcasting makes that (B, B, G*G, C), and the map builder then
reads the first S*S blocks of G*G patch values as if they were the S*S copies in order. So the
value it puts at copy e's offset is not copy e's. docs/model.md, "The scaled map against the
public code" derives :func:`published_placement`; at batch size 1 (and at S = 1) both agree.

This variant exists only to compare with the paper's scaled-map numbers; ``infer`` and the
pipeline use the definition.
"""

from __future__ import annotations

import numpy as np

from cxr_edge.postprocess import shift_average, sigmoid

#: DataLoader batch size of the public ``evalClassification.applyPatchLocalisation``.
PUBLISHED_BATCH_SIZE = 4


def published_placement(
    num_copies: int, batch_size: int = PUBLISHED_BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Which copies the public code combines at each copy's offset.

    num_copies: K = S*S shifted copies, in ``tile.shift_pairs`` order; batch_size: the
    DataLoader's. Returns ``(logit_copy, prob_copy)``, each ``(K,) int64``: at the offset of copy
    e the public code places the patch logits of copy ``logit_copy[e]`` times the probability of
    copy ``prob_copy[e]``. The definition is ``logit_copy == prob_copy == arange(K)``.

    With b = min(batch_size, K): ``prob_copy[e] = e // b`` and
    ``logit_copy[e] = (e // b**2) * b + e % b``. Raises ValueError where the public code itself
    fails (K not a multiple of b: its last, smaller batch cannot be concatenated to the others).
    """
    if num_copies < 1 or batch_size < 1:
        raise ValueError(f"num_copies and batch_size must be >= 1, got {num_copies} and {batch_size}")
    b = min(batch_size, num_copies)
    if num_copies % b:
        raise ValueError(
            f"the public code cannot run {num_copies} copies in batches of {batch_size}: "
            "its last batch is smaller and the (b, b, G*G, C) blocks do not concatenate"
        )
    e = np.arange(num_copies, dtype=np.int64)
    return (e // (b * b)) * b + e % b, e // b


def published_scaled_map(
    patch_logits_by_copy: np.ndarray,
    steps: int,
    image_size: int,
    patch_size: int,
    batch_size: int = PUBLISHED_BATCH_SIZE,
) -> np.ndarray:
    """The public code's scaled map, ``(C, H, W) float32`` in logit units (computed in float64).

    patch_logits_by_copy: ``(S*S, G*G, C)`` float patch logits, copy k in ``tile.shift_pairs``
    order, patch ``row*G + col``. Each copy's image probability is sigmoid of the mean of its
    patch logits; the values of :func:`published_placement` are shifted back to their offsets and
    averaged over S*S (zeros included), exactly like the definition's maps.
    """
    logits = np.asarray(patch_logits_by_copy, dtype=np.float64)
    grid = image_size // patch_size
    if logits.ndim != 3 or logits.shape[:2] != (steps * steps, grid * grid):
        raise ValueError(
            f"patch logits must be ({steps}*{steps}, {grid * grid}, C) for S={steps}, got shape {logits.shape}"
        )
    num_copies, patches, num_classes = logits.shape
    logit_copy, prob_copy = published_placement(num_copies, batch_size)
    probabilities = sigmoid(logits.mean(axis=1))  # (K, C): each copy's own image probability
    placed = logits[logit_copy] * probabilities[prob_copy][:, None, :]
    # The same shift-back and mean as the definition's raw map, of the placed values.
    return shift_average(placed.reshape(num_copies * patches, num_classes), steps, image_size, patch_size)
