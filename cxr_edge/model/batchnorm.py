"""Give a randomly initialised network sane BatchNorm statistics, so its logits are realistic.

A plain random init keeps running_mean=0 / running_var=1, and activations then drift or vanish
through 40+ blocks, giving near-constant logits. Calibration sets each BatchNorm's running
statistics to the mean/variance of what that layer actually sees on image-like patches, block
by block: one eval-mode forward pass with a pre-hook on every BN; since earlier layers run (and
are calibrated) first, each BN sees inputs already normalised by the BNs before it.
Residual branches are damped first (``residual_gain``) so the network is not chaotic.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxr_edge.metadata import ModelVariant
from cxr_edge.model.efficientnet import FusedMBConv, MBConv


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module,
    patches: np.ndarray | torch.Tensor,
    head_std: float | None = None,
    residual_gain: float | None = 0.25,
) -> None:
    """Set every ``BatchNorm2d``'s running stats from ``patches`` ``(N, 1, P, P) float32 in [0, 1]``, in place.

    ``residual_gain`` (applied first, None to skip): the weight (gamma) of the last BN of every
    residual branch, small as in trained deep residual nets. With unit-gain branches a random
    40-block network is chaotic: fp32 rounding grows with depth until two correct fp32
    implementations (PyTorch, ONNX Runtime) disagree by ~2e-3 in the logits; at 0.25 they agree
    to ~1e-4 while the logits keep a std of ~3.

    With ``head_std`` set, the final ``Linear`` is rescaled so the patch logits on ``patches`` have
    that standard deviation per class (averaged over classes), the scale of a trained model's logits.
    The model is left in eval mode.
    """
    x = torch.as_tensor(np.asarray(patches, dtype=np.float32))
    model.eval()
    if residual_gain is not None:
        for block in model.modules():
            if isinstance(block, (MBConv, FusedMBConv)) and block.use_res_connect:
                last_bn = block.block[-1][1]  # type: ignore[index]  # block[-1] is a ConvNormAct, [1] its BN
                last_bn.weight.fill_(residual_gain)

    def set_stats(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(bn, nn.BatchNorm2d)
        act = inputs[0].detach().double()
        bn.running_mean.copy_(act.mean(dim=(0, 2, 3)).to(bn.running_mean.dtype))  # type: ignore[union-attr]
        bn.running_var.copy_(act.var(dim=(0, 2, 3), unbiased=False).to(bn.running_var.dtype))  # type: ignore[union-attr]
        bn.num_batches_tracked.fill_(1)  # type: ignore[union-attr]

    handles = [
        m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()

    if head_std is not None:
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        current = float(logits.double().std(dim=0).mean())
        if current > 0:
            # logits = W f + b: scaling W (bias stays) moves the spread and keeps the patch ranking.
            head.weight.mul_(head_std / current)


def calibrated_random_model(
    variant: ModelVariant | None = None, num_classes: int = 14, seed: int = 0, patches: int = 128
) -> nn.Module:
    """A seeded random MedicalPatchNet with BatchNorm calibrated on ``patches`` image-like patches.

    Stands in for trained weights in tests, demos and export timing (logit std >= 1, not degenerate).
    """
    from cxr_edge.model.patchnet import MedicalPatchNet
    from cxr_edge.model.sample_patches import image_like_patches

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MedicalPatchNet(variant, num_classes)
    calibrate_batchnorm(model, image_like_patches(patches, seed=seed + 1))
    return model.eval()
