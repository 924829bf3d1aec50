"""The training loss of the tumor models: soft Dice + cross-entropy on the nested regions.

Torch only (no SimpleITK), so that a GPU machine with nothing but torch, numpy and MONAI can
train from prepared arrays (``fit``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Extra cross-entropy weight on TC and ET inside necrosis (``loss_fn``).
NECROSIS_WEIGHT = 5.0


def necrosis(regions: torch.Tensor) -> torch.Tensor:
    """Necrosis / non-enhancing core (label 1 = TC and not ET) from TC/WT/ET maps or probabilities.

    The network has no necrosis output (the three outputs stay those of the MONAI bundle), so
    necrosis exists only as the gap between core and enhancing tumor; scoring that gap directly
    is what stops the network from calling the whole core enhancing.
    """
    return regions[:, 0] * (1.0 - regions[:, 2])


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
            necrosis_weight: float = NECROSIS_WEIGHT) -> torch.Tensor:
    """Soft Dice on TC, WT, ET and necrosis + BCE on TC, WT, ET; ignored voxels weigh 0.

    ``weight`` is (b, z, y, x), the same for every region, or (b, 3, z, y, x), one map per region
    (TC, WT, ET): a clinical mask of the tumor core says nothing of edema outside the core or of
    which core voxels enhance, so those regions weigh 0 there. Necrosis is known where TC and ET are.

    Inside necrosis the TC and ET cross-entropy weighs ``necrosis_weight`` times more: there the
    two outputs must disagree (core, not enhancing), while everywhere else in a tumor they agree,
    so without the emphasis the cheapest fit is one "core" map copied into both outputs.
    """
    w = weight if weight.dim() == target.dim() else weight[:, None].expand_as(target)
    w4 = torch.cat([w, torch.minimum(w[:, 0], w[:, 2])[:, None]], dim=1)
    probability = torch.sigmoid(logits)
    probability = torch.cat([probability, necrosis(probability)[:, None]], dim=1)
    necrosis_target = necrosis(target)
    target4 = torch.cat([target, necrosis_target[:, None]], dim=1)
    dims = (0, 2, 3, 4)
    intersection = (probability * target4 * w4).sum(dims)
    total = ((probability + target4) * w4).sum(dims)
    dice = 1.0 - (2 * intersection + 1.0) / (total + 1.0)
    emphasis = torch.ones_like(target)
    emphasis[:, (0, 2)] += (necrosis_weight - 1.0) * necrosis_target[:, None]
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=emphasis * w, reduction="sum")
    return dice.mean() + bce / (w.sum() + 1e-6)
