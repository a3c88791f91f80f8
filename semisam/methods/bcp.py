"""Bidirectional copy-paste (BCP; Bai et al., CVPR 2023), as its ACDC code trains (``method.bcp``).

Each batch is split in halves: labeled ``(l_a, y_a), (l_b, y_b)`` and unlabeled ``u_a, u_b``. One rectangle
``M`` (:func:`~semisam.methods.mixing.square_mask`, 2/3 of each side) is drawn per step.

- **Pre-train**, the first ``pretrain_fraction`` of the run: the input is ``l_a`` with ``l_b`` pasted inside
  ``M``; Dice + CE towards ``y_a`` outside and ``y_b`` inside, each region its own term.
- **Self-train**, the rest: at its first step the EMA model is reset to the student (BCP starts both from the
  pre-trained weights); the EMA model's argmax of ``u_a`` and ``u_b`` (with ``largest_component``, only each
  class's largest connected component) are their pseudo-labels. Two inputs: ``u_a`` with ``l_a`` pasted inside
  ``M``, and ``l_b`` with ``u_b`` pasted inside ``M``. Every region is supervised by where its pixels came from:
  towards a label with weight 1, towards a pseudo-label with weight ``unlabeled_weight``.

Each term is ``(Dice + CE) / 2`` counting the region's pixels only (BCP's ``mix_loss``, its Dice in V-Net
form), the step's loss the sum of its terms. A :class:`~semisam.methods.semisam.TeacherLabels` passed in lets
the frozen teacher's rectified pseudo-labels replace the EMA model's wherever the teacher itself labeled a pixel
(semisam on this backbone).
"""

from __future__ import annotations

import torch
from monai.transforms import KeepLargestConnectedComponent
from torch.nn.parallel import DistributedDataParallel

from semisam.config.schema import RunConfig
from semisam.methods.base import LabelJoiner, Method, StepOutput, labeled_preview, unlabeled_preview
from semisam.methods.losses import WeightedDiceCELoss
from semisam.methods.mixing import mix, square_mask


class BCP(Method):
    """Copy-paste between labeled pairs, then between labeled and EMA-pseudo-labeled unlabeled images."""

    uses_unlabeled = True
    needs_ema = True

    def __init__(self, cfg: RunConfig, teacher_labels: LabelJoiner | None = None) -> None:
        super().__init__(cfg)
        self.region_loss = WeightedDiceCELoss(cfg.data.num_classes, dice_weight=0.5, ce_weight=0.5, squared_pred=True)
        self.teacher_labels = teacher_labels
        self.switch = round(cfg.method.bcp.pretrain_fraction * cfg.schedule.iterations)
        self.largest = KeepLargestConnectedComponent(
            applied_labels=list(range(1, cfg.data.num_classes)), is_onehot=False, independent=True
        )

    def pseudo_labels(self, ema_model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The EMA model's argmax (B, H, W) int64, each foreground class cut to its largest component."""
        with torch.no_grad():
            labels = ema_model(images).argmax(1)
        if self.cfg.method.bcp.largest_component:
            labels = torch.stack([torch.as_tensor(self.largest(x[None]))[0] for x in labels]).to(labels)
        return labels

    def term(self, logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, pixel_weight=None):
        """``(Dice + CE) / 2`` of ``logits`` towards ``target`` on the pixels of ``region`` (bool (H, W)), each
        counted by ``pixel_weight`` (B, H, W) if given."""
        weight = region.float().expand_as(target)
        if pixel_weight is not None:
            weight = weight * pixel_weight
        return self.region_loss(logits, target, weight)

    def step(self, model, ema, labeled, unlabeled, iteration):
        if ema is None or unlabeled is None:
            raise ValueError(f"{self.cfg.method.name} needs an EMA model and an unlabeled batch")
        b = self.cfg.method.bcp
        image, label = labeled["image"], labeled["label"]
        half = image.shape[0] // 2
        region = square_mask(image.shape[-2], image.shape[-1], b.square_fraction, image.device)
        l_a, l_b, y_a, y_b = image[:half], image[half : 2 * half], label[:half], label[half : 2 * half]
        if iteration < self.switch:  # pre-train: copy-paste between labeled images
            logits = model(mix(l_a, l_b, region))
            loss = self.term(logits, y_a, ~region) + self.term(logits, y_b, region)
            logs = {"loss/supervised": float(loss.detach()), "bcp/self_training": 0.0}
            preview = labeled_preview({"image": mix(l_a, l_b, region), "label": mix(y_a, y_b, region)}, logits)
            return StepOutput(loss, {**logs, "loss/total": float(loss.detach())}, preview)
        if iteration == self.switch:  # self-training starts from the pre-trained student, in both models
            student = model.module if isinstance(model, DistributedDataParallel) else model
            ema.module.load_state_dict(student.state_dict())
        n = min(half, unlabeled["image"].shape[0] // 2)
        l_a, l_b, y_a, y_b = l_a[:n], l_b[:n], y_a[:n], y_b[:n]
        halves = [{k: v[s] for k, v in unlabeled.items() if torch.is_tensor(v)} for s in (slice(0, n), slice(n, 2 * n))]
        u_a, u_b = halves[0]["image"], halves[1]["image"]
        p_a, p_b = self.pseudo_labels(ema.module, u_a), self.pseudo_labels(ema.module, u_b)
        w_a = w_b = None
        logs: dict[str, float] = {"bcp/self_training": 1.0}
        if self.teacher_labels is not None:
            ones = torch.ones_like(p_a, dtype=torch.float32)
            p_a, w_a, extra = self.teacher_labels.join(p_a, ones, halves[0])
            p_b, w_b, _ = self.teacher_labels.join(p_b, ones, halves[1])
            logs.update(extra)
        inputs = [mix(u_a, l_a, region), mix(l_b, u_b, region)]
        if self.one_pass(model):
            logits_u, logits_l = model(torch.cat(inputs)).split(n)
        else:
            logits_u, logits_l = model(inputs[0]), model(inputs[1])
        sup = self.term(logits_u, y_a, region) + self.term(logits_l, y_b, ~region)
        unsup = self.term(logits_u, p_a, ~region, w_a) + self.term(logits_l, p_b, region, w_b)
        loss = sup + b.unlabeled_weight * unsup
        logs.update(
            {
                "loss/supervised": float(sup.detach()),
                "loss/pseudo_label": float(unsup.detach()),
                "loss/total": float(loss.detach()),
            }
        )
        preview = {
            **labeled_preview({"image": inputs[1], "label": mix(y_b, p_b, region)}, logits_l),
            **unlabeled_preview({"image": u_a, "pseudo_label": p_a}, logits_u.argmax(1)),
        }
        return StepOutput(loss, logs, preview)
