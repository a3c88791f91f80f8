"""Mixing two images and their targets with one region: CutMix boxes (UniMatch) and copy-paste squares (BCP).

Regions are boolean masks, True where the pixel comes from the *other* image. Images are float (B, C, H, W),
targets and weight maps (B, H, W); :func:`mix` moves every map of a sample with the same mask, so that an image
and its (pseudo-)label never disagree about where a pixel came from. Random draws use torch's global generator
(saved in checkpoints: a resumed run draws the same regions).
"""

from __future__ import annotations

import math

import torch


def cutmix_masks(
    batch: int,
    height: int,
    width: int,
    prob: float,
    area: tuple[float, float],
    aspect: tuple[float, float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One CutMix box per sample, as UniMatch's ``obtain_cutmix_box``: with probability ``prob`` a box of area
    ``U(area) * H * W`` pixels and height / width ratio ``U(aspect)`` at a uniformly drawn position fully inside
    the image (the box is clipped to the image if the draw cannot fit); else no box.

    Returns:
        bool (batch, height, width), True inside each sample's box.
    """
    masks = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    for b in range(batch):
        if float(torch.rand(())) >= prob:
            continue
        size = (area[0] + (area[1] - area[0]) * float(torch.rand(()))) * height * width
        ratio = aspect[0] + (aspect[1] - aspect[0]) * float(torch.rand(()))
        box_h = min(height, max(1, int(math.sqrt(size * ratio))))
        box_w = min(width, max(1, int(math.sqrt(size / ratio))))
        top = int(torch.randint(0, height - box_h + 1, ()))
        left = int(torch.randint(0, width - box_w + 1, ()))
        masks[b, top : top + box_h, left : left + box_w] = True
    return masks


def square_mask(height: int, width: int, fraction: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """BCP's copy-paste region: a rectangle of ``int(fraction * H) x int(fraction * W)`` pixels at a uniformly
    drawn position (BCP's ``generate_mask``: 2/3 of each side), one for the whole batch.

    Returns:
        bool (height, width), True inside the pasted rectangle.
    """
    patch_h, patch_w = max(1, int(height * fraction)), max(1, int(width * fraction))
    top = int(torch.randint(0, height - patch_h + 1, ()))
    left = int(torch.randint(0, width - patch_w + 1, ()))
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[top : top + patch_h, left : left + patch_w] = True
    return mask


def mix(base: torch.Tensor, other: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``other`` inside ``region``, ``base`` elsewhere.

    Args:
        base, other: the same shape, (B, C, H, W) images or (B, H, W) maps.
        region: bool (B, H, W) or (H, W), True where the pixel is taken from ``other``.
    """
    if base.shape != other.shape:
        raise ValueError(f"cannot mix {tuple(base.shape)} with {tuple(other.shape)}")
    if base.dim() == 4:
        region = region.unsqueeze(-3)  # over the channels
    return torch.where(region, other, base)


def partner(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The index of each sample's mixing partner in its batch: the next one (the batch rolled by one; a batch of
    one mixes with itself). int64 (batch,)."""
    return torch.roll(torch.arange(batch, device=device), -1)
