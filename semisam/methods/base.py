"""What every training method shares: the step's output, the base class, and what a method declares it needs.

A method turns one labeled and (if it declares ``uses_unlabeled``) one unlabeled batch into a loss. It says what
it needs through class attributes that the trainer reads, and the trainer knows no method by name:

- ``uses_unlabeled``: draw unlabeled batches (else the unlabeled pool is never read);
- ``needs_ema``: keep an EMA copy of the student (passed to :meth:`Method.step`);
- :meth:`Method.strong_views`: how many strongly (photometrically) augmented views of each unlabeled image the
  batch carries beside the weak one: ``strong_image`` and ``strong_image_2`` (B, C, H, W);
- ``bank_source``: set by the trainer when the run trains on the teacher's pseudo-labels, so that a method can ask
  when the first bank arrived; the bank's maps arrive in the unlabeled batch as ``pseudo_label`` (B, H, W) int64,
  ``weight`` (B, H, W) float in [0, 1] (0 = not trusted) and ``uncertainty`` (B, H, W) float.

Batches are dicts of tensors on the device: ``image`` (B, C, H, W) float, the student's input (image plus priors
when enabled), ``raw_image`` (the image alone, with priors), and ``label`` (B, H, W) int64 for labeled batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from semisam.config.schema import RunConfig
from semisam.methods.losses import SupervisedLoss


@dataclass
class StepOutput:
    """The result of one method step.

    ``loss`` is the scalar to back-propagate; ``logs`` are floats for TensorBoard / metrics.csv;
    ``preview`` holds detached tensors for image grids: ``image`` (B, C, H, W; the raw image, without priors),
    ``label`` (B, H, W) and ``pred`` (B, H, W) of the labeled batch, and for methods that use them
    ``unlabeled_image`` / ``unlabeled_pred`` and ``unlabeled_pseudo_label`` / ``_weight`` / ``_uncertainty``.
    """

    loss: torch.Tensor
    logs: dict[str, float]
    preview: dict[str, torch.Tensor] = field(default_factory=dict)


class EMAModel(Protocol):
    """The EMA copy of the student the trainer keeps (:class:`semisam.engine.ema.StudentEMA`)."""

    @property
    def module(self) -> nn.Module: ...


class BankSource(Protocol):
    """Where the pseudo-label bank comes from (the run's refresher or a round's fixed bank): the iteration of the
    first refresh that produced a bank in this run, ``None`` while there is none."""

    @property
    def first_bank_iteration(self) -> int | None: ...


class LabelJoiner(Protocol):
    """Joins other pseudo-labels to a backbone's own (:class:`semisam.methods.semisam.TeacherLabels`)."""

    def join(
        self, target: torch.Tensor, weight: torch.Tensor, unlabeled: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]: ...


class Method:
    """Base class: supervised Dice + CE on the labeled batch (the method ``supervised`` itself)."""

    uses_unlabeled = False
    needs_ema = False

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        m = cfg.method
        self.supervised_loss = SupervisedLoss(cfg.data.num_classes, m.dice_weight, m.ce_weight)
        self.bank_source: BankSource | None = None
        self._one_pass: dict[int, bool] = {}

    def one_pass(self, model: nn.Module) -> bool:
        """Whether labeled and unlabeled images share one pass of ``model`` (:func:`joint_forward` of
        ``method.forward``), worked out once per model rather than at every step."""
        key = id(model)
        if key not in self._one_pass:
            self._one_pass[key] = joint_forward(model, self.cfg.method.forward)
        return self._one_pass[key]

    def strong_views(self) -> int:
        """Strong views of each unlabeled image the batches must carry (0, 1 or 2)."""
        return 0

    def step(
        self,
        model: nn.Module,
        ema: EMAModel | None,
        labeled: dict[str, torch.Tensor],
        unlabeled: dict[str, torch.Tensor] | None,
        iteration: int,
    ) -> StepOutput:
        """One iteration's loss (0-based ``iteration``, the step about to be taken)."""
        logits = model(labeled["image"])
        loss = self.supervised_loss(logits, labeled["label"])
        return StepOutput(loss, {"loss/supervised": float(loss.detach())}, labeled_preview(labeled, logits))


def joint_forward(model: nn.Module, mode: str) -> bool:
    """Whether labeled and unlabeled images go through the student in one pass (``method.forward``): ``joint``
    yes, ``separate`` no, ``auto`` when no batch-norm layer would mix the two batches' statistics (instance norm
    normalises each image alone: one pass computes the same as two, more cheaply)."""
    if mode == "auto":
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return mode == "joint"


def forward_pair(model: nn.Module, first: torch.Tensor, second: torch.Tensor, joint: bool) -> tuple:
    """``(model(first), model(second))``, in one pass over the concatenation when ``joint``."""
    if not joint:
        return model(first), model(second)
    logits = model(torch.cat([first, second]))
    return logits[: first.shape[0]], logits[first.shape[0] :]


def labeled_preview(labeled: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The labeled batch's image grid tensors (detached)."""
    return detach(
        {"image": labeled.get("raw_image", labeled["image"]), "label": labeled["label"], "pred": logits.argmax(1)}
    )


def unlabeled_preview(unlabeled: dict[str, torch.Tensor], prediction: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unlabeled batch's image grid tensors (detached): image, ``prediction`` (B, H, W) int64, and the maps
    ``pseudo_label`` / ``weight`` / ``uncertainty`` if the batch has them."""
    preview = {"unlabeled_image": unlabeled.get("raw_image", unlabeled["image"]), "unlabeled_pred": prediction}
    for key in ("pseudo_label", "weight", "uncertainty"):
        if key in unlabeled:
            preview[f"unlabeled_{key}"] = unlabeled[key]
    return detach(preview)


def detach(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``tensors`` detached from the graph."""
    return {k: v.detach() for k, v in tensors.items()}
