"""How the mean teacher feeds its student: separate passes keep batch-norm statistics of the labeled batch its
own (the default); the joint pass (SSL4MIS) normalises labeled images together with the unlabeled ones."""

import pytest
import torch

from semisam.config.loader import load_config
from semisam.config.schema import ConfigError
from semisam.engine.ema import StudentEMA
from semisam.engine.methods import Method, build_method
from semisam.student.unet import build_student

from .conftest import REPO


def _cfg(*extra):
    overrides = ["data.root=unused", "device=cpu", "method.name=mean_teacher", "method.consistency_weight=0"]
    return load_config(REPO / "configs/demo.yaml", [*overrides, *extra])


def _batches(num_classes):
    gen = torch.Generator().manual_seed(0)
    labeled = {
        "image": torch.rand(2, 1, 32, 32, generator=gen),
        "label": torch.randint(0, num_classes, (2, 32, 32), generator=gen),
    }
    unlabeled = {"image": 3 * torch.rand(2, 1, 32, 32, generator=gen) + 2}  # other intensity statistics
    return labeled, unlabeled


def test_default_is_separate_passes():
    assert _cfg().method.forward == "separate"
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
