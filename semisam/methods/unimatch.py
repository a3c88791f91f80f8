"""UniMatch (Yang et al., CVPR 2023; its medical version), and FixMatch as a special case.

One step, with ``u`` the unlabeled batch (weak view), ``s_1, s_2`` its strong views (``method.unimatch``):

1. the student, in train mode and without gradient, predicts the weak view: hard pseudo-labels ``y``, kept where
   the max probability is at least ``confidence`` (the rest ignored: zero weight);
2. each strong view is CutMixed with the next image of the batch (:func:`~semisam.methods.mixing.partner`; UniMatch
   draws a second unlabeled batch, here the same batch rolled by one gives every image a partner with its own
   pseudo-label at no extra forward), its target and ignore mask mixed with the same box;
3. the labeled batch and the strong views go through the student (one pass when ``method.forward`` allows);
   with ``feature_perturbation`` the weak view is also decoded from Dropout2d-perturbed encoder features
   (:func:`~semisam.student.perturb.feature_dropout`; UniMatch shares the encoder pass of step 1, here a second
   pass computes the same with instance norm and a plain student);
4. ``L_x`` is Dice + CE on the labeled batch, every unlabeled term a loss towards ``y`` counting kept pixels only
   (``unlabeled_loss``: by default cross-entropy summed over the kept pixels and averaged over all of them, as
   FixMatch and UniMatch on natural images; ``dice`` is UniMatch's medical Dice over the kept pixels, V-Net form):
   ``loss = (L_x + fp_weight * L_fp + (1 - fp_weight) * mean_k L_s_k) / 2``.

``strong_views: 1`` with ``feature_perturbation: false`` is FixMatch (Sohn et al. 2020) with CutMix.

A :class:`~semisam.methods.semisam.TeacherLabels` passed in lets the frozen teacher's rectified pseudo-labels replace
``y`` (and its mask) wherever the teacher itself labeled a pixel (semisam on this backbone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semisam.config.schema import RunConfig
from semisam.methods.base import LabelJoiner, Method, StepOutput, labeled_preview, unlabeled_preview
from semisam.methods.losses import WeightedDiceCELoss
from semisam.methods.mixing import cutmix_masks, mix, partner
from semisam.student.perturb import feature_dropout


class UniMatch(Method):
    """Weak-to-strong consistency with CutMix and a feature-perturbed stream."""

    uses_unlabeled = True

    def __init__(self, cfg: RunConfig, teacher_labels: LabelJoiner | None = None) -> None:
        super().__init__(cfg)
        self.dice = WeightedDiceCELoss(cfg.data.num_classes, dice_weight=1.0, ce_weight=0.0, squared_pred=True)
        self.teacher_labels = teacher_labels

    def unlabeled_loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One unlabeled term (``method.unimatch.unlabeled_loss``): logits (B, C, H, W), target (B, H, W) int64,
        weight (B, H, W) float in [0, 1] -> float32 scalar. Ignored pixels (weight 0) get no gradient."""
        kind = self.cfg.method.unimatch.unlabeled_loss
        if kind == "ce":  # summed over the kept pixels, averaged over all of them (FixMatch, UniMatch's natural images)
            ce = F.cross_entropy(logits.float(), target, reduction="none")
            return (ce * weight).sum() / max(weight.numel(), 1)
        dice = self.dice(logits, target, weight)
        return dice * weight.float().mean() if kind == "scaled_dice" else dice

    def strong_views(self) -> int:
        return self.cfg.method.unimatch.strong_views

    def weak_targets(
        self, model: torch.nn.Module, unlabeled: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """Of the weak view: the pseudo-labels (B, H, W) int64 and their weights (B, H, W) float the loss uses,
        the student's own max probability (B, H, W) and argmax (B, H, W), and logs."""
        with torch.no_grad():
            probs = torch.softmax(model(unlabeled["image"]).float(), dim=1)
        confidence, prediction = probs.max(dim=1)
        target = prediction
        weight = (confidence >= self.cfg.method.unimatch.confidence).float()
        logs = {"unimatch/kept_fraction": float(weight.mean())}
        if self.teacher_labels is not None:
            target, weight, extra = self.teacher_labels.join(target, weight, unlabeled)
            logs.update(extra)
        return target, weight, confidence, prediction, logs

    def step(self, model, ema, labeled, unlabeled, iteration):
        if unlabeled is None:
            raise ValueError(f"{self.cfg.method.name} needs an unlabeled batch")
        um = self.cfg.method.unimatch
        target, weight, confidence, prediction, logs = self.weak_targets(model, unlabeled)
        batch, _, height, width = unlabeled["image"].shape
        other = partner(batch, target.device)
        views, targets, weights = [], [], []
        for key in ("strong_image", "strong_image_2")[: um.strong_views]:
            if key not in unlabeled:
                raise ValueError(f"the unlabeled batch has no {key!r}: the method asks for {um.strong_views} views")
            box = cutmix_masks(
                batch, height, width, um.cutmix_prob, tuple(um.cutmix_area), tuple(um.cutmix_aspect), target.device
            )
            views.append(mix(unlabeled[key], unlabeled[key][other], box))
            targets.append(mix(target, target[other], box))
            weights.append(mix(weight, weight[other], box))
        images = [labeled["image"], *views]
        if self.one_pass(model):
            outputs = model(torch.cat(images)).split([t.shape[0] for t in images])
        else:
            outputs = [model(t) for t in images]
        logits_x, logits_s = outputs[0], outputs[1:]
        sup = self.supervised_loss(logits_x, labeled["label"])
        strong = [self.unlabeled_loss(lg, t, w) for lg, t, w in zip(logits_s, targets, weights, strict=True)]
        unsup = torch.stack(strong).mean()
        logs.update({"loss/supervised": float(sup.detach())})
        for k, value in enumerate(strong, start=1):
            logs[f"loss/strong_{k}"] = float(value.detach())
        if um.feature_perturbation:
            with feature_dropout(model, um.feature_dropout):
                logits_fp = model(unlabeled["image"])
            fp = self.unlabeled_loss(logits_fp, target, weight)
            unsup = um.fp_weight * fp + (1 - um.fp_weight) * unsup
            logs["loss/feature_perturbed"] = float(fp.detach())
        loss = (sup + unsup) / 2
        logs["loss/total"] = float(loss.detach())
        # the weak view: its image, the targets made from it, their weights, 1 - confidence, the prediction
        shown = {**unlabeled, "pseudo_label": target, "weight": weight, "uncertainty": 1 - confidence}
        preview = {**labeled_preview(labeled, logits_x), **unlabeled_preview(shown, prediction)}
        return StepOutput(loss, logs, preview)
