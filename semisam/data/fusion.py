"""How SAMAug prior maps join the student's input: the one place that decides the student's input channels.

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

import torch

from semisam.config.schema import RunConfig

NUM_PRIOR_CHANNELS = 2


def student_in_channels(cfg: RunConfig) -> int:
    """Input channels of the student for this config."""
    if not cfg.priors.enabled or cfg.priors.fusion == "none":
        return cfg.data.in_channels
    if cfg.priors.fusion == "concat":
        return cfg.data.in_channels + NUM_PRIOR_CHANNELS
    return 3  # add


def fuse_priors(image: torch.Tensor, priors: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Combine images and prior maps into the student's input.

    Args:
        image: float (B, C, H, W), normalised.
        priors: float (B, 2, H, W) in [0, 1] (segmentation, boundary), or ``None`` for the raw input
            (zeros in the priors' place).
        mode: ``concat`` | ``add`` | ``none``.

    Returns:
        float (B, C', H, W) with C' as :func:`student_in_channels` says.
    """
    if mode == "none":
        return image
    if priors is None:
        priors = image.new_zeros((image.shape[0], NUM_PRIOR_CHANNELS, *image.shape[2:]))
    if priors.shape[1] != NUM_PRIOR_CHANNELS or priors.shape[2:] != image.shape[2:]:
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
