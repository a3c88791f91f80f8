"""Intensity normalisation and the albumentations pipelines, applied jointly to every spatial map of a sample.

Arrays are channel-first, as everywhere in semisam: images (C, H, W) float32, label-like maps (H, W).
Albumentations works channel-last, so the conversion happens here and nowhere else.

A sample's maps fall in two families that must move together under every spatial transform:

- *continuous* maps (the image, and later the teacher's prior maps): interpolated bilinearly;
- *discrete or weight* maps (label, pseudo-label, weight map): interpolated by nearest neighbour, filled with 0
  where a rotation uncovers the border (0 = background for labels, 0 = ignored for weight maps).

Photometric ("strong") changes touch the image channels only, never priors or labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import albumentations as A
import cv2
import numpy as np

from semisam.config.schema import AugmentationConfig, DataConfig

# OpenCV (under albumentations' flips and warps) takes at most this many channels in one array: more continuous
# channels than this (a 256-channel embedding prior) are transformed in chunks under one seeded draw.
MAX_JOINT_CHANNELS = 128


def normalize_intensity(image: np.ndarray, modality: str, clip_percentiles: tuple[float, float]) -> np.ndarray:
    """Scale a raw image to roughly [0, 1], per channel.

    Args:
        image: float32 (C, *spatial), raw values as read (a whole case: a 2D image or a 3D volume).
        modality: ``mr``/``ct``: clip each channel to its [low, high] percentiles over the case, then scale to
            [0, 1]; ``rgb``: divide by 255; ``none``: unchanged (data stored already normalised, e.g. SSL4MIS h5).
        clip_percentiles: (low, high) percentiles in 0..100 for ``mr``/``ct``.

    Returns:
        float32 array of the same shape. A constant channel maps to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    if modality == "none":
        return image
    if modality == "rgb":
        return image / 255.0
    if modality not in ("mr", "ct"):
        raise ValueError(f"unknown modality {modality!r}")
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        lo, hi = np.percentile(image[c], clip_percentiles)
        scale = hi - lo
        out[c] = 0.0 if scale <= 0 else (np.clip(image[c], lo, hi) - lo) / scale
    return out


def build_spatial_transform(cfg: DataConfig, train: bool, resize: bool = True) -> A.Compose:
    """For training, the weak spatial augmentations (flips, 90° rotations, small-angle rotation / scaling), then
    (``resize``) a resize to ``cfg.image_size`` (H, W). Applied jointly through :func:`apply_joint`. Maps that are
    already at the training size (a :class:`~semisam.data.memory.SliceStore`) skip the resize."""
    height, width = cfg.image_size
    transforms: list = []
    if train:
        aug = cfg.augmentation
        if aug.rotate90:
            transforms.append(A.RandomRotate90(p=0.5))
        if aug.flip:
            transforms += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        if aug.rotate_limit > 0 or aug.scale_limit > 0:
            transforms.append(
                A.Affine(
                    rotate=(-aug.rotate_limit, aug.rotate_limit),
                    scale=(1 - aug.scale_limit, 1 + aug.scale_limit),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=0,
                    p=0.5,
                )
            )
    if resize:
        # Resize last, as SSL4MIS does: a 90-degree turn of a non-square image is then resized back to the size.
        transforms.append(A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    return A.Compose(transforms, seed=0)


def build_intensity_transform(aug: AugmentationConfig) -> A.Compose | None:
    """The weak pipeline's image-only part: brightness and contrast jitter of ``aug.weak_brightness_contrast``
    (fractions of the [0, 1] range), applied to every training sample; ``None`` when it is 0."""
    limit = aug.weak_brightness_contrast
    if limit <= 0:
        return None
    return A.Compose([A.RandomBrightnessContrast(brightness_limit=limit, contrast_limit=limit, p=0.8)], seed=0)


def build_photometric_transform(aug: AugmentationConfig) -> A.Compose:
    """Strong, image-only augmentations for images normalised to [0, 1]."""
    transforms: list = []
    if aug.brightness_contrast > 0:
        limit = aug.brightness_contrast
        transforms.append(A.RandomBrightnessContrast(brightness_limit=limit, contrast_limit=limit, p=0.8))
    if aug.gamma:
        transforms.append(A.RandomGamma(gamma_limit=(70, 150), p=0.5))
    if aug.blur:
        transforms.append(A.GaussianBlur(blur_limit=(3, 5), p=0.3))
    if aug.gaussian_noise > 0:
        transforms.append(A.GaussNoise(std_range=(0.0, aug.gaussian_noise), p=0.5))
    return A.Compose(transforms, seed=0)


def apply_joint(
    transform: A.Compose,
    continuous: Mapping[str, np.ndarray],
    discrete: Mapping[str, np.ndarray],
    seed: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Apply one random draw of ``transform`` to all maps of a sample.

    Args:
        transform: an albumentations pipeline (spatial transforms for ``discrete`` maps to follow).
        continuous: name -> float array (C, H, W); all share H, W. Stacked and interpolated bilinearly.
        discrete: name -> array (H, W) (labels int, weight maps float); nearest-neighbour, border filled with 0.
        seed: seeds the draw, so a sample's augmentation depends only on (seed, sample) and not on the
            worker or process that computes it (reproducible, resumable runs).

    Returns:
        (continuous, discrete) dicts with the same names, shapes (C, H', W') and (H', W'), same dtypes.
    """
    names = list(continuous)
    sizes = [continuous[n].shape[0] for n in names]
    stacked = np.concatenate([continuous[n] for n in names], axis=0).transpose(1, 2, 0)
    mask_names = list(discrete)
    masks = [np.ascontiguousarray(discrete[n]) for n in mask_names]
    if stacked.shape[-1] > MAX_JOINT_CHANNELS and seed is None:
        seed = int(np.random.randint(2**31 - 1))  # one draw for every chunk below
    parts = []
    for start in range(0, stacked.shape[-1], MAX_JOINT_CHANNELS):
        if seed is not None:  # the same seed before each chunk: the same draw, so every chunk moves alike
            transform.set_random_seed(seed)
        kwargs: dict = {"image": np.ascontiguousarray(stacked[..., start : start + MAX_JOINT_CHANNELS], np.float32)}
        if masks and start == 0:
            kwargs["masks"] = masks
        out = transform(**kwargs)
        part = out["image"]
        if part.ndim == 2:  # single-channel results may lose their channel axis
            part = part[..., None]
        parts.append(part.transpose(2, 0, 1))
        if start == 0:
            mask_out = out.get("masks", [])
    image = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    splits = np.cumsum(sizes)[:-1]
    cont_out = {n: np.ascontiguousarray(a) for n, a in zip(names, np.split(image, splits, axis=0), strict=True)}
    disc_out = {
        n: np.asarray(m).astype(discrete[n].dtype, copy=False) for n, m in zip(mask_names, mask_out, strict=True)
    }
    return cont_out, disc_out


def apply_photometric(transform: A.Compose, image: np.ndarray, seed: int | None = None) -> np.ndarray:
    """Apply image-only augmentations to a (C, H, W) float image in [0, 1]; returns (C, H, W) float32."""
    if not transform.transforms:
        return image
    if seed is not None:
        transform.set_random_seed(seed)
    out = transform(image=np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32))["image"]
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)
