"""The semi-supervised backbones (UniMatch / FixMatch, BCP) and semisam on them: what reaches their losses.

A model whose logits spell out the class written in its input (channel 0 holds a class index) makes every
pseudo-label readable from the image: after any mixing, each pixel's target must be the class its input pixel
carries, which fails if an image and its target are mixed with different regions."""

import math

import pytest
import torch
from monai.networks.layers.simplelayers import SkipConnection

from semisam.config.loader import load_config, unused_keys
from semisam.config.schema import ConfigError
from semisam.engine.ema import StudentEMA
from semisam.engine.trainer import Trainer
from semisam.methods import BCP, METHOD_REGISTRY, UniMatch, build_method
from semisam.methods.base import joint_forward
from semisam.methods.mixing import cutmix_masks, mix, partner, square_mask
from semisam.methods.semisam import SemiSAM, SemiSAMRound, TeacherLabels
from semisam.student.perturb import feature_dropout
from semisam.student.unet import build_student

from .conftest import REPO, scrambled_copy, tiny_overrides

H = W = 16
CLASSES = 3


def _cfg(*extra):
    overrides = ["data.root=unused", "device=cpu", "schedule.iterations=100", *extra]
    return load_config(REPO / "configs/demo.yaml", overrides)


class ClassEcho(torch.nn.Module):
    """Logits ``-10 (x_0 - c)^2 + b_c`` (b = 0 learnable): the argmax is the class written in channel 0, confident
    (softmax > 0.99) where x_0 is an integer, unsure half-way between two. Remembers its inputs."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(CLASSES))
        self.skip = SkipConnection(torch.nn.Identity())  # a "decoder" for the feature perturbation to drop
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach())
        x = self.skip(x[:, :1])[:, 1:]
        classes = torch.arange(CLASSES, dtype=x.dtype).view(1, -1, 1, 1)
        return -10 * (x - classes) ** 2 + self.bias.view(1, -1, 1, 1)


class RecordingLoss(torch.nn.Module):
    """Wraps a weighted loss and keeps every (target, weight) pair it is called with."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.calls = loss, []

    def forward(self, logits, target, weight):
        self.calls.append((logits, target.clone(), weight.clone()))
        return self.loss(logits, target, weight)


def _class_images(classes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class indices -> (B, 1, H, W) float images that spell them."""
    return classes[:, None].float()


def _random_classes(batch, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, CLASSES, (batch, H, W), generator=gen)


def _unimatch_cfg(*extra):
    return _cfg("method.name=unimatch", f"data.num_classes={CLASSES}", "data.class_names=[a,b,c]", *extra)


def _unlabeled(batch=4, seed=1):
    classes = _random_classes(batch, seed)
    image = _class_images(classes)
    return {"image": image, "strong_image": image.clone(), "strong_image_2": image.clone()}, classes


def test_registry_matches_the_schema_and_each_method_declares_its_views():
    from semisam.config.schema import METHOD_NAMES

    assert tuple(METHOD_REGISTRY) == METHOD_NAMES
    assert build_method(_unimatch_cfg()).strong_views() == 2
    assert build_method(_unimatch_cfg("method.unimatch.strong_views=1")).strong_views() == 1
    assert build_method(_cfg("method.name=bcp")).strong_views() == 0
    for name in ("semisam_rounds", "semisam_online"):
        assert isinstance(build_method(_cfg(f"method.name={name}", "method.backbone=unimatch")), UniMatch)
        assert isinstance(build_method(_cfg(f"method.name={name}", "method.backbone=bcp")), BCP)
    assert isinstance(build_method(_cfg("method.name=semisam_online")), SemiSAM)  # auto: the mean teacher
    assert isinstance(build_method(_cfg("method.name=semisam_rounds")), SemiSAMRound)  # auto: supervised
    assert isinstance(build_method(_cfg("method.name=semisam_rounds", "method.backbone=supervised")), SemiSAMRound)


def test_config_checks_name_the_key():
    for bad, key in [
        ("method.unimatch.strong_views=3", "strong_views"),
        ("method.unimatch.confidence=1.5", "confidence"),
        ("method.unimatch.cutmix_area=[0.5,0.1]", "cutmix_area"),
        ("method.bcp.pretrain_fraction=1", "pretrain_fraction"),
        ("method.backbone=fixmatch", "method.backbone"),
    ]:
        with pytest.raises(ConfigError, match=key):
            _unimatch_cfg(bad)


def test_unused_method_keys_follow_the_method():
    unimatch = unused_keys(_unimatch_cfg())
    assert "method.bcp.unlabeled_weight" in unimatch and "method.consistency_weight" in unimatch
    assert not any(k.startswith("method.unimatch.") for k in unimatch)
    on_unimatch = unused_keys(_cfg("method.name=semisam_rounds", "method.backbone=unimatch"))
    assert "method.consistency_weight" in on_unimatch and "method.unimatch.confidence" not in on_unimatch
    bcp = unused_keys(_cfg("method.name=bcp"))
    assert "method.forward" not in bcp and "method.ema_decay" not in bcp and "method.consistency_weight" in bcp
    mean_teacher = unused_keys(_cfg("method.name=mean_teacher"))
    assert "method.unimatch.confidence" in mean_teacher and "method.consistency_weight" not in mean_teacher


def test_cutmix_boxes_follow_their_probability_and_area():
    torch.manual_seed(0)
    masks = cutmix_masks(400, 64, 64, 0.5, (0.02, 0.4), (0.3, 1 / 0.3))
    boxed = masks.flatten(1).any(1)
    assert 0.4 < float(boxed.float().mean()) < 0.6
    areas = masks.flatten(1).float().mean(1)[boxed]
    assert float(areas.min()) > 0.01 and float(areas.max()) <= 0.41
    for m in masks[boxed][:20]:  # one rectangle each: its bounding box is full
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        assert int(m.sum()) == (int(rows.max()) - int(rows.min()) + 1) * (int(cols.max()) - int(cols.min()) + 1)
    assert not cutmix_masks(10, 8, 8, 0.0, (0.02, 0.4), (0.3, 3.3)).any()
    square = square_mask(30, 30, 2 / 3)
    assert int(square.sum()) == 20 * 20


def test_mix_takes_the_other_inside_the_region_for_images_and_maps():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, :2] = True
    out = mix(a, b, region)
    assert torch.equal(out[:, 0], region.float()) and torch.equal(out[:, 2], region.float())
    assert torch.equal(mix(a[:, 0].long(), b[:, 0].long(), region), region.long())
    assert torch.equal(partner(3), torch.tensor([1, 2, 0]))


@pytest.mark.parametrize("views", [1, 2])
def test_unimatch_cutmixes_each_view_and_its_target_with_the_same_box(views):
    cfg = _unimatch_cfg(f"method.unimatch.strong_views={views}", "method.unimatch.cutmix_prob=1.0")
    method = build_method(cfg)
    method.unlabeled_loss = RecordingLoss(method.unlabeled_loss)
    # three images whose weak classes differ from their partner's at every pixel, and whose strong views spell
    # yet another class: a box applied to the image but not to the target (or the reverse) shows at once
    base = _random_classes(1, 1)[0]
    weak = torch.stack([(base + i) % CLASSES for i in range(3)])
    strong = (weak + 1) % CLASSES
    unlabeled = {"image": _class_images(weak)}
    unlabeled["strong_image"] = unlabeled["strong_image_2"] = _class_images(strong)
    labeled = {"image": _class_images(weak[:2]), "label": weak[:2]}
    model = ClassEcho()
    torch.manual_seed(0)
    method.step(model, None, labeled, unlabeled, 0)
    strong_inputs = model.inputs[1][2:, 0].round().long()  # the weak pass, then labeled + strong views in one pass
    assert len(strong_inputs) == 3 * views
    other = partner(3)
    for k, (_, target, weight) in enumerate(method.unlabeled_loss.calls[:views]):
        seen = strong_inputs[3 * k : 3 * (k + 1)]
        box = target != weak  # where the target is the partner's
        assert box.any(), "no pixel was mixed: the test has nothing to check"
        assert torch.equal(target[box], weak[other][box])
        assert torch.equal(seen, torch.where(box, strong[other], strong))  # the image moved with the same box
        assert torch.equal(weight, torch.ones_like(weight))  # integer inputs: every pixel confident


def test_pixels_below_the_confidence_threshold_get_no_gradient():
    cfg = _unimatch_cfg("method.unimatch.cutmix_prob=0", "method.forward=separate")
    method = build_method(cfg)
    classes = _random_classes(2, 3)
    image = _class_images(classes)
    image[:, :, : H // 2] = 0.5  # the top half sits between classes 0 and 1: max softmax 0.5 < 0.95
    unlabeled = {"image": image, "strong_image": image.clone(), "strong_image_2": image.clone()}
    labeled = {"image": _class_images(classes), "label": classes}
    outputs = []

    class Spy(ClassEcho):
        def forward(self, x):
            out = super().forward(x)
            if out.requires_grad:
                out.retain_grad()
                outputs.append(out)
            return out

    out = method.step(Spy(), None, labeled, unlabeled, 0)
    out.loss.backward()
    assert len(outputs) == 4  # with a graph: labeled, strong 1, strong 2, feature-perturbed (the weak one has none)
    for logits in outputs[1:]:
        assert torch.count_nonzero(logits.grad[:, :, : H // 2]) == 0
        assert torch.count_nonzero(logits.grad[:, :, H // 2 :]) > 0
    assert out.logs["unimatch/kept_fraction"] == pytest.approx(0.5)


def test_unimatch_weights_its_terms_as_published():
    cfg = _unimatch_cfg("method.unimatch.cutmix_prob=0")
    method = build_method(cfg)
    unlabeled, classes = _unlabeled()
    labeled = {"image": _class_images(classes[:2]), "label": (classes[:2] + 1) % CLASSES}  # a wrong label: L_x > 0
    out = method.step(ClassEcho(), None, labeled, unlabeled, 0)
    logs = out.logs
    expected = (
        logs["loss/supervised"]
        + 0.5 * logs["loss/feature_perturbed"]
        + 0.25 * (logs["loss/strong_1"] + logs["loss/strong_2"])
    ) / 2
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    fixmatch = build_method(
        _unimatch_cfg("method.unimatch.strong_views=1", "method.unimatch.feature_perturbation=false")
    )
    out = fixmatch.step(ClassEcho(), None, labeled, unlabeled, 0)
    assert "loss/feature_perturbed" not in out.logs and "loss/strong_2" not in out.logs
    assert float(out.loss.detach()) == pytest.approx(
        (out.logs["loss/supervised"] + out.logs["loss/strong_1"]) / 2, rel=1e-5
    )


@pytest.mark.parametrize("arch", ["res_unet", "basic_unet"])
def test_feature_dropout_perturbs_the_decoder_input_only_inside_the_block(arch):
    cfg = _cfg(f"student.arch={arch}", "student.norm=instance", "student.features=[4,8,16,32,64]")
    torch.manual_seed(0)
    model = build_student(cfg.student, 1, 2).eval()
    x = torch.rand(2, 1, 32, 32)
    clean = model(x)
    torch.manual_seed(1)
    with feature_dropout(model, 0.5):
        perturbed = model(x)
    assert not torch.allclose(clean, perturbed)
    assert torch.equal(model(x), clean)  # hooks removed
    with feature_dropout(model, 0.0):
        assert torch.allclose(model(x), clean)


def _bcp_cfg(*extra):
    return _cfg(
        "method.name=bcp",
        f"data.num_classes={CLASSES}",
        "data.class_names=[a,b,c]",
        "method.bcp.largest_component=false",
        *extra,
    )


@pytest.mark.parametrize("iteration", [0, 50])  # pre-train (labeled pairs), then self-train
def test_bcp_pastes_image_and_target_with_the_same_square(iteration):
    method = build_method(_bcp_cfg("method.bcp.pretrain_fraction=0.25"))
    method.region_loss = RecordingLoss(method.region_loss)
    labels = _random_classes(4, 7)
    labeled = {"image": _class_images(labels), "label": labels}
    unlabeled, _ = _unlabeled(4, 8)  # the EMA model reads their class back: their pseudo-labels
    model = ClassEcho()
    ema = StudentEMA(ClassEcho(), 0.99)
    torch.manual_seed(0)
    out = method.step(model, ema, labeled, unlabeled, iteration)
    seen = torch.cat(model.inputs)[:, 0].round().long()  # each pixel's class as the student's input carries it
    selftrain = iteration >= method.switch
    assert out.logs["bcp/self_training"] == float(selftrain)
    calls = method.region_loss.calls
    assert len(calls) == (4 if selftrain else 2)
    # every pixel of each mixed input is supervised exactly once, by a target equal to the class it carries
    coverage = torch.zeros_like(seen, dtype=torch.float32)
    for k, (_, target, weight) in enumerate(calls):
        part = slice(2, 4) if selftrain and k in (1, 3) else slice(0, 2)  # (u_a | l_a), then (l_b | u_b)
        kept = weight > 0
        assert torch.equal(target[kept], seen[part][kept])
        coverage[part] += kept.float()
    assert torch.equal(coverage, torch.ones_like(coverage))


def test_bcp_resets_its_ema_model_to_the_student_when_self_training_starts():
    method = build_method(_bcp_cfg("method.bcp.pretrain_fraction=0.5"))
    model, ema_net = ClassEcho(), ClassEcho()
    with torch.no_grad():
        model.bias.fill_(0.3)
    ema = StudentEMA(ema_net, 0.99)
    labels = _random_classes(4, 7)
    labeled, (unlabeled, _) = {"image": _class_images(labels), "label": labels}, _unlabeled(4, 8)
    method.step(model, ema, labeled, unlabeled, 10)
    assert float(ema.module.bias.abs().sum()) == 0.0
    method.step(model, ema, labeled, unlabeled, method.switch)
    assert torch.equal(ema.module.bias, model.bias.detach())


def _bank(batch, label, weight, source):
    shape = (batch, H, W)
    return {
        "pseudo_label": torch.full(shape, label, dtype=torch.int64),
        "weight": torch.full(shape, weight),
        "uncertainty": torch.zeros(shape),
        "pseudo_source": torch.full(shape, source, dtype=torch.int64),
    }


def test_teacher_labels_enter_only_where_the_teacher_labeled_and_was_kept():
    own = torch.zeros(2, H, W, dtype=torch.int64)
    own_weight = torch.zeros(2, H, W)
    bank = _bank(2, 2, 0.8, 1)
    bank["pseudo_source"][:, :4] = 2  # the rectification fell back on the model there: not the teacher's
    bank["weight"][:, 4:8] = 0.0  # the rectification ignored these
    target, weight, logs = TeacherLabels().join(own, own_weight, bank)
    teacher = torch.zeros(2, H, W, dtype=torch.bool)
    teacher[:, 8:] = True
    assert torch.equal(target, torch.where(teacher, 2, 0))
    assert torch.allclose(weight, torch.where(teacher, 0.8, 0.0))
    assert logs["pseudo/teacher_fraction"] == pytest.approx(0.5)
    same = TeacherLabels().join(own, own_weight, {"image": None})  # no bank: pseudo-labels off
    assert torch.equal(same[0], own) and torch.equal(same[1], own_weight)


def test_semisam_on_unimatch_trains_the_strong_views_towards_the_teacher_where_trusted():
    cfg = _cfg(
        "method.name=semisam_rounds",
        "method.backbone=unimatch",
        f"data.num_classes={CLASSES}",
        "data.class_names=[a,b,c]",
        "method.unimatch.cutmix_prob=0",
    )
    method = build_method(cfg)
    method.unlabeled_loss = RecordingLoss(method.unlabeled_loss)
    unlabeled, classes = _unlabeled(2, 4)
    unlabeled.update(_bank(2, 1, 0.7, 1))
    unlabeled["pseudo_source"][:, : H // 2] = 0  # the teacher kept nothing in the top half
    labeled = {"image": _class_images(classes), "label": classes}
    out = method.step(ClassEcho(), None, labeled, unlabeled, 0)
    for _, target, weight in method.unlabeled_loss.calls:
        assert torch.equal(target[:, H // 2 :], torch.ones_like(target[:, H // 2 :]))
        assert torch.equal(target[:, : H // 2], classes[:, : H // 2])  # the backbone's own weak label
        assert torch.allclose(weight[:, H // 2 :], torch.full_like(weight[:, H // 2 :], 0.7))
    assert out.logs["pseudo/teacher_fraction"] == pytest.approx(0.5)


def test_a_round_on_the_supervised_backbone_is_the_supervised_loss_plus_the_bank_loss_and_nothing_else():
    """semisam_rounds on the supervised backbone: a plain Method (no EMA asked for, none used, no consistency
    term); its loss is exactly the supervised loss + the full weight x the weighted loss towards the round's bank."""
    from types import SimpleNamespace

    cfg = _cfg("method.name=semisam_rounds", f"data.num_classes={CLASSES}", "data.class_names=[a,b,c]")
    method = build_method(cfg)
    assert isinstance(method, SemiSAMRound) and not isinstance(method, SemiSAM)
    assert not method.needs_ema and method.uses_unlabeled
    method.bank_source = SimpleNamespace(first_bank_iteration=0)  # a round's bank: there from the first step
    unlabeled, classes = _unlabeled(2, 4)
    unlabeled.update(_bank(2, 1, 0.7, 1))
    labeled = {"image": _class_images(classes), "label": classes}
    model = ClassEcho()
    out = method.step(model, None, labeled, unlabeled, 0)  # no EMA model: none is needed
    with torch.no_grad():
        sup = method.supervised_loss(model(labeled["image"]), classes)
        logits_u = model(unlabeled["strong_image"])
        bank = method.pseudo_label_loss(logits_u, unlabeled["pseudo_label"], unlabeled["weight"])
    assert torch.allclose(out.loss.detach(), sup + cfg.pseudo_labels.weight * bank)
    assert "loss/consistency" not in out.logs and out.logs["weight/pseudo_label"] == cfg.pseudo_labels.weight


def test_auto_forward_is_one_pass_without_batch_norm_and_the_same_numbers():
    instance = build_student(_cfg("student.norm=instance").student, 1, 2)
    batch = build_student(_cfg("student.arch=basic_unet", "student.norm=batch").student, 1, 2)
    assert joint_forward(instance, "auto") and not joint_forward(batch, "auto")
    assert joint_forward(batch, "joint") and not joint_forward(instance, "separate")
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(3, 1, 32, 32)
    together = instance(torch.cat([a, b]))
    assert torch.allclose(together[:2], instance(a), atol=1e-5) and torch.allclose(together[2:], instance(b), atol=1e-5)


# ---------------------------------------------------------------- end to end on the phantom


def _run_cfg(root, out, *extra):
    overrides = tiny_overrides(root, out, **{"deterministic": "true"})
    return load_config(REPO / "configs/demo.yaml", [*overrides, *extra])


@pytest.mark.parametrize("method", ["unimatch", "bcp"])
def test_scrambled_labels_of_unlabeled_cases_change_nothing(phantom_root, tmp_path, method):
    """No label of an unlabeled image reaches any loss: scrambling their label files leaves every weight as it was."""
    cfg = _run_cfg(phantom_root, tmp_path / "true", f"method.name={method}", "method.bcp.pretrain_fraction=0.34")
    scrambled = scrambled_copy(phantom_root, tmp_path / "scrambled", cfg)
    weights = []
    for root, out in ((phantom_root, "true"), (scrambled, "scrambled")):
        cfg = _run_cfg(root, tmp_path / out, f"method.name={method}", "method.bcp.pretrain_fraction=0.34")
        result = Trainer(cfg, progress=False).fit()
        assert result.iterations == 6 and math.isfinite(result.best_metric)
        weights.append(torch.load(result.last_checkpoint, weights_only=True)["model"])
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
