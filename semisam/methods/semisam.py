"""semisam: the frozen teacher's rectified pseudo-labels on top of a backbone (``method.backbone``), in self-training
rounds (``semisam_rounds``) or refreshed online during one run (``semisam_online``).

The trainer passes the bank (refreshed online, or a self-training round's fixed bank) in the unlabeled batch:
``pseudo_label``, ``weight`` (0 where the rectification ignores the pixel, ``1 - uncertainty`` where it keeps it)
and ``pseudo_source`` (1 where the teacher's own label was kept, 2 where the rectification fell back on the model
that prompted it). SAMAug priors, when enabled, are already in the input.

- ``semisam_rounds`` on ``supervised`` (:class:`SemiSAMRound`), a round after round 0: the supervised loss on
  labeled images + ``pseudo_labels.weight`` x a weighted Dice + CE towards the round's fixed bank on the selected
  images, each pixel counted by its weight. No EMA, no consistency term.
- ``semisam_online`` on ``mean_teacher`` (:class:`SemiSAM`): the mean-teacher loss + v(t) x the same weighted
  Dice + CE towards the bank; v(t) ramps from 0 at the first refresh that actually produced a bank (refreshes
  skipped for a weak model do not count) to ``pseudo_labels.weight`` over ``pseudo_labels.rampup`` of the run.
- With ``pseudo_labels.strong_augmentation`` both see the unlabeled images with photometric augmentation (the
  EMA model's target stays on the weak view).
- backbone ``unimatch`` or ``bcp`` (both semisam methods): the backbone's own step, with :class:`TeacherLabels`
  replacing the backbone's pseudo-label (and its confidence mask) by the teacher's wherever the teacher itself
  labeled the pixel (SAMatch's idea, with semisam's rectification and per-class trust). The pixels the teacher
  did not label, and the unlabeled images it did not select in a round, keep learning from the backbone's own
  consistency.
"""

from __future__ import annotations

import torch

from semisam.config.schema import RunConfig, semisam_backbone, uses_rounds
from semisam.methods.base import BankSource, Method, StepOutput, forward_pair, labeled_preview, unlabeled_preview
from semisam.methods.bcp import BCP
from semisam.methods.losses import WeightedDiceCELoss
from semisam.methods.mean_teacher import MeanTeacher
from semisam.methods.ramps import sigmoid_rampup
from semisam.methods.unimatch import UniMatch

SOURCE_TEACHER = 1  # pseudo_source value of a pixel whose kept label is the teacher's (semisam.pseudolabel.rectify)


class _BankLoss:
    """What both of semisam's own steps share: the weighted Dice + CE towards the bank, its weight over the run,
    and the strong view of the unlabeled images. Mixed into a :class:`Method` (it reads ``cfg`` and
    ``bank_source``)."""

    cfg: RunConfig
    bank_source: BankSource | None

    def _init_bank_loss(self, cfg: RunConfig) -> None:
        m = cfg.method
        self.pseudo_label_loss = WeightedDiceCELoss(cfg.data.num_classes, m.dice_weight, m.ce_weight)
        self.strong_unlabeled = cfg.pseudo_labels.strong_augmentation

    def strong_views(self) -> int:
        return int(self.strong_unlabeled)

    def student_input(self, unlabeled: dict[str, torch.Tensor]) -> torch.Tensor:
        """The strongly augmented view when the batch has one (``strong_image``), else the weak one."""
        if self.strong_unlabeled and "strong_image" in unlabeled:
            return unlabeled["strong_image"]
        return unlabeled["image"]

    def pseudo_label_weight(self, iteration: int) -> float:
        """v(t): 0 until a bank exists, then the ramp to ``pseudo_labels.weight`` over ``pseudo_labels.rampup`` of
        the run, counted from the first refresh that produced a bank; in a self-training round, the full weight
        from the bank's first step. Without a ``bank_source`` (a method used outside the trainer) the ramp starts
        at the scheduled first refresh, ``pseudo_labels.warmup``."""
        pl, total = self.cfg.pseudo_labels, self.cfg.schedule.iterations
        if self.bank_source is not None:
            start = self.bank_source.first_bank_iteration
            if start is None:
                return 0.0
        else:
            start = pl.warmup * total
        if iteration < start:
            return 0.0
        if uses_rounds(self.cfg):  # a self-training round: its bank is there, and final, from the first step
            return pl.weight
        return pl.weight * sigmoid_rampup(iteration - start, pl.rampup * total)

    def unlabeled_terms(self, logits_u, unlabeled, iteration, loss):
        """``loss`` + the weighted loss towards the bank on the unlabeled batch, and its logs."""
        if "weight" not in unlabeled:  # no bank in this batch
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


class SemiSAM(_BankLoss, MeanTeacher):
    """``semisam_online`` on the mean teacher: the mean teacher plus the loss towards the teacher's bank."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self._init_bank_loss(cfg)


class SemiSAMRound(_BankLoss, Method):
    """A round after round 0 of ``semisam_rounds`` on the ``supervised`` backbone: the supervised loss on the
    labeled batch + the loss towards the round's fixed bank on the selected pseudo-labeled images. The student
    alone: no EMA model is kept, no consistency term."""

    uses_unlabeled = True
    needs_ema = False

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self._init_bank_loss(cfg)

    def step(self, model, ema, labeled, unlabeled, iteration):
        if unlabeled is None:
            raise ValueError(f"{self.cfg.method.name} needs a batch of pseudo-labeled images")
        logits_l, logits_u = forward_pair(model, labeled["image"], self.student_input(unlabeled), self.one_pass(model))
        sup = self.supervised_loss(logits_l, labeled["label"])
        loss, logs = self.unlabeled_terms(logits_u, unlabeled, iteration, sup)
        logs = {"loss/supervised": float(sup.detach()), **logs, "loss/total": float(loss.detach())}
        preview = {**labeled_preview(labeled, logits_l), **unlabeled_preview(unlabeled, logits_u.argmax(1))}
        return StepOutput(loss, logs, preview)


class TeacherLabels:
    """Joins the teacher's rectified pseudo-labels to a backbone's own: where the bank's pixel is the teacher's
    (``pseudo_source == 1``, weight > 0), its label and weight replace the backbone's; elsewhere the backbone's
    stay. Batches without a bank (``weight`` absent: pseudo-labels off) pass through unchanged."""

    def join(
        self, target: torch.Tensor, weight: torch.Tensor, unlabeled: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``target`` (B, H, W) int64 and ``weight`` (B, H, W) float of the backbone -> the joined pair, and the
        share of pixels the teacher labeled (``pseudo/teacher_fraction``)."""
        if "weight" not in unlabeled or "pseudo_source" not in unlabeled:
            return target, weight, {}
        teacher = (unlabeled["pseudo_source"] == SOURCE_TEACHER) & (unlabeled["weight"] > 0)
        target = torch.where(teacher, unlabeled["pseudo_label"].to(target.dtype), target)
        weight = torch.where(teacher, unlabeled["weight"].to(weight.dtype), weight)
        return target, weight, {"pseudo/teacher_fraction": float(teacher.float().mean())}


def build_semisam(cfg: RunConfig) -> Method:
    """``semisam_rounds`` or ``semisam_online`` on its backbone (:func:`~semisam.config.schema.semisam_backbone`)."""
    backbone = semisam_backbone(cfg)
    if backbone == "supervised" and uses_rounds(cfg):
        return SemiSAMRound(cfg)
    if backbone == "mean_teacher" and not uses_rounds(cfg):
        return SemiSAM(cfg)
    if backbone == "unimatch":
        return UniMatch(cfg, teacher_labels=TeacherLabels())
    if backbone == "bcp":
        return BCP(cfg, teacher_labels=TeacherLabels())
    raise ValueError(f"method.backbone={backbone!r} is not a backbone of method.name={cfg.method.name}")
