"""Engine building blocks: losses against hand computation, ramps, the EMA schedule, optimiser, lr."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from semisam.config.schema import ConfigError, ScheduleConfig
from semisam.engine.ema import StudentEMA, ema_alpha
from semisam.engine.optim import build_optimizer, build_scheduler
from semisam.methods.losses import SupervisedLoss, WeightedDiceCELoss, consistency_loss
from semisam.methods.ramps import consistency_weight, sigmoid_rampup

EPS = 1e-5

# ----------------------------------------------------------------------------------------------------- losses
# A 1 x 2-class x 1 x 3 image: three pixels, labels 0, 1, 1.
LOGITS = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 1.0, 1.0]]]])
TARGET = torch.tensor([[[0, 1, 1]]])


def _hand_softmax():
    # softmax over the two classes, pixel by pixel
    probs = []
    for l0, l1 in [(2.0, 0.0), (0.0, 1.0), (-1.0, 1.0)]:
        z = math.exp(l0) + math.exp(l1)
        probs.append((math.exp(l0) / z, math.exp(l1) / z))
    return probs


def _hand_ce(weights):
    probs = _hand_softmax()
    labels = [0, 1, 1]
    ces = [-math.log(p[y]) for p, y in zip(probs, labels, strict=True)]
    return sum(w * c for w, c in zip(weights, ces, strict=True)) / sum(weights)


def _hand_dice(weights):
    probs = _hand_softmax()
    labels = [0, 1, 1]
    losses = []
    for c in range(2):
        inter = sum(w * p[c] * (y == c) for w, p, y in zip(weights, probs, labels, strict=True))
        sums = sum(w * p[c] for w, p in zip(weights, probs, strict=True)) + sum(
            w * (y == c) for w, y in zip(weights, labels, strict=True)
        )
        losses.append(1 - (2 * inter + EPS) / (sums + EPS))
    return sum(losses) / 2


def test_supervised_loss_matches_hand_computation():
    ce, dice = _hand_ce([1, 1, 1]), _hand_dice([1, 1, 1])
    assert SupervisedLoss(2, 0.0, 1.0)(LOGITS, TARGET).item() == pytest.approx(ce, rel=1e-6)
    assert SupervisedLoss(2, 1.0, 0.0)(LOGITS, TARGET).item() == pytest.approx(dice, rel=1e-6)
    assert SupervisedLoss(2, 0.5, 0.5)(LOGITS, TARGET).item() == pytest.approx(0.5 * (ce + dice), rel=1e-6)


def test_supervised_loss_dice_is_over_the_batch():
    # SSL4MIS sums intersections over the batch before dividing: splitting an image into two batch items
    # along the width must not change the Dice term.
    logits = torch.randn(1, 3, 4, 6)
    target = torch.randint(0, 3, (1, 4, 6))
    loss = SupervisedLoss(3, 1.0, 1.0)
    whole = loss(logits, target)
    halves = loss(torch.cat([logits[..., :3], logits[..., 3:]]), torch.cat([target[..., :3], target[..., 3:]]))
    assert whole.item() == pytest.approx(halves.item(), rel=1e-5)


def test_supervised_loss_rejects_bad_labels_and_shapes():
    loss = SupervisedLoss(2)
    with pytest.raises(ValueError, match="outside"):
        loss(LOGITS, torch.tensor([[[0, 2, 1]]]))
    with pytest.raises(ValueError, match="target must be"):
        loss(LOGITS, TARGET.unsqueeze(1))
    with pytest.raises(ValueError, match="logits must be"):
        SupervisedLoss(3)(LOGITS, TARGET)


def test_weighted_loss_hand_weight_map():
    weights = [1.0, 0.5, 0.25]
    w = torch.tensor([[weights]])
    ce = WeightedDiceCELoss(2, 0.0, 1.0)(LOGITS, TARGET, w)
    dice = WeightedDiceCELoss(2, 1.0, 0.0)(LOGITS, TARGET, w)
    both = WeightedDiceCELoss(2, 0.3, 0.7)(LOGITS, TARGET, w)
    assert ce.item() == pytest.approx(_hand_ce(weights), rel=1e-6)
    assert dice.item() == pytest.approx(_hand_dice(weights), rel=1e-6)
    assert both.item() == pytest.approx(0.3 * _hand_dice(weights) + 0.7 * _hand_ce(weights), rel=1e-6)


def test_weighted_loss_with_unit_weights_equals_supervised_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 7)
    target = torch.randint(0, 4, (2, 5, 7))
    ones = torch.ones(2, 5, 7)
    expected = SupervisedLoss(4, 0.5, 0.5)(logits, target)
    assert WeightedDiceCELoss(4, 0.5, 0.5)(logits, target, ones).item() == pytest.approx(expected.item(), rel=1e-5)


def test_zero_weight_pixels_have_no_influence():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6))
    weight = torch.rand(2, 6, 6)
    weight[:, :3] = 0.0
    loss = WeightedDiceCELoss(3, 0.5, 0.5)
    base = loss(logits, target, weight)

    changed = logits.clone()
    changed[:, :, :3] = torch.randn(2, 3, 3, 6) * 50.0
    other_target = target.clone()
    other_target[:, :3] = (target[:, :3] + 1) % 3
    assert torch.equal(loss(changed, target, weight), base)
    assert torch.equal(loss(logits, other_target, weight), base)

    x = logits.clone().requires_grad_(True)
    loss(x, target, weight).backward()
    assert torch.all(x.grad[:, :, :3] == 0)
    assert torch.any(x.grad[:, :, 3:] != 0)


def test_ignore_index_acts_as_zero_weight():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    weight = torch.rand(1, 4, 4)
    ignored = torch.zeros(1, 4, 4, dtype=torch.bool)
    ignored[0, 0] = True
    loss = WeightedDiceCELoss(3, 0.5, 0.5, ignore_index=255)
    with_ignore = loss(logits, target.masked_fill(ignored, 255), weight)
    with_zero = loss(logits, target, weight.masked_fill(ignored, 0.0))
    assert with_ignore.item() == pytest.approx(with_zero.item(), rel=1e-6)
    with pytest.raises(ValueError, match="outside"):
        WeightedDiceCELoss(3, ignore_index=None)(logits, target.masked_fill(ignored, 255), weight)


def test_zero_total_weight_gives_zero_with_a_gradient_path():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    loss = WeightedDiceCELoss(3, 0.5, 0.5)(logits, target, torch.zeros(2, 4, 4))
    assert loss.item() == 0.0
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_weighted_loss_rejects_bad_weights():
    loss = WeightedDiceCELoss(2)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        loss(LOGITS, TARGET, torch.tensor([[[1.0, 1.5, 0.0]]]))
    with pytest.raises(ValueError, match="weight must be float"):
        loss(LOGITS, TARGET, torch.ones(1, 1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight must be float"):
        loss(LOGITS, TARGET, torch.ones(1, 3))
    with pytest.raises(ValueError, match="ignore_index"):
        WeightedDiceCELoss(4, ignore_index=3)


def test_consistency_loss():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert consistency_loss(a, a.detach().clone()).item() == 0.0
    assert consistency_loss(a, a.detach() + 7.0).item() == pytest.approx(0.0, abs=1e-12)  # softmax invariance

    # by hand: one pixel, two classes, student logits (0, 0) -> (0.5, 0.5), teacher (log 3, 0) -> (0.75, 0.25)
    s = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    assert consistency_loss(s, t).item() == pytest.approx((0.25**2 + 0.25**2) / 2, rel=1e-6)

    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    consistency_loss(a, teacher).backward()
    assert teacher.grad is None  # detached
    assert a.grad is not None and torch.any(a.grad != 0)


# ------------------------------------------------------------------------------------------------------ ramps
def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(-10, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(3, 0) == 1.0
    with pytest.raises(ValueError):
        sigmoid_rampup(1, -1)


def test_consistency_weight():
    assert consistency_weight(0, 1000, 0.1, 1.0) == pytest.approx(0.1 * math.exp(-5))
    assert consistency_weight(500, 1000, 0.1, 1.0) == pytest.approx(0.1 * math.exp(-1.25))
    assert consistency_weight(1000, 1000, 0.1, 1.0) == pytest.approx(0.1)
    # ramp over the first 40 %: half way through the ramp at iteration 200, done at 400
    assert consistency_weight(200, 1000, 0.1, 0.4) == pytest.approx(0.1 * math.exp(-1.25))
    assert consistency_weight(400, 1000, 0.1, 0.4) == pytest.approx(0.1)
    assert consistency_weight(900, 1000, 0.1, 0.4) == pytest.approx(0.1)


# -------------------------------------------------------------------------------------------------------- EMA
class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


def test_ema_alpha_schedule_is_ssl4mis():
    model = _Toy()
    for decay in (0.99, 0.6):
        ema = StudentEMA(model, decay)
        assert ema.alpha(0) == 0.0
        assert ema.alpha(1) == pytest.approx(0.5)
        for t in range(300):
            assert ema.alpha(t) == pytest.approx(min(1 - 1 / (t + 1), decay)) == pytest.approx(ema_alpha(t, decay))
    assert StudentEMA(model, 0.99).alpha(99) == pytest.approx(0.99)


def test_ema_update_follows_the_formula():
    torch.manual_seed(0)
    model = _Toy()
    decay = 0.6
    ema = StudentEMA(model, decay)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())

    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(6):
        # one "training step": new weights, and a train-mode forward that moves the batch-norm statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(8, 3))
        ema.update(model, t)
        alpha = min(1 - 1 / (t + 1), decay)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = alpha * expected[k] + (1 - alpha) * v
            else:
                expected[k] = v.clone()
        got = ema.module.state_dict()
        for k, v in expected.items():
            assert torch.allclose(got[k], v, atol=1e-6) if v.is_floating_point() else torch.equal(got[k], v)
        if t == 0:  # alpha 0: the first update is a copy
            assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    assert ema.module.state_dict()["bn.num_batches_tracked"] == 6  # integer buffers are copied
    assert ema.last_iteration == 5


def test_ema_state_dict_round_trip():
    torch.manual_seed(0)
    model = _Toy()
    ema = StudentEMA(model, 0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ema.update(model, 4)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    other = StudentEMA(_Toy(), 0.99)
    other.load_state_dict(state)
    assert other.last_iteration == 4
    for k, v in ema.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[k], v)
    bare = StudentEMA(_Toy(), 0.99)
    bare.load_state_dict(state["module"])  # a plain state dict of the architecture also loads
    assert torch.equal(bare.module.lin.weight, ema.module.lin.weight)
    # the EMA copy is independent of the student
    with torch.no_grad():
        model.lin.weight.zero_()
    assert not torch.equal(ema.module.lin.weight, model.lin.weight)


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError):
        StudentEMA(_Toy(), 1.0)


# ------------------------------------------------------------------------------------- optimiser / schedule
def _sched_cfg(**kw) -> ScheduleConfig:
    base = {"iterations": 100, "lr": 0.01, "lr_schedule": "poly", "poly_power": 0.9, "warmup_iterations": 0}
    base.update(kw)
    return ScheduleConfig(**base)


def _lrs(cfg: ScheduleConfig, steps: int) -> list[float]:
    params = [nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(params, cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_optimizers():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, _sched_cfg(momentum=0.9, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.01,
        0.9,
        1e-4,
        False,
    )
    adamw = build_optimizer(params, _sched_cfg(optimizer="adamw", lr=3e-4, weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ConfigError, match=r"schedule\.optimizer"):
        build_optimizer(params, _sched_cfg(optimizer="lion"))


def test_poly_schedule():
    lrs = _lrs(_sched_cfg(), 100)
    for i in (0, 1, 50, 99):
        assert lrs[i] == pytest.approx(0.01 * (1 - i / 100) ** 0.9, rel=1e-9)


def test_cosine_and_constant_schedules():
    lrs = _lrs(_sched_cfg(lr_schedule="cosine"), 101)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx(0.005)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert lrs[25] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert set(_lrs(_sched_cfg(lr_schedule="constant"), 20)) == {0.01}


def test_warmup_then_poly():
    lrs = _lrs(_sched_cfg(warmup_iterations=4), 100)
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert lrs[4] == pytest.approx(0.01)
    # after the warmup, poly decays over the remaining 96 iterations
    assert lrs[52] == pytest.approx(0.01 * (1 - 48 / 96) ** 0.9)
    with pytest.raises(ConfigError, match="warmup_iterations"):
        build_scheduler(
            build_optimizer([nn.Parameter(torch.zeros(1))], _sched_cfg()), _sched_cfg(warmup_iterations=100)
        )


@pytest.mark.parametrize("cfg", [_sched_cfg(warmup_iterations=3), _sched_cfg(lr_schedule="cosine", optimizer="adamw")])
def test_scheduler_and_optimizer_resume(cfg):
    def make():
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = build_optimizer(model.parameters(), cfg)
        return model, opt, build_scheduler(opt, cfg)

    def train(model, opt, sched, steps, lrs):
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            g = torch.Generator().manual_seed(len(lrs))
            loss = model(torch.randn(4, 3, generator=g)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    model, opt, sched = make()
    straight: list[float] = []
    train(model, opt, sched, 30, straight)

    model2, opt2, sched2 = make()
    resumed: list[float] = []
    train(model2, opt2, sched2, 11, resumed)
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model3, opt3, sched3 = make()
    model3.load_state_dict(state["model"])
    opt3.load_state_dict(state["opt"])
    sched3.load_state_dict(state["sched"])
    train(model3, opt3, sched3, 19, resumed)

    assert resumed == straight
    assert torch.equal(model3.weight, model.weight)  # momentum / Adam moments resumed too
