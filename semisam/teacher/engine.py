"""The frozen SAM teacher as a batched engine: preprocess, embed, decode prompts.

Conventions used throughout (and by every caller in semisam):

- **Images** are ``float32`` numpy arrays ``(C, H, W)`` with values in ``[0, 1]``, ``C`` = 1 (replicated to RGB)
  or 3. ``(H, W)`` is the image's *original size*, in pixels.
- **Boxes** are ``(N, 4)`` float ``XYXY`` = ``(x_min, y_min, x_max, y_max)`` in the original image's pixel
  coordinates: ``x`` to the right (column), ``y`` down (row). **Points** are ``(N, P, 2)`` ``XY`` in the same
  frame, with labels ``(N, P)``: 1 foreground, 0 background. This is segment-anything's own convention.
- The **input size** ``(h, w)`` is the image's size after the teacher's resize (ResizeLongestSide: longest side
  = ``spec.encoder_size``; MedSAM: a square). The model input is that, normalised and zero-padded to
  ``(3, S, S)`` with ``S = spec.encoder_size``.
- **Embeddings** are ``float32`` ``(B, 256, e, e)`` (``e = 64`` for every real kind).
- **Mask logits** come back at the original size; ``logits > 0`` is the mask (``Sam.mask_threshold``).

Every tensor the engine returns lives on the teacher's device. The model is frozen: eval mode, parameters without
gradients, every call under ``torch.no_grad``; on CUDA the encoder and decoder run under autocast (``dtype``), and
results are returned as ``float32``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from semisam.config.schema import TeacherConfig
from semisam.teacher.checkpoints import resolve_checkpoint
from semisam.teacher.errors import TeacherError
from semisam.teacher.models import (
    INTENSITY_MINMAX,
    INTENSITY_SAM,
    RESIZE_LONGEST,
    RESIZE_SQUARE,
    TeacherSpec,
    build_sam,
    get_spec,
)
from semisam.utils import resolve_device
from semisam.version import cpu_has_native_bf16

logger = logging.getLogger("semisam")

TEACHER_VERSION = 1  # bump when the engine's numerical behaviour changes: it invalidates caches
DTYPE_NAMES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

Size = tuple[int, int]


@dataclass
class DecodeResult:
    """The teacher's answer for the prompts of one image.

    Attributes:
        logits: ``float32`` mask logits at the image's original size: ``(N, H, W)``, or ``(N, 3, H, W)`` with
            ``multimask``; ``logits > 0`` is the mask.
        iou: ``float32`` predicted IoU of each mask: ``(N,)``, or ``(N, 3)`` with ``multimask``.
    """

    logits: torch.Tensor
    iou: torch.Tensor


@dataclass
class _Prompts:
    """The prompts of one :meth:`SamTeacher.decode_boxes` call, image after image, in the resized input frame.

    Attributes:
        boxes: float32 ``(M, 4)`` XYXY, or ``None`` (points only).
        coords: float32 ``(M, P, 2)`` XY, or ``None`` (boxes only); labels: int ``(M, P)`` with ``coords``.
        counts: prompts per image (``M = sum(counts)``).
        classes: int64 ``(M,)`` class index of each prompt, or ``None`` (not given).
    """

    boxes: torch.Tensor | None
    coords: torch.Tensor | None
    labels: torch.Tensor | None
    counts: list[int]
    classes: torch.Tensor | None = None


class ClassPromptEmbedding(nn.Module):
    """A learned vector per class added to every sparse prompt token: how an adapted teacher knows which class a
    box asks for (a class-blind decoder trades one class for another: docs/RESULTS.md).

    Initialised to zero, so before training the teacher answers exactly as the published decoder does.

    Args:
        num_classes: ``K``, background included (row 0 is never asked for).
        dim: the prompt tokens' width (256 for every kind).
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, dim)
        nn.init.zeros_(self.embedding.weight)

    @property
    def num_classes(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, sparse: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``sparse`` ``(n, t, dim)`` prompt tokens, ``classes`` int ``(n,)`` -> the tokens with each prompt's
        class vector added."""
        return sparse + self.embedding(classes.to(sparse.device).long())[:, None].to(sparse.dtype)


def teacher_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``teacher.precision`` on ``device``; ``None`` means plain fp32.

    ``auto``: bf16 on CUDA (fp16 on GPUs without bf16); on a CPU, bf16 where the CPU has native bf16
    (:func:`cpu_has_native_bf16`), fp32 elsewhere. ``bf16`` on a CPU without native bf16 runs as asked, with a
    warning that it is emulated (slower than fp32); ``fp16`` on a CPU falls back to fp32 with a warning (CPU
    autocast has no fast fp16 path). The outputs differ from fp32 by rounding only; docs/BENCHMARKS.md has the
    measured agreement.
    """
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16", "fp16"):
        raise TeacherError(f"teacher.precision={precision!r} is not one of auto, fp32, fp16, bf16")
    if device.type != "cuda":
        native = cpu_has_native_bf16()
        if precision == "fp16":
            logger.warning("teacher.precision=fp16 is for CUDA; running the teacher in fp32 on %s", device)
            return None
        if precision == "bf16" and not native:
            logger.warning("teacher.precision=bf16 on a CPU without native bf16: emulated, slower than fp32")
        return torch.bfloat16 if (precision == "bf16" or native) else None
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class SamTeacher:
    """A frozen SAM in eval mode, no gradients, on a device with an autocast dtype.

    Args:
        sam: any ``segment_anything.modeling.Sam`` (see :mod:`semisam.teacher.models`); moved to ``device``.
        spec: what the model is; ``spec.encoder_size`` must equal ``sam.image_encoder.img_size``.
        device: where the model runs and results are returned.
        dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or ``None`` for fp32.
        checkpoint_sha256: the sha256 of the weights' file (names the teacher in cache manifests).
        embed_batch_size: images per encoder call (default of :meth:`embed`).
        decode_batch_size: prompts per decoder call (default of :meth:`decode_boxes`).

    An *adapted* teacher (:meth:`with_decoder`, :mod:`semisam.teacher.adapt`) shares this one's image and prompt
    encoders and has its own mask decoder and :class:`ClassPromptEmbedding`; :attr:`frozen` is the published
    teacher it came from (itself for a published one), :attr:`adaptation` the identity of its training.
    """

    def __init__(
        self,
        sam: Sam,
        spec: TeacherSpec,
        device: torch.device,
        dtype: torch.dtype | None,
        checkpoint_sha256: str | None,
        *,
        embed_batch_size: int = 8,
        decode_batch_size: int = 256,
    ) -> None:
        if sam.image_encoder.img_size != spec.encoder_size:
            raise TeacherError(
                f"teacher spec {spec.kind} says encoder_size={spec.encoder_size}, the model's encoder takes "
                f"{sam.image_encoder.img_size}"
            )
        if dtype not in DTYPE_NAMES:
            raise TeacherError(f"unsupported teacher dtype {dtype}; use torch.bfloat16, torch.float16 or None")
        if embed_batch_size <= 0 or decode_batch_size <= 0:
            raise ValueError("embed_batch_size and decode_batch_size must be positive")
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype
        self.checkpoint_sha256 = checkpoint_sha256
        self.embed_batch_size = embed_batch_size
        self.decode_batch_size = decode_batch_size
        self.model = sam.to(self.device).eval()
        self.model.requires_grad_(False)
        self.transform = ResizeLongestSide(spec.encoder_size)
        self.class_embedding: ClassPromptEmbedding | None = None
        self.adaptation: dict | None = None
        self.adaptation_scores: dict | None = None  # per class {"frozen", "adapted"} val Dice (adaptation.json)
        self.frozen: SamTeacher = self

    def with_decoder(
        self,
        decoder_state: dict[str, torch.Tensor] | None,
        class_embedding: ClassPromptEmbedding | None,
        adaptation: dict | None = None,
    ) -> SamTeacher:
        """A teacher sharing this one's image and prompt encoders (the same modules, never copied), with a copy of
        its mask decoder loaded with ``decoder_state`` (``None``: this one's weights) and ``class_embedding``.
        It is frozen like every teacher; :mod:`semisam.teacher.adapt` unfreezes the copy it trains."""
        decoder = copy.deepcopy(self.frozen.model.mask_decoder)
        if decoder_state is not None:
            decoder.load_state_dict(decoder_state)
        sam = Sam(
            image_encoder=self.model.image_encoder,
            prompt_encoder=self.model.prompt_encoder,
            mask_decoder=decoder,
            pixel_mean=self.model.pixel_mean.flatten().tolist(),
            pixel_std=self.model.pixel_std.flatten().tolist(),
        )
        adapted = SamTeacher(
            sam,
            self.spec,
            self.device,
            self.dtype,
            self.checkpoint_sha256,
            embed_batch_size=self.embed_batch_size,
            decode_batch_size=self.decode_batch_size,
        )
        if class_embedding is not None:
            adapted.class_embedding = class_embedding.to(self.device).eval().requires_grad_(False)
        adapted.adaptation = adaptation
        adapted.frozen = self.frozen
        return adapted

    # ------------------------------------------------------------------------------------------------------------
    # identity
    # ------------------------------------------------------------------------------------------------------------

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """``(channels, e, e)`` of one image's embedding."""
        e_h, e_w = self.model.prompt_encoder.image_embedding_size
        return (self.model.prompt_encoder.embed_dim, e_h, e_w)

    def manifest(self) -> dict:
        """The fields that name this teacher for caches: anything that changes its outputs."""
        return {
            "kind": self.spec.kind,
            "checkpoint_sha256": self.checkpoint_sha256,
            "preprocessing": self.spec.preprocessing,
            "encoder_size": self.spec.encoder_size,
            "embedding_shape": list(self.embedding_shape),
            "dtype": DTYPE_NAMES[self.dtype],
            "semisam_teacher_version": TEACHER_VERSION,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # geometry and preprocessing
    # ------------------------------------------------------------------------------------------------------------

    def input_size(self, original_size: Sequence[int]) -> Size:
        """``(h, w)``: the size an image of ``original_size`` ``(H, W)`` has after the teacher's resize."""
        height, width = int(original_size[0]), int(original_size[1])
        if self.spec.resize == RESIZE_SQUARE:
            return (self.spec.encoder_size, self.spec.encoder_size)
        return ResizeLongestSide.get_preprocess_shape(height, width, self.spec.encoder_size)

    def transform_coords(self, coords: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
        """``(..., 2)`` XY in original pixels -> XY in the resized input frame (float32, on the teacher's device)."""
        coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
        size = (int(original_size[0]), int(original_size[1]))
        if self.spec.resize == RESIZE_LONGEST:
            return self.transform.apply_coords_torch(coords, size)
        # MedSAM stretches the image: x scales by S / W, y by S / H (box_1024 = box / [W, H, W, H] * 1024).
        scale = coords.new_tensor([self.spec.encoder_size / size[1], self.spec.encoder_size / size[0]])
        return coords * scale

    def transform_boxes(self, boxes: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
        """``(N, 4)`` XYXY in original pixels -> XYXY in the resized input frame (float32)."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
        if self.spec.resize == RESIZE_LONGEST:
            return self.transform.apply_boxes_torch(boxes, (int(original_size[0]), int(original_size[1])))
        return self.transform_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def transform_image(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One image ``(C, H, W)`` float in [0, 1] -> ``(1, 3, h, w)`` float32 on the device, resized, in the
        0..255 pixel scale that ``Sam.preprocess`` (and ``SamPredictor.set_torch_image``) expects.

        Resizing is what ``ResizeLongestSide.apply_image_torch`` intends (bilinear, antialiased) at the size
        ``ResizeLongestSide.get_preprocess_shape`` gives; ``apply_image_torch`` itself cannot be used: it reads
        the size from the batch and channel dimensions (facebookresearch/segment-anything issue #218).
        Min-max kinds (MedSAM, LiteMedSAM) rescale the resized image to the full range, as their own inference
        code does.
        """
        x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"teacher input images must be (C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"teacher input images must be float in [0, 1], got dtype {x.dtype}")
        x = x.to(device=self.device, dtype=torch.float32)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        x = x[None] * 255.0
        size = self.input_size(x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
        if self.spec.intensity == INTENSITY_MINMAX:
            low, high = x.amin(), x.amax()
            x = (x - low) / torch.clamp(high - low, min=1e-8) * 255.0
        elif self.spec.intensity != INTENSITY_SAM:
            raise TeacherError(f"unknown intensity rule {self.spec.intensity!r} in teacher spec {self.spec.kind}")
        return x.contiguous()

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Size], list[Size]]:
        """Images ``(C, H, W)`` float32 in [0, 1] -> the model's input.

        Returns:
            ``(B, 3, S, S)`` float32 on the device (resized, normalised and zero-padded by ``Sam.preprocess``),
            the original sizes ``(H, W)`` and the input sizes ``(h, w)`` after resizing, one per image.
        """
        batch, original_sizes, input_sizes = [], [], []
        for image in images:
            resized = self.transform_image(image)
            original_sizes.append((int(image.shape[-2]), int(image.shape[-1])))
            input_sizes.append((int(resized.shape[-2]), int(resized.shape[-1])))
            batch.append(self.model.preprocess(resized))
        if not batch:
            size = self.spec.encoder_size
            return torch.empty((0, 3, size, size), device=self.device), [], []
        return torch.cat(batch), original_sizes, input_sizes

    # ------------------------------------------------------------------------------------------------------------
    # encoder and decoder
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> torch.Tensor:
        """Image embeddings ``(B, 256, e, e)`` float32 on the device, the encoder run ``batch_size`` images
        (default ``embed_batch_size``) at a time."""
        batch_size = batch_size or self.embed_batch_size
        chunks = []
        for start in range(0, len(images), batch_size):
            x, _, _ = self.preprocess(images[start : start + batch_size])
            with self._autocast():
                chunks.append(self.model.image_encoder(x).float())
        if not chunks:
            return torch.empty((0, *self.embedding_shape), device=self.device)
        return torch.cat(chunks)

    @torch.no_grad()
    def decode_boxes(
        self,
        embeddings: torch.Tensor,
        boxes: Sequence[torch.Tensor | np.ndarray] | None,
        original_sizes: Sequence[Sequence[int]],
        input_sizes: Sequence[Sequence[int]],
        multimask: bool = False,
        points: Sequence[torch.Tensor | np.ndarray] | None = None,
        point_labels: Sequence[torch.Tensor | np.ndarray] | None = None,
        batch_size: int | None = None,
        classes: Sequence[torch.Tensor | np.ndarray | Sequence[int]] | None = None,
    ) -> list[DecodeResult]:
        """Masks for box (and, for point-capable kinds, point) prompts on several images at once.

        Args:
            embeddings: ``(B, 256, e, e)``, any device / float dtype (e.g. a float16 cache on the CPU); row ``i``
                belongs to image ``i`` of the other arguments.
            boxes: per image, ``(N_i, 4)`` XYXY in image ``i``'s original pixel coordinates; ``None`` to prompt
                with points only.
            original_sizes: per image ``(H_i, W_i)``; input_sizes: per image ``(h_i, w_i)`` (from
                :meth:`preprocess` or :meth:`input_size`).
            multimask: return SAM's three masks per prompt instead of one.
            points, point_labels: per image ``(N_i, P, 2)`` XY original coordinates and ``(N_i, P)`` labels
                (1 foreground, 0 background); ``P`` must be the same for all images of the call. Only for kinds
                that accept points; a box-only kind raises :class:`TeacherError`.
            batch_size: prompts per decoder call (default ``decode_batch_size``).
            classes: per image, the class index ``(N_i,)`` each prompt asks for. An adapted, class-aware teacher
                needs them (:class:`ClassPromptEmbedding`); the published teacher ignores them.

        All prompts of all images go through the prompt encoder and the mask decoder together, ``batch_size``
        prompts per call; each prompt is decoded against its own image's embedding.

        Returns:
            one :class:`DecodeResult` per image, logits upsampled to ``(H_i, W_i)`` by ``Sam.postprocess_masks``.
        """
        self._check_decode_arguments(embeddings, boxes, original_sizes, input_sizes, points, point_labels)
        prompts = self._prompts_in_input_frame(boxes, points, point_labels, original_sizes)
        prompts.classes = self._prompt_classes(classes, prompts.counts)
        batch_size = batch_size or self.decode_batch_size
        low_res, iou = self._decode_in_batches(embeddings, prompts, multimask, batch_size)
        return self._results_per_image(low_res, iou, prompts.counts, original_sizes, input_sizes, multimask, batch_size)

    def _check_decode_arguments(
        self,
        embeddings: torch.Tensor,
        boxes: Sequence | None,
        original_sizes: Sequence[Sequence[int]],
        input_sizes: Sequence[Sequence[int]],
        points: Sequence | None,
        point_labels: Sequence | None,
    ) -> None:
        """Refuse arguments of :meth:`decode_boxes` that do not describe the same images (the per-image lists
        against the ``B`` rows of ``embeddings``), prompts this kind cannot take, or embeddings of another
        shape than ``(B, *embedding_shape)``."""
        n_images = int(embeddings.shape[0])
        if len(original_sizes) != n_images or len(input_sizes) != n_images:
            raise ValueError(
                f"{n_images} embeddings but {len(original_sizes)} original sizes and {len(input_sizes)} input sizes"
            )
        if points is not None and not self.spec.accepts_points:
            raise TeacherError(
                f"teacher {self.spec.kind} is box-only: it was trained with box prompts and cannot take points"
            )
        if boxes is None and points is None:
            raise ValueError("decode_boxes needs boxes or points")
        if boxes is not None and len(boxes) != n_images:
            raise ValueError(f"{n_images} embeddings but boxes for {len(boxes)} images")
        if points is not None and (point_labels is None or len(points) != n_images or len(point_labels) != n_images):
            raise ValueError(f"points and point_labels must be given for each of the {n_images} images")
        if tuple(embeddings.shape[1:]) != self.embedding_shape:
            raise ValueError(
                f"embeddings of shape {tuple(embeddings.shape)}; this teacher makes {self.embedding_shape}"
            )

    def _prompt_classes(self, classes: Sequence | None, counts: Sequence[int]) -> torch.Tensor | None:
        """The classes of every image's prompts, concatenated (``None`` where the teacher does not use them)."""
        if self.class_embedding is None:
            return None
        if classes is None or len(classes) != len(counts):
            raise TeacherError(
                "this adapted teacher knows the classes (teacher.adapt=decoder): decode_boxes needs the class of "
                "every prompt (classes=, one array per image)"
            )
        flat = []
        for i, (image_classes, count) in enumerate(zip(classes, counts, strict=True)):
            image_classes = torch.as_tensor(np.asarray(image_classes), dtype=torch.long).reshape(-1)
            if image_classes.numel() != count:
                raise ValueError(f"image {i}: {count} prompts but {image_classes.numel()} classes")
            flat.append(image_classes)
        joined = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.long)
        if joined.numel() and (int(joined.min()) < 1 or int(joined.max()) >= self.class_embedding.num_classes):
            raise ValueError(f"prompt classes must be foreground classes 1..{self.class_embedding.num_classes - 1}")
        return joined.to(self.device)

    def _prompts_in_input_frame(
        self,
        boxes: Sequence | None,
        points: Sequence | None,
        point_labels: Sequence | None,
        original_sizes: Sequence[Sequence[int]],
    ) -> _Prompts:
        """Every image's prompts checked, moved to the resized input frame and concatenated image after image.

        Boxes ``(N_i, 4)`` XYXY and points ``(N_i, P, 2)`` XY go from image ``i``'s original pixels to its input
        frame (:meth:`transform_boxes`, :meth:`transform_coords`), float32 on the device; labels become int.
        """
        box_list, coord_list, label_list, counts = [], [], [], []
        for i in range(len(original_sizes)):
            count = None
            if boxes is not None:
                box_i = torch.as_tensor(boxes[i], dtype=torch.float32, device=self.device)
                if box_i.ndim != 2 or box_i.shape[1] != 4:
                    raise ValueError(f"boxes of image {i} must be (N, 4) XYXY, got shape {tuple(box_i.shape)}")
                box_list.append(self.transform_boxes(box_i, original_sizes[i]))
                count = box_i.shape[0]
            if points is not None:
                coords = torch.as_tensor(points[i], dtype=torch.float32, device=self.device)
                labels = torch.as_tensor(point_labels[i], device=self.device).to(torch.int)
                if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
                    raise ValueError(
                        f"points of image {i} must be (N, P, 2) with labels (N, P), got {tuple(coords.shape)} and "
                        f"{tuple(labels.shape)}"
                    )
                if count is not None and coords.shape[0] != count:
                    raise ValueError(f"image {i}: {count} boxes but {coords.shape[0]} point sets")
                if coord_list and coords.shape[1] != coord_list[0].shape[1]:
                    raise ValueError("every image of one decode_boxes call must have the same number of points P")
                coord_list.append(self.transform_coords(coords, original_sizes[i]))
                label_list.append(labels)
                count = coords.shape[0]
            counts.append(int(count))
        return _Prompts(
            boxes=torch.cat(box_list) if box_list else None,
            coords=torch.cat(coord_list) if coord_list else None,
            labels=torch.cat(label_list) if label_list else None,
            counts=counts,
        )

    def _decode_in_batches(
        self, embeddings: torch.Tensor, prompts: _Prompts, multimask: bool, batch_size: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """All prompts through the decoder, ``batch_size`` at a time, each against its own image's embedding
        (moved to the device as float32 batch by batch).

        Returns:
            low-resolution float32 mask logits ``(M, m, 4e, 4e)`` and predicted IoU ``(M, m)`` of the ``M``
            prompts in :class:`_Prompts` order (``m`` = 3 with ``multimask``, else 1); ``None`` when ``M`` = 0.
        """
        image_index = torch.repeat_interleave(
            torch.arange(len(prompts.counts)), torch.tensor(prompts.counts, dtype=torch.long)
        )
        low_res, ious = [], []
        for start in range(0, int(image_index.numel()), batch_size):
            stop = start + batch_size
            rows = image_index[start:stop]
            image_embeddings = embeddings[rows.to(embeddings.device)].to(self.device, torch.float32)
            masks, iou = self.decode_low_res(
                image_embeddings,
                None if prompts.boxes is None else prompts.boxes[start:stop],
                None if prompts.coords is None else (prompts.coords[start:stop], prompts.labels[start:stop]),
                multimask,
                None if prompts.classes is None else prompts.classes[start:stop],
            )
            low_res.append(masks)
            ious.append(iou)
        return (torch.cat(low_res) if low_res else None), (torch.cat(ious) if ious else None)

    def _results_per_image(
        self,
        low_res: torch.Tensor | None,
        iou: torch.Tensor | None,
        counts: Sequence[int],
        original_sizes: Sequence[Sequence[int]],
        input_sizes: Sequence[Sequence[int]],
        multimask: bool,
        batch_size: int,
    ) -> list[DecodeResult]:
        """Split the decoded prompts back into images and upsample each image's logits to its original
        ``(H_i, W_i)`` with ``Sam.postprocess_masks`` (``batch_size`` masks at a time); an image without prompts
        gets empty ``(0, [3,] H_i, W_i)`` logits."""
        results = []
        offset = 0
        n_masks = 3 if multimask else 1
        for i, count in enumerate(counts):
            height, width = int(original_sizes[i][0]), int(original_sizes[i][1])
            if count == 0:
                logits = torch.zeros((0, n_masks, height, width), device=self.device)
                image_iou = torch.zeros((0, n_masks), device=self.device)
            else:
                input_size = (int(input_sizes[i][0]), int(input_sizes[i][1]))
                logits = torch.cat(
                    [
                        self.model.postprocess_masks(
                            low_res[j : min(j + batch_size, offset + count)], input_size, (height, width)
                        )
                        for j in range(offset, offset + count, batch_size)
                    ]
                )
                image_iou = iou[offset : offset + count]
            offset += count
            if not multimask:
                logits, image_iou = logits[:, 0], image_iou[:, 0]
            results.append(DecodeResult(logits=logits, iou=image_iou))
        return results

    def decode_low_res(
        self,
        image_embeddings: torch.Tensor,
        boxes: torch.Tensor | None,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        multimask: bool,
        classes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for n prompts, each with its own image embedding ``(n, 256, e, e)``, boxes
        ``(n, 4)`` / points already in the resized input frame, ``classes`` ``(n,)`` for a class-aware teacher.
        Returns float32 low-resolution logits ``(n, m, 4e, 4e)`` over the padded input frame and IoU ``(n, m)``.
        Gradients flow where the caller enables them (:mod:`semisam.teacher.adapt` trains through it).

        segment-anything's ``MaskDecoder.predict_masks`` assumes one image per call: it repeats
        ``image_embeddings`` once per prompt and adds the dense prompt embedding (``src = repeat(emb) + dense``).
        To decode prompts of different images in one call without changing that code, the per-prompt image
        embedding is folded into the dense prompt embedding and the decoder is given a zero image embedding:
        ``repeat(0) + (emb + dense)`` is exactly ``emb + dense``, so the results equal one call per image.
        """
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
            if self.class_embedding is not None:
                if classes is None:
                    raise TeacherError("this adapted teacher knows the classes: give the class of every prompt")
                sparse = self.class_embedding(sparse, classes)
            zero = image_embeddings.new_zeros((1, *image_embeddings.shape[1:]))
            masks, iou = self.model.mask_decoder(
                image_embeddings=zero,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=image_embeddings + dense,
                multimask_output=multimask,
            )
        return masks.float(), iou.float()


def build_teacher(
    cfg: TeacherConfig,
    sam: Sam | None = None,
    spec: TeacherSpec | None = None,
    checkpoint_sha256: str | None = None,
) -> SamTeacher:
    """The configured frozen teacher, ready to run.

    Without ``sam``: resolves (and if needed downloads and verifies) the checkpoint of ``cfg.kind`` and loads it
    (see :func:`~semisam.teacher.checkpoints.resolve_checkpoint`, :func:`~semisam.teacher.models.build_sam`).
    With ``sam`` (how tests inject :func:`~semisam.teacher.models.build_tiny_sam`): uses it with ``spec``
    (default: the spec of ``cfg.kind``) and ``checkpoint_sha256`` as given. Device from ``cfg.device``
    (``auto``: CUDA when available), autocast dtype from ``cfg.precision`` (see :func:`teacher_dtype`).
    """
    device = resolve_device(cfg.device)
    dtype = teacher_dtype(cfg.precision, device)
    if sam is None:
        spec = spec or get_spec(cfg.kind)
        path, checkpoint_sha256 = resolve_checkpoint(cfg)
        sam = build_sam(cfg.kind, path)
    else:
        spec = spec or get_spec(cfg.kind)
    teacher = SamTeacher(
        sam,
        spec,
        device,
        dtype,
        checkpoint_sha256,
        embed_batch_size=cfg.embed_batch_size or (8 if device.type == "cuda" else 1),
        decode_batch_size=cfg.decode_batch_size or (256 if device.type == "cuda" else 4),
    )
    logger.info(
        "teacher %s on %s (%s), checkpoint sha256 %s",
        spec.kind,
        device,
        DTYPE_NAMES[dtype],
        checkpoint_sha256,
    )
    return teacher
