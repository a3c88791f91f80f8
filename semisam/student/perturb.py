"""Feature perturbation for any student U-Net: Dropout2d on the encoder features the decoder reads (UniMatch's
feature-perturbed stream).

UniMatch decodes ``Dropout2d(p)`` of every encoder feature (each skip connection and the bottleneck) with the
encoder itself unperturbed. Here this is done with hooks, without changing the students' code:

- decoders built of MONAI ``UpCat`` blocks (``basic_unet``, ``timm_unet``): a pre-hook drops channels of the skip
  feature each block concatenates and, for the deepest block, of the bottleneck it upsamples;
- MONAI's residual ``UNet`` (``res_unet``): a hook on each ``SkipConnection`` drops channels of the encoder half of
  its concatenation (the whole concatenation for the innermost one, whose other half is the bottleneck).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets.basic_unet import UpCat
from torch import nn


@contextlib.contextmanager
def feature_dropout(model: nn.Module, p: float) -> Iterator[None]:
    """Within the block, ``model``'s decoder reads its encoder features through ``Dropout2d(p)`` (always active,
    whatever the model's mode).

    Raises:
        ValueError: the model has no decoder this module knows (no ``UpCat`` and no ``SkipConnection``).
    """
    upcats = [m for m in model.modules() if isinstance(m, UpCat)]
    skips = [m for m in model.modules() if isinstance(m, SkipConnection)]
    if not upcats and not skips:
        raise ValueError(f"{type(model).__name__} has no UpCat / SkipConnection decoder to perturb")
    handles = []
    for index, block in enumerate(upcats):  # in construction order: the deepest first
        handles.append(block.register_forward_pre_hook(_upcat_hook(p, deepest=index == 0)))
    innermost = [s for s in skips if not any(isinstance(m, SkipConnection) for m in s.submodule.modules())]
    for block in skips:
        handles.append(block.register_forward_hook(_skip_hook(p, whole=block in innermost)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _upcat_hook(p: float, deepest: bool):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x, x_e = args[0], args[1]
        if deepest:
            x = F.dropout2d(x, p, training=True)
        if x_e is not None:
            x_e = F.dropout2d(x_e, p, training=True)
        return (x, x_e, *args[2:])

    return hook


def _skip_hook(p: float, whole: bool):
    def hook(module: SkipConnection, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if whole:
            return F.dropout2d(output, p, training=True)
        encoder = args[0].shape[1]  # cat([x, submodule(x)]): the first channels are the encoder feature
        return torch.cat([F.dropout2d(output[:, :encoder], p, training=True), output[:, encoder:]], dim=1)

    return hook
