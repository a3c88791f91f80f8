"""The mean teacher (Tarvainen & Valpola 2017, as in SSL4MIS).

Supervised loss + w(t) * MSE between the student's softmax on unlabeled images and the EMA model's softmax on the
same images with Gaussian noise (std ``method.ema_input_noise``, clamped at 2 std),
``w(t) = consistency_weight * exp(-5 (1 - t)^2)`` over the first ``consistency_rampup`` of the run.
``method.forward`` says whether the student sees the labeled and unlabeled batch in one pass or two
(:func:`~semisam.methods.base.joint_forward`).
"""

from __future__ import annotations

import torch

from semisam.methods.base import (
    Method,
    StepOutput,
    forward_pair,
    labeled_preview,
    unlabeled_preview,
)
from semisam.methods.losses import consistency_loss
from semisam.methods.ramps import consistency_weight


class MeanTeacher(Method):
    """Supervised loss plus the ramped consistency towards the EMA model on unlabeled images."""

    uses_unlabeled = True
    needs_ema = True

    def step(self, model, ema, labeled, unlabeled, iteration):
        if ema is None or unlabeled is None:
            raise ValueError(f"{self.cfg.method.name} needs an EMA model and an unlabeled batch")
        m = self.cfg.method
        logits_l, logits_u = forward_pair(model, labeled["image"], self.student_input(unlabeled), self.one_pass(model))
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
        preview = {**labeled_preview(labeled, logits_l), **unlabeled_preview(unlabeled, logits_u.argmax(1))}
        return StepOutput(loss, logs, preview)

    def student_input(self, unlabeled: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's view of the unlabeled batch (B, C, H, W): the same (weak) view the EMA model sees."""
        return unlabeled["image"]

    def unlabeled_terms(
        self, logits_u: torch.Tensor, unlabeled: dict, iteration: int, loss: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Further unlabeled losses of subclasses; none for the mean teacher."""
        return loss, {}
