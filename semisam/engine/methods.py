"""Training methods: what one iteration computes from a labeled and an unlabeled batch.

Each method turns batches into a loss; the :class:`~semisam.engine.trainer.Trainer` owns everything else
(optimiser step, EMA update, logging, checkpoints). The loss of each method is written here and only here.

- ``supervised``: Dice + CE on the labeled batch (the unlabeled batch is never drawn).
- ``mean_teacher`` (Tarvainen & Valpola 2017, as in SSL4MIS): supervised loss + w(t) * MSE between the
  student's softmax on unlabeled images and the EMA model's softmax on the same images with Gaussian noise,
  ``w(t) = consistency_weight * exp(-5 (1 - t)^2)`` over the first ``consistency_rampup`` of the run.
  ``method.forward`` says whether the student sees the labeled and unlabeled batch in separate passes (the
  default: batch norm normalises each with its own statistics, and both passes update the running statistics used
  at eval) or in one joint pass as SSL4MIS does.
- ``semisam``: the mean-teacher loss (its consistency term off when ``consistency_weight`` is 0) + v(t) * a
  weighted Dice + CE towards the teacher's rectified pseudo-labels on unlabeled images, each pixel counted by
  its weight (0 where the rectification ignores it, ``1 - uncertainty`` of its label where it is kept); v(t)
  ramps from 0 at the first refresh that actually produced a bank (refreshes skipped for a weak model do not
  count: a late first bank must not arrive at full weight) to ``pseudo_labels.weight`` over
  ``pseudo_labels.rampup`` of the run. With ``pseudo_labels.strong_augmentation`` the student sees its unlabeled
  images with photometric (strong) augmentation on top of the spatial (weak) one, while the EMA model's
  consistency target is computed on the weak view (FixMatch's weak/strong split; the pseudo-labels themselves
  come from the un-augmented image at refresh time). SAMAug priors, when enabled, are already in the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from semisam.config.schema import RunConfig
from semisam.engine.ema import StudentEMA
from semisam.engine.losses import SupervisedLoss, WeightedDiceCELoss, consistency_loss
from semisam.engine.ramps import consistency_weight, sigmoid_rampup


@dataclass
class StepOutput:
    """The result of one method step.

    ``loss`` is the scalar to back-propagate; ``logs`` are floats for TensorBoard / metrics.csv;
    ``preview`` holds detached tensors for image grids: ``image`` (B, C, H, W; the raw image, without priors),
    ``label`` (B, H, W) and
    ``pred`` (B, H, W) of the labeled batch, and for methods that use them ``unlabeled_image`` / ``unlabeled_pred``.
    """

    loss: torch.Tensor
    logs: dict[str, float]
    preview: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base: supervised training on the labeled batch."""

    uses_unlabeled = False
    needs_ema = False

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        m = cfg.method
        self.supervised_loss = SupervisedLoss(cfg.data.num_classes, m.dice_weight, m.ce_weight)

    def step(
        self,
        model: torch.nn.Module,
        ema: StudentEMA | None,
        labeled: dict[str, torch.Tensor],
        unlabeled: dict[str, torch.Tensor] | None,
        iteration: int,
    ) -> StepOutput:
        """One iteration's loss. Batches hold ``image`` (B, C, H, W) and, if labeled, ``label`` (B, H, W)."""
        logits = model(labeled["image"])
        loss = self.supervised_loss(logits, labeled["label"])
        preview = {
            "image": labeled.get("raw_image", labeled["image"]),
            "label": labeled["label"],
            "pred": logits.argmax(1),
        }
        return StepOutput(loss, {"loss/supervised": float(loss.detach())}, _detach(preview))


class MeanTeacher(Method):
    """Supervised loss plus the ramped consistency towards the EMA model on unlabeled images."""

    uses_unlabeled = True
    needs_ema = True

    def step(self, model, ema, labeled, unlabeled, iteration):
        if ema is None or unlabeled is None:
            raise ValueError(f"{self.cfg.method.name} needs an EMA model and an unlabeled batch")
        m = self.cfg.method
        if m.forward == "joint":  # one pass, as SSL4MIS does: batch norm shares statistics across both batches
            num_labeled = labeled["image"].shape[0]
            logits = model(torch.cat([labeled["image"], self.student_input(unlabeled)]))
            logits_l, logits_u = logits[:num_labeled], logits[num_labeled:]
        else:  # each batch normalised by its own statistics
            logits_l, logits_u = model(labeled["image"]), model(self.student_input(unlabeled))
        sup = self.supervised_loss(logits_l, labeled["label"])
        loss = sup
        logs = {"loss/supervised": float(sup.detach())}
        if m.consistency_weight > 0:
            noise = torch.randn_like(unlabeled["image"]) * m.ema_input_noise
            noise = noise.clamp(-2 * m.ema_input_noise, 2 * m.ema_input_noise)
            with torch.no_grad():
                ema_logits = ema.module(unlabeled["image"] + noise)
            cons = consistency_loss(logits_u, ema_logits)
            weight = consistency_weight(
                iteration, self.cfg.schedule.iterations, m.consistency_weight, m.consistency_rampup
            )
            loss = loss + weight * cons
            logs.update({"loss/consistency": float(cons.detach()), "weight/consistency": weight})
        loss, extra = self.unlabeled_terms(logits_u, unlabeled, iteration, loss)
        logs.update(extra)
        logs["loss/total"] = float(loss.detach())
        preview = {
            "image": labeled.get("raw_image", labeled["image"]),
            "label": labeled["label"],
            "pred": logits_l.argmax(1),
            "unlabeled_image": unlabeled.get("raw_image", unlabeled["image"]),
            "unlabeled_pred": logits_u.argmax(1),
        }
        for key in ("pseudo_label", "weight", "uncertainty"):
            if key in unlabeled:
                preview[f"unlabeled_{key}"] = unlabeled[key]
        return StepOutput(loss, logs, _detach(preview))

    def student_input(self, unlabeled: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's view of the unlabeled batch (B, C, H, W): the same (weak) view the EMA model sees."""
        return unlabeled["image"]

    def unlabeled_terms(
        self, logits_u: torch.Tensor, unlabeled: dict, iteration: int, loss: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Further unlabeled losses of subclasses; none for the mean teacher."""
        return loss, {}


class BankSource(Protocol):
    """Where the pseudo-label bank comes from (the run's refresher): the iteration of the first refresh that
    produced a bank in this run, ``None`` while there is none."""

    @property
    def first_bank_iteration(self) -> int | None: ...


class SemiSAM(MeanTeacher):
    """The mean teacher plus the loss towards the frozen teacher's rectified pseudo-labels.

    ``bank_source``: set by the trainer to the run's refresher, so that the pseudo-label weight ramps from the
    first bank that exists rather than from the scheduled warm-up."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        m, pl = cfg.method, cfg.pseudo_labels
        self.pseudo_label_loss = WeightedDiceCELoss(cfg.data.num_classes, m.dice_weight, m.ce_weight)
        self.bank_source: BankSource | None = None
        # the trainer asks for a strong view of unlabeled images when this is set
        self.strong_unlabeled = pl.enabled and pl.strong_augmentation

    def student_input(self, unlabeled: dict[str, torch.Tensor]) -> torch.Tensor:
        """The strongly augmented view when the batch has one (``strong_image``), else the weak one."""
        if self.strong_unlabeled and "strong_image" in unlabeled:
            return unlabeled["strong_image"]
        return unlabeled["image"]

    def pseudo_label_weight(self, iteration: int) -> float:
        """v(t): 0 until a bank exists, then the ramp to ``pseudo_labels.weight`` over ``pseudo_labels.rampup`` of
        the run, counted from the first refresh that produced a bank. Without a ``bank_source`` (a method used
        outside the trainer) the ramp starts at the scheduled first refresh, ``pseudo_labels.warmup``."""
        pl, total = self.cfg.pseudo_labels, self.cfg.schedule.iterations
        if self.bank_source is not None:
            start = self.bank_source.first_bank_iteration
            if start is None:
                return 0.0
        else:
            start = pl.warmup * total
        if iteration < start:
            return 0.0
        if pl.mode == "rounds":  # a self-training round: its bank is there, and final, from the first step
            return pl.weight
        return pl.weight * sigmoid_rampup(iteration - start, pl.rampup * total)

    def unlabeled_terms(self, logits_u, unlabeled, iteration, loss):
        if "weight" not in unlabeled:  # pseudo-labels switched off (priors-only ablation)
            return loss, {}
        pl_loss = self.pseudo_label_loss(logits_u, unlabeled["pseudo_label"], unlabeled["weight"])
        weight = self.pseudo_label_weight(iteration)
        pixel_weight = unlabeled["weight"].float()
        logs = {
            "loss/pseudo_label": float(pl_loss.detach()),
            "weight/pseudo_label": weight,
            "pseudo/batch_fraction_kept": float((pixel_weight > 0).float().mean()),
            "pseudo/batch_mean_weight": float(pixel_weight.mean()),
        }
        return loss + weight * pl_loss, logs


METHODS: dict[str, type[Method]] = {"supervised": Method, "mean_teacher": MeanTeacher, "semisam": SemiSAM}


def build_method(cfg: RunConfig) -> Method:
    """The method named by ``cfg.method.name``."""
    try:
        return METHODS[cfg.method.name](cfg)
    except KeyError:
        raise ValueError(f"method.name={cfg.method.name!r} is not one of {sorted(METHODS)}") from None


def _detach(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in tensors.items()}
