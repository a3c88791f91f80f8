"""How the mean teacher feeds its student: separate passes keep batch-norm statistics of the labeled batch its
own (the default); the joint pass (SSL4MIS) normalises labeled images together with the unlabeled ones."""

import math
from types import SimpleNamespace

import pytest
import torch

from semisam.config.loader import load_config
from semisam.config.schema import ConfigError
from semisam.engine.ema import StudentEMA
from semisam.methods import Method, build_method
from semisam.methods.base import joint_forward
from semisam.student.unet import build_student

from .conftest import REPO


def _cfg(*extra):
    overrides = ["data.root=unused", "device=cpu", "method.name=mean_teacher", "method.consistency_weight=0"]
    overrides += ["student.arch=basic_unet", "student.norm=batch"]  # batch statistics: what a joint pass shares
    return load_config(REPO / "configs/demo.yaml", [*overrides, *extra])


def _batches(num_classes):
    gen = torch.Generator().manual_seed(0)
    labeled = {
        "image": torch.rand(2, 1, 32, 32, generator=gen),
        "label": torch.randint(0, num_classes, (2, 32, 32), generator=gen),
    }
    unlabeled = {"image": 3 * torch.rand(2, 1, 32, 32, generator=gen) + 2}  # other intensity statistics
    return labeled, unlabeled


def test_default_is_separate_passes_for_a_batch_norm_student():
    cfg = _cfg()
    assert cfg.method.forward == "auto"
    assert not joint_forward(build_student(cfg.student, 1, cfg.data.num_classes), cfg.method.forward)
    with pytest.raises(ConfigError, match="method.forward"):
        _cfg("method.forward=both")


@pytest.mark.parametrize("forward", ["separate", "joint"])
def test_labeled_loss_depends_on_the_unlabeled_batch_only_in_a_joint_pass(forward):
    cfg = _cfg(f"method.forward={forward}")
    torch.manual_seed(0)
    model = build_student(cfg.student, 1, cfg.data.num_classes).train()  # batch norm on batch statistics
    labeled, unlabeled = _batches(cfg.data.num_classes)
    with torch.no_grad():
        supervised = Method(cfg).step(model, None, labeled, None, 0).loss
        out = build_method(cfg).step(model, StudentEMA(model, 0.99), labeled, unlabeled, 0)
    same = torch.allclose(torch.tensor(out.logs["loss/supervised"]), supervised, atol=1e-6)
    assert same == (forward == "separate")
    assert out.preview["unlabeled_pred"].shape == (2, 32, 32)


def _semisam(*extra):
    overrides = ["data.root=unused", "device=cpu", "method.name=semisam_online", "schedule.iterations=1000"]
    overrides += ["pseudo_labels.warmup=0.2", "pseudo_labels.rampup=0.2", "pseudo_labels.weight=1.0"]
    return load_config(REPO / "configs/demo.yaml", [*overrides, *extra])


def test_pseudo_label_weight_ramps_from_the_first_bank_not_the_warmup():
    method = build_method(_semisam())
    refresher = SimpleNamespace(first_bank_iteration=None)  # refreshes at 200 and 400 skipped: no bank yet
    method.bank_source = refresher
    assert method.pseudo_label_weight(500) == 0.0
    refresher.first_bank_iteration = 600  # the first bank arrives late
    assert method.pseudo_label_weight(600) == pytest.approx(math.exp(-5))  # the start of the ramp, not its end
    assert method.pseudo_label_weight(700) == pytest.approx(math.exp(-5 * 0.5**2))
    assert method.pseudo_label_weight(800) == pytest.approx(1.0)


class RecordingModel(torch.nn.Module):
    """Logits from a 1x1 convolution, remembering every input it was given."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, num_classes, 1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        return self.conv(x)


@pytest.mark.parametrize("strong", [True, False])
def test_student_sees_the_strong_view_and_the_ema_the_weak_one(strong):
    cfg = _semisam(f"pseudo_labels.strong_augmentation={strong}", "method.ema_input_noise=0")
    method = build_method(cfg)
    assert method.strong_views() == int(strong)
    labeled, unlabeled = _batches(cfg.data.num_classes)
    unlabeled["strong_image"] = unlabeled["image"] + 1.0
    unlabeled["pseudo_label"] = torch.zeros(2, 32, 32, dtype=torch.int64)
    unlabeled["weight"] = torch.ones(2, 32, 32)
    student = RecordingModel(cfg.data.num_classes)
    ema = StudentEMA(RecordingModel(cfg.data.num_classes), 0.99)
    method.step(student, ema, labeled, unlabeled, 0)
    student_unlabeled = student.inputs[-1][-2:]  # one pass over labeled + unlabeled (no batch norm): the last two
    assert torch.equal(student_unlabeled, unlabeled["strong_image" if strong else "image"])
    assert torch.equal(ema.module.inputs[-1], unlabeled["image"])  # the consistency target: the weak view
