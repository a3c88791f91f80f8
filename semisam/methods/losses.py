"""Loss terms: supervised Dice + CE, its per-pixel weighted form (pseudo-labels), mean-teacher consistency.

Conventions for every loss here: ``logits`` are float (B, C, H, W) raw network outputs (any float dtype; they
are computed in float32), labels are int64 (B, H, W) class indices in ``[0, C)``, and the result is a float32
scalar tensor attached to the graph of ``logits``.

The Dice term is the SSL4MIS one: soft Dice per class with intersections and sums taken over the whole batch
(``batch=True``), background included, averaged over classes, with MONAI's smoothing constants (1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from semisam.utils import SMOOTH


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if logits.dim() != 4 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must be (B, {num_classes}, H, W), got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must be (B, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")


class SupervisedLoss(nn.Module):
    """``dice_weight * Dice + ce_weight * CE`` on hard labels, via MONAI's :class:`DiceCELoss`.

    SSL4MIS uses 0.5 * (CE + Dice). Call with logits float (B, C, H, W) and target int64 (B, H, W) with values
    in ``[0, num_classes)``; returns a float32 scalar. Out-of-range labels raise ``ValueError``.
    """

    def __init__(self, num_classes: int, dice_weight: float = 0.5, ce_weight: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2 (background included)")
        if dice_weight < 0 or ce_weight < 0:
            raise ValueError(f"dice_weight={dice_weight} and ce_weight={ce_weight} must be >= 0")
        self.num_classes = num_classes
        self.loss = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            include_background=True,
            batch=True,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits float (B, C, H, W), target int64 (B, H, W) -> float32 scalar."""
        _check_inputs(logits, target, self.num_classes)
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            low, high = int(target.min()), int(target.max())
            raise ValueError(f"target labels span [{low}, {high}], outside [0, {self.num_classes})")
        return self.loss(logits.float(), target.long().unsqueeze(1))


class WeightedDiceCELoss(nn.Module):
    """``dice_weight * Dice_w + ce_weight * CE_w`` where each pixel counts by a weight in [0, 1].

    For pseudo-labels: the weight map says how much each pixel's label is trusted (0 = ignored).

    - ``CE_w = sum_p w_p * CE_p / sum_p w_p`` (the weighted mean of per-pixel cross-entropy).
    - ``Dice_w = mean_c [1 - (2 sum_p w_p s_pc y_pc + eps) / (sum_p w_p s_pc + sum_p w_p y_pc + eps)]`` with
      ``s`` the softmax, ``y`` the one-hot label, sums over the batch and pixels, eps = 1e-5. This is MONAI's
      ``DiceLoss(batch=True)`` with every pixel counted ``w_p`` times. MONAI's ``MaskedDiceLoss`` is not used:
      it multiplies both the prediction and the label by the mask, so a fractional weight enters the
      intersection squared (w^2) but the sums once (w), which is only a weighted Dice for binary masks.

    ``squared_pred`` takes the V-Net form of the sums, ``sum_p w_p s_pc^2 + sum_p w_p y_pc^2`` (MONAI's
    ``squared_pred``; the Dice of SSL4MIS, UniMatch and BCP). It matters for a class absent from the kept pixels
    (a pseudo-label batch of confident background): with plain sums its term ``1 - eps / (sum_p w_p s_pc + eps)``
    has a gradient ``eps / (sum + eps)^2`` that explodes as the class's probabilities vanish and drives the
    student to predict background everywhere; with squares the gradient vanishes with them.

    Pixels whose label equals ``ignore_index`` (if not ``None``) get weight 0 whatever ``weight`` says; other
    labels must lie in ``[0, num_classes)``. Zero-weight pixels have no influence at all on the value or the
    gradient. With zero total weight (nothing trusted) the loss is exactly 0 and still a function of the
    logits (``requires_grad`` and a ``grad_fn``), so ``backward()`` works and yields zero gradients.
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 0.5,
        ce_weight: float = 0.5,
        ignore_index: int | None = 255,
        squared_pred: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2 (background included)")
        if dice_weight < 0 or ce_weight < 0:
            raise ValueError(f"dice_weight={dice_weight} and ce_weight={ce_weight} must be >= 0")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a valid class for num_classes={num_classes}")
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.squared_pred = squared_pred

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Logits float (B, C, H, W), target int64 (B, H, W), weight float (B, H, W) in [0, 1] -> scalar."""
        _check_inputs(logits, target, self.num_classes)
        if weight.shape != target.shape or not weight.dtype.is_floating_point:
            raise ValueError(f"weight must be float {tuple(target.shape)}, got {weight.dtype} {tuple(weight.shape)}")
        if weight.numel() and (float(weight.min()) < 0 or float(weight.max()) > 1):
            raise ValueError(f"weight values span [{float(weight.min())}, {float(weight.max())}], outside [0, 1]")
        weight = weight.float()
        target = target.long()
        if self.ignore_index is not None:
            ignored = target == self.ignore_index
            weight = weight.masked_fill(ignored, 0.0)
            target = target.masked_fill(ignored, 0)
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            low, high = int(target.min()), int(target.max())
            raise ValueError(
                f"target labels span [{low}, {high}], outside [0, {self.num_classes})"
                + (f" and are not ignore_index={self.ignore_index}" if self.ignore_index is not None else "")
            )
        logits = logits.float()
        total = weight.sum()
        # tiny instead of 0: the numerator is exactly 0 when the total weight is, so 0 / tiny = 0 keeps a
        # finite gradient path; any positive total of normal floats is unaffected.
        denom = total.clamp_min(torch.finfo(total.dtype).tiny)
        ce = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / denom

        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        w = weight.unsqueeze(1)
        dims = (0, 2, 3)
        intersection = (w * probs * onehot).sum(dims)
        pred = probs * probs if self.squared_pred else probs
        sums = (w * pred).sum(dims) + (w * onehot).sum(dims)  # onehot^2 = onehot
        dice = (1.0 - (2.0 * intersection + SMOOTH) / (sums + SMOOTH)).mean()
        return self.dice_weight * dice + self.ce_weight * ce


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean-teacher consistency: mean over all elements of ``(softmax(student) - softmax(teacher))**2``.

    As SSL4MIS's ``softmax_mse_loss`` reduced by the mean. Both are float (B, C, H, W) logits; the teacher is
    detached (no gradient flows to it). Returns a float32 scalar.
    """
    if student_logits.shape != teacher_logits.shape:
        shapes = f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        raise ValueError(f"student and teacher logits differ in shape: {shapes}")
    student = torch.softmax(student_logits.float(), dim=1)
    teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
    return F.mse_loss(student, teacher)
