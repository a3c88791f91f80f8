"""How the teacher's prior maps join the student's input: the one place that decides the student's input channels.

Two prior sources (``priors.source``): SAMAug's two ``everything`` maps (segmentation, boundary), and the
teacher's image ``embeddings`` (``priors.embedding_channels`` PCA components at the embedding grid's resolution,
which :func:`align_priors` brings to the image's grid; the student projects them with a learned layer of its own,
:class:`~semisam.student.unet.PriorProjection`). Either way the prior maps are channels placed after the image's.

Fusion happens on batches, after augmentation (priors move with the image under every spatial transform but
never see photometric changes), so that the SAMAug "raw / augmented" alternation and the test-time choice of the
more confident prediction use the same function.

Modes (``priors.fusion``):

- ``concat`` (default): input = image channels + [segmentation prior, boundary prior]: C + 2 channels.
- ``add`` (SAMAug's own): a grey image is replicated to RGB, then the segmentation prior is added to G and the
  boundary prior to B (no clipping, as in SAMAug): 3 channels.
- ``none``: the image alone (priors computed but unused: the ablation).

The *raw* input of a mode is the same layout without the teacher's help (zero priors), which is what SAMAug's
alternating steps and its test-time comparison feed the network.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from semisam.config.schema import PriorsConfig, RunConfig

NUM_PRIOR_CHANNELS = 2  # SAMAug's everything maps: segmentation, boundary


def prior_channels(priors: PriorsConfig) -> int:
    """Channels of the prior maps of ``priors.source`` (2 SAMAug maps, or ``embedding_channels`` components)."""
    return priors.embedding_channels if priors.source == "embeddings" else NUM_PRIOR_CHANNELS


def student_in_channels(cfg: RunConfig) -> int:
    """Input channels of the student for this config (for embedding priors: before its learned projection)."""
    if not cfg.priors.enabled or cfg.priors.fusion == "none":
        return cfg.data.in_channels
    if cfg.priors.fusion == "concat":
        return cfg.data.in_channels + prior_channels(cfg.priors)
    return 3  # add


def align_priors(priors: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bring prior maps that cover an image's whole extent onto its pixel grid (bilinear, half-pixel centres).

    Args:
        priors: float (P, h, w) for one image or (D, P, h, w) for the slices of a volume; an embedding prior is
            stored at the embedding grid's resolution (e.g. 64 x 52 for a 256 x 208 image under LiteMedSAM).
        shape: the image's (H, W) in pixels.

    Returns:
        float32 (P, H, W) or (D, P, H, W); the array itself when it is already at ``shape``.
    """
    height, width = int(shape[0]), int(shape[1])
    if priors.shape[-2:] == (height, width):
        return priors
    flat = np.ascontiguousarray(priors, dtype=np.float32).reshape(-1, *priors.shape[-2:])
    out = np.empty((flat.shape[0], height, width), np.float32)
    for c in range(flat.shape[0]):  # per channel: cv2 resizes at most 4 (512 for some builds) at once
        out[c] = cv2.resize(flat[c], (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*priors.shape[:-2], height, width)


def fuse_priors(image: torch.Tensor, priors: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Combine images and prior maps into the student's input.

    Args:
        image: float (B, C, H, W), normalised.
        priors: float (B, P, H, W): SAMAug's maps in [0, 1] (P = 2: segmentation, boundary) or the embedding's
            whitened PCA components (P = ``priors.embedding_channels``), or ``None`` for the raw input (zeros in
            the priors' place, 2 channels: SAMAug's alternation, which embedding priors do not take).
        mode: ``concat`` | ``add`` | ``none`` (``add`` takes SAMAug's 2 maps only).

    Returns:
        float (B, C', H, W) with C' as :func:`student_in_channels` says.
    """
    if mode == "none":
        return image
    if priors is None:
        priors = image.new_zeros((image.shape[0], NUM_PRIOR_CHANNELS, *image.shape[2:]))
    if priors.shape[2:] != image.shape[2:] or (mode == "add" and priors.shape[1] != NUM_PRIOR_CHANNELS):
        raise ValueError(f"priors of shape {tuple(priors.shape)} do not match images {tuple(image.shape)}")
    priors = priors.to(image.dtype)
    if mode == "concat":
        return torch.cat([image, priors], dim=1)
    if mode == "add":
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        elif image.shape[1] != 3:
            raise ValueError(f"priors.fusion=add needs 1- or 3-channel images, got {image.shape[1]}")
        return torch.cat([image[:, :1], image[:, 1:2] + priors[:, :1], image[:, 2:3] + priors[:, 1:2]], dim=1)
    raise ValueError(f"unknown priors.fusion {mode!r}")


def more_confident(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """SAMAug's test-time rule: per image, keep the prediction whose mean max-class probability is higher.

    Args:
        probs_a, probs_b: float (B, K, H, W) softmax probabilities of the same images (raw / augmented input).
    Returns:
        float (B, K, H, W): for each image, the more confident of the two.
    """
    conf_a = probs_a.amax(dim=1).mean(dim=(1, 2))
    conf_b = probs_b.amax(dim=1).mean(dim=(1, 2))
    pick_b = (conf_b > conf_a).view(-1, 1, 1, 1)
    return torch.where(pick_b, probs_b, probs_a)
