"""Student networks: 2D U-Nets that map an image (plus optional prior channels) to per-class logits.

Two architectures, chosen by ``student.arch``:

- ``basic_unet``: MONAI's :class:`~monai.networks.nets.BasicUNet`, the SSL4MIS U-Net shape (5 levels, widths
  ``student.features``, 4 max-pool downsamplings, batch norm + LeakyReLU(0.1) as in SSL4MIS).
- ``res_unet``: MONAI's :class:`~monai.networks.nets.UNet` with ``student.res_units`` residual units per level
  (Kerfoot et al. 2018): widths ``student.features``, stride-2 convolutions instead of max-pooling, batch norm
  and PReLU. The same five widths as ``basic_unet``.
- ``timm_unet``: a U-Net whose encoder is any timm CNN with ``features_only=True`` and whose decoder is built
  from MONAI blocks (:class:`~monai.networks.nets.basic_unet.UpCat`, ``TwoConv``).

Both map a float tensor (B, in_channels, H, W) to float logits (B, num_classes, H, W) for any H, W >= 16.

A student given the teacher's embedding priors (``priors.source=embeddings``) is wrapped in
:class:`PriorProjection`: its learned projection of those channels is part of the student (trained, saved,
EMA-averaged with it). :func:`build_run_student` is the one place that builds the student a run config asks for.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math

import timm
import torch
import torch.nn.functional as F
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv
from monai.networks.nets import BasicUNet, UNet
from monai.networks.nets.basic_unet import TwoConv, UpCat
from torch import nn

from semisam.config.schema import RunConfig, StudentConfig
from semisam.data.fusion import prior_channels, student_in_channels

logger = logging.getLogger("semisam")

# SSL4MIS's U-Net: Conv-BN-LeakyReLU(0.01 there; MONAI's default slope 0.1 kept here).
_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
BASIC_UNET_LEVELS = 5


def build_student(cfg: StudentConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The student network named by ``cfg.arch``.

    Args:
        cfg: the ``student`` section of the run config.
        in_channels: channels of the input (image channels plus any prior channels).
        num_classes: output channels, background included.

    Returns:
        A module mapping float (B, in_channels, H, W) to float logits (B, num_classes, H, W), H, W >= 16.

    Raises:
        ValueError: unknown ``arch``, bad ``features``, or an unknown / unsuitable timm encoder.
        RuntimeError: ``pretrained=True`` and the encoder's weights cannot be obtained.
    """
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels={in_channels} and num_classes={num_classes} must be >= 1")
    features = [int(f) for f in cfg.features]
    if not features or min(features) <= 0:
        raise ValueError(f"student.features={features} must be positive widths")
    if cfg.dropout > 0:
        logger.warning(
            "student.dropout=%s: dropout sits between batch norm and activation in the U-Net's convolutions, so the "
            "batch-norm running statistics are gathered on dropped-out activations and misfit at eval (variance "
            "shift), which can collapse eval Dice (docs/RESULTS.md). student.dropout=0 avoids it.",
            cfg.dropout,
        )
    if cfg.arch == "basic_unet":
        if len(features) != BASIC_UNET_LEVELS:
            raise ValueError(
                f"student.features={features}: basic_unet needs {BASIC_UNET_LEVELS} widths (one per level)"
            )
        # BasicUNet takes 6 widths: the 5 encoder levels plus the width after the last upsampling, which
        # SSL4MIS's U-Net keeps equal to the first level's.
        return BasicUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            features=(*features, features[0]),
            act=_ACT,
            norm=cfg.norm,
            dropout=cfg.dropout,
        )
    if cfg.arch == "res_unet":
        return ResUNet(in_channels, num_classes, features, cfg.res_units, cfg.norm, cfg.dropout)
    if cfg.arch == "timm_unet":
        return TimmUNet(cfg.encoder, in_channels, num_classes, features, cfg.dropout, cfg.pretrained, cfg.norm)
    raise ValueError(f"student.arch={cfg.arch!r} is not one of basic_unet, res_unet, timm_unet")


PROJECTION_CHANNELS = 16  # the embedding priors' width after the learned projection (the issue's script's)


def build_run_student(cfg: RunConfig) -> nn.Module:
    """The student of a run config: ``student`` for the input channels :func:`student_in_channels` gives, wrapped
    in :class:`PriorProjection` when it takes the teacher's embedding priors (``student.arch=embedding_head``:
    the projection and :class:`EmbeddingHead`, without the image)."""
    in_channels = student_in_channels(cfg)
    if not (cfg.priors.enabled and cfg.priors.source == "embeddings"):
        return build_student(cfg.student, in_channels, cfg.data.num_classes)
    image_channels, width = cfg.data.in_channels, PROJECTION_CHANNELS
    if cfg.student.arch == "embedding_head":
        head = EmbeddingHead(width, cfg.data.num_classes)
        return PriorProjection(head, image_channels, prior_channels(cfg.priors), width, keep_image=False)
    net = build_student(cfg.student, image_channels + width, cfg.data.num_classes)
    return PriorProjection(net, image_channels, prior_channels(cfg.priors), width)


class EmbeddingHead(nn.Sequential):
    """The reference without a U-Net (``student.arch=embedding_head``, behind :class:`PriorProjection` with
    ``keep_image=False``): what the teacher's features alone give.

    Float (B, width, H, W) projected embedding priors -> float logits (B, num_classes, H, W): average-pooled by 2
    (at the ``cpu`` scale's 128 x 128 input, back to about the 64 x 64 embedding grid), two 3x3 convolution blocks
    of 128 and 64 channels (GroupNorm, GELU), a 1x1 convolution to the classes, upsampled bilinearly by 2 and
    cropped to the input's size.
    """

    def __init__(self, width: int, num_classes: int) -> None:
        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU()]

        super().__init__(
            nn.AvgPool2d(2, ceil_mode=True),
            *block(width, 128),
            *block(128, 64),
            nn.Conv2d(64, num_classes, 1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., : x.shape[-2], : x.shape[-1]]


class PriorProjection(nn.Module):
    """A student whose input ends with prior channels that a learned layer projects before the network sees them.

    Input float (B, C + P, H, W): C image channels, then P prior channels (the whitened PCA components of the
    teacher's embedding, aligned with the image). The priors go through a 1x1 convolution to ``width`` channels,
    GroupNorm and GELU, and are concatenated with the image: ``net`` sees (B, C + width, H, W) (with
    ``keep_image=False``, the projected priors alone: (B, width, H, W)). A 1x1 convolution
    commutes with the bilinear resize that aligned the priors, so this is the projection of the embedding at its
    own grid, upsampled, at the cost of P input channels (measured against a 256-channel embedding in
    docs/RESULTS.md).
    """

    def __init__(
        self, net: nn.Module, image_channels: int, prior_channels: int, width: int, keep_image: bool = True
    ) -> None:
        super().__init__()
        if image_channels < 1 or prior_channels < 1 or width < 1:
            raise ValueError(f"channels must be >= 1: image {image_channels}, priors {prior_channels}, width {width}")
        self.image_channels, self.prior_channels, self.keep_image = image_channels, prior_channels, keep_image
        self.project = nn.Sequential(
            nn.Conv2d(prior_channels, width, kernel_size=1),
            nn.GroupNorm(math.gcd(4, width), width),
            nn.GELU(),
        )
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float (B, C + P, H, W) -> float logits (B, num_classes, H, W)."""
        if x.shape[1] != self.image_channels + self.prior_channels:
            raise ValueError(
                f"input of {x.shape[1]} channels; this student takes {self.image_channels} image channels and "
                f"{self.prior_channels} embedding-prior channels"
            )
        image, priors = x[:, : self.image_channels], x[:, self.image_channels :]
        projected = self.project(priors)
        return self.net(torch.cat([image, projected], dim=1) if self.keep_image else projected)


class ResUNet(nn.Module):
    """MONAI's residual :class:`~monai.networks.nets.UNet` for any input size.

    ``len(features)`` levels; each level after the first halves the resolution with a stride-2 convolution, so
    inputs are zero-padded at the bottom / right to a multiple of ``2 ** (len(features) - 1)`` and the logits
    cropped back. Each level has ``res_units`` residual units (Conv-Norm-Dropout-PReLU), ``norm`` is ``batch`` or
    ``instance``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: list[int],
        res_units: int = 2,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"student.features={features}: res_unet needs at least two levels")
        self.stride = 2 ** (len(features) - 1)
        self.net = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=tuple(features),
            strides=(2,) * (len(features) - 1),
            num_res_units=res_units,
            norm=norm,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float (B, in_channels, H, W) -> float logits (B, num_classes, H, W)."""
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.stride, (-width) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.net(x)[..., :height, :width]


def create_encoder(name: str, in_channels: int, pretrained: bool) -> nn.Module:
    """A timm feature-pyramid encoder: float (B, in_channels, H, W) -> list of (B, C_i, H / r_i, W / r_i).

    Raises ``ValueError`` for a name timm does not know, and ``RuntimeError`` (chained to timm's own error)
    when ``pretrained`` weights cannot be loaded.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"student.encoder={name!r} is not a timm model{hint}; list the names with "
            "timm.list_models('*pattern*'), e.g. timm.list_models('resnet*')"
        )
    try:
        return timm.create_model(name, features_only=True, pretrained=pretrained, in_chans=in_channels)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load the pretrained weights of timm encoder {name!r} ({type(err).__name__}: {err}). "
            "They come from the Hugging Face Hub: on a machine with internet access run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`, then copy its "
            "Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this machine (set HF_HUB_OFFLINE=1 to "
            "skip the network), or train from scratch with student.pretrained=false."
        ) from err


class TimmUNet(nn.Module):
    """A U-Net on a timm encoder, with a MONAI decoder.

    The encoder yields features at reductions r_0 < ... < r_n (each twice the previous, e.g. 2, 4, 8, 16, 32
    for ResNets and EfficientNets, 4, 8, 16, 32 for ConvNeXt). Starting from the deepest, each decoder stage
    (:class:`UpCat`) upsamples 2x with a transposed convolution, concatenates the encoder feature of that
    reduction and applies two 3x3 Conv-BN-LeakyReLU; a final stage upsamples by r_0 to the input resolution,
    applies ``TwoConv`` and a 1x1 convolution to the classes.

    Decoder widths follow ``features`` the way :class:`~monai.networks.nets.BasicUNet` does: the decoder
    output at reduction ``2**k`` has ``features[k]`` channels (``features[-1]`` when ``k`` is past the end),
    and the full-resolution stage has ``features[0]``. With the default ``[16, 32, 64, 128, 256]`` and a
    ResNet, the decoder widths are 256 (r=16), 128, 64, 32 (r=2) and 16 at full resolution.

    Inputs are zero-padded at the bottom / right to a multiple of the deepest reduction (e.g. 32) and the
    logits cropped back, so any H, W >= 16 works.

    ``dropout`` applies in every decoder convolution and ``norm`` (``batch`` / ``instance``) is the decoder's
    normalisation; the encoder is timm's, unchanged.
    """

    def __init__(
        self,
        encoder: str,
        in_channels: int,
        num_classes: int,
        features: list[int],
        dropout: float = 0.0,
        pretrained: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, in_channels, pretrained)
        channels = list(self.encoder.feature_info.channels())
        reductions = [int(r) for r in self.encoder.feature_info.reduction()]
        if len(reductions) < 2 or any(b != 2 * a for a, b in itertools.pairwise(reductions)):
            raise ValueError(
                f"timm encoder {encoder!r} has feature reductions {reductions}; timm_unet needs at least two "
                "levels, each downsampling 2x (CNN encoders such as resnet*, efficientnet*, convnext*)"
            )
        if reductions[0] & (reductions[0] - 1):
            raise ValueError(f"timm encoder {encoder!r} has a first reduction {reductions[0]} not a power of 2")
        self.stride = reductions[-1]
        self.output_nhwc = str(getattr(self.encoder, "output_fmt", "NCHW")).endswith("NHWC")

        def width(reduction: int) -> int:
            return features[min(int(math.log2(reduction)), len(features) - 1)]

        stages = []
        in_ch = channels[-1]
        for skip_ch, reduction in zip(reversed(channels[:-1]), reversed(reductions[:-1]), strict=True):
            out_ch = width(reduction)
            stages.append(UpCat(2, in_ch, skip_ch, out_ch, _ACT, norm, bias=True, dropout=dropout))
            in_ch = out_ch
        self.decoder = nn.ModuleList(stages)
        head: list[nn.Module] = []
        if reductions[0] > 1:
            head.append(UpSample(2, in_ch, features[0], scale_factor=reductions[0], mode="deconv"))
            in_ch = features[0]
        head.append(TwoConv(2, in_ch, features[0], _ACT, norm, bias=True, dropout=dropout))
        head.append(Conv["conv", 2](features[0], num_classes, kernel_size=1))
        self.head = nn.Sequential(*head)
        logger.debug(
            "timm_unet: encoder %s channels %s reductions %s, decoder widths %s",
            encoder,
            channels,
            reductions,
            [width(r) for r in reversed(reductions[:-1])] + [features[0]],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float (B, in_channels, H, W) -> float logits (B, num_classes, H, W)."""
        height, width = x.shape[-2:]
        pad_h = (-height) % self.stride
        pad_w = (-width) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.encoder(x)
        if self.output_nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        y = feats[-1]
        for stage, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            y = stage(y, skip)
        y = self.head(y)
        return y[..., :height, :width]
