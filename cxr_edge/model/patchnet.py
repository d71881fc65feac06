"""MedicalPatchNet: an EfficientNetV2-S patch classifier held as ``baseBackbone``.

The network sees one patch at a time; image logits are the mean of the patch logits (the
tiling and averaging live in ``cxr_edge.tile`` / ``cxr_edge.postprocess``). The exported ONNX
graph is exactly ``MedicalPatchNet.forward`` on a patch batch.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr_edge.metadata import ModelVariant
from cxr_edge.model.efficientnet import EfficientNetV2

#: Named width/depth presets. ``full`` is the official model; the others are for demos and tests.
VARIANTS: dict[str, ModelVariant] = {
    "full": ModelVariant("full", 1.0, 1.0),
    "small": ModelVariant("small", 0.5, 0.5),
    "tiny": ModelVariant("tiny", 0.25, 0.25),
}


def variant_named(name: str) -> ModelVariant:
    """The preset called ``name`` (``full``, ``small``, ``tiny``); ValueError otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown model variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


class MedicalPatchNet(nn.Module):
    """Patch classifier: ``(N, 1, P, P) float32 in [0, 1]`` -> ``(N, C) float32`` patch logits.

    ``variant`` scales the backbone (the official checkpoints are ``full``); ``num_classes`` is the
    head width (14 CheXpert labels for the official model).
    """

    def __init__(self, variant: ModelVariant | None = None, num_classes: int = 14) -> None:
        super().__init__()
        self.variant = variant if variant is not None else VARIANTS["full"]
        self.num_classes = num_classes
        self.baseBackbone = EfficientNetV2(
            num_classes, in_channels=1, width_mult=self.variant.width_mult, depth_mult=self.variant.depth_mult
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.baseBackbone(patches)
        return logits

    @torch.no_grad()
    def image_patch_logits(self, images: torch.Tensor, patch_size: int = 64) -> torch.Tensor:
        """Patch logits of whole images: ``(B, 1, H, W)`` -> ``(B, G*G, C)``, patch index row*G + col.

        A reference path for tests; the runtime tiles with ``cxr_edge.tile`` instead.
        """
        b, _, h, w = images.shape
        gh, gw = h // patch_size, w // patch_size
        patches = (
            images[:, :, : gh * patch_size, : gw * patch_size]
            .reshape(b, 1, gh, patch_size, gw, patch_size)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(b * gh * gw, 1, patch_size, patch_size)
        )
        logits: torch.Tensor = self(patches)
        return logits.reshape(b, gh * gw, -1)
