"""Self-training rounds and image-level reliability: the signals and the selection on known inputs, the round
configs, and a whole rounds run on the phantom with a tiny teacher (no label of an unlabeled image touched,
the bank of the selected images, resumption without recomputation, a finished round 0 reused only if it is one)."""

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.config.schema import RELIABILITY_RULES, ConfigError, uses_rounds
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine import trainer as trainer_module
from semisam.engine.trainer import Trainer
from semisam.methods import SemiSAMRound, build_method
from semisam.pseudolabel import rounds as rounds_module
from semisam.pseudolabel.analysis import reliability_report
from semisam.pseudolabel.reliability import (
    RULES,
    ImageReliability,
    decode_agreement,
    foreground_dice,
    image_teacher_agreement,
    rank_by_reliability,
    select_reliable,
)
from semisam.pseudolabel.rounds import RoundData
from semisam.student.checkpoint import load_checkpoint
from semisam.teacher import precompute as pc
from semisam.teacher import stores
from semisam.workflow import rounds as workflow_rounds
from semisam.workflow.rounds import round_config
from semisam.workflow.train import train

from .conftest import REPO, tiny_overrides
from .test_semisam import LabelGuard


# ---------------------------------------------------------------------------------------------- the signals
def test_decode_agreement_is_the_iou_of_all_decodes():
    a = np.zeros((3, 4, 4))
    a[:, :2, :2] = 0.9  # three identical masks of 4 pixels
    assert decode_agreement(a) == (1.0, 4.0)
    a[2, :2, 2] = 0.9  # one decode marks 2 more pixels: 4 agreed of 6
    assert decode_agreement(a) == pytest.approx((4 / 6, 6.0))
    a[1] = 0.1  # one decode marks nothing: no pixel is marked by all
    assert decode_agreement(a)[0] == 0.0
    assert decode_agreement(np.zeros((2, 3, 3))) == (1.0, 0.0)


def test_image_agreement_weights_prompts_by_their_area():
    assert image_teacher_agreement([(1.0, 30.0), (0.0, 10.0)]) == pytest.approx(0.75)
    assert math.isnan(image_teacher_agreement([]))
    assert image_teacher_agreement([(1.0, 0.0), (0.5, 0.0)]) == pytest.approx(0.75)


def test_foreground_dice_and_the_both_rule():
    a = np.array([[0, 1, 1, 2]])
    b = np.array([[0, 1, 0, 0]])
    assert foreground_dice(a, b, 3) == pytest.approx((2 / 3 + 0.0) / 2)
    assert math.isnan(foreground_dice(np.zeros((2, 2), int), np.zeros((2, 2), int), 2))
    rel = ImageReliability(teacher=0.9, student=0.4)
    assert (rel.score("teacher"), rel.score("student"), rel.score("both")) == (0.9, 0.4, 0.4)
    assert math.isnan(ImageReliability(math.nan, 0.8).score("both"))
    with pytest.raises(ValueError, match="teacher \\| student \\| both"):
        rel.score("median")


def test_every_configurable_selection_rule_is_a_function_and_scores_as_documented():
    assert set(RULES) == set(RELIABILITY_RULES)
    r = ImageReliability(teacher=0.8, student=0.6)
    assert (r.score("teacher"), r.score("student"), r.score("both")) == (0.8, 0.6, 0.6)
    assert math.isnan(ImageReliability(math.nan, 0.6).score("both"))
    with pytest.raises(ValueError, match=re.escape("is not one of teacher | student | both")):
        r.score("median")


def test_selection_keeps_the_most_reliable_share_and_never_an_unscored_image():
    scores = [0.2, math.nan, 0.9, 0.5, 0.7]
    assert rank_by_reliability(scores) == [2, 4, 3, 0, 1]
    assert select_reliable(scores, 0.4) == [2, 4]  # 2 of 5, in input order
    assert select_reliable(scores, 1.0) == [0, 2, 3, 4]  # the NaN image never
    assert select_reliable(scores, 0.01) == [2]  # at least one
    assert select_reliable([math.nan, math.nan], 1.0) == []
    with pytest.raises(ValueError):
        select_reliable(scores, 0.0)


# ---------------------------------------------------------------------------------------------- configs


def _cfg(root, tmp_path, out="run", *extra):
    overrides = tiny_overrides(root, tmp_path / out, **{"method.name": "semisam_rounds"})
    overrides += [
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "pseudo_labels.perturbations=2",
        "pseudo_labels.calibration_images=3",
        "pseudo_labels.min_area=1",
        "pseudo_labels.select_fraction=0.5",
        "pseudo_labels.model_confidence=0.3",
        "schedule.warmup_iterations=2",
        "deterministic=true",
        *extra,
    ]
    return load_config(REPO / "configs/demo.yaml", overrides)


def test_round_configs(phantom_root, tmp_path):
    cfg = _cfg(phantom_root, tmp_path, "run", "schedule.iterations=10", "pseudo_labels.round_iterations=0.5")
    assert uses_rounds(cfg)
    zero, one = round_config(cfg, 0), round_config(cfg, 1)
    assert zero.method.name == "supervised" and zero.schedule.iterations == 10
    assert zero.output_dir == str(tmp_path / "run" / "round_0")
    assert one.method.name == "semisam_rounds" and one.pseudo_labels.mode is None
    assert (one.schedule.iterations, one.schedule.warmup_iterations) == (5, 1)
    method = build_method(one)  # the supervised backbone: the student alone, no EMA to keep
    assert isinstance(method, SemiSAMRound) and not method.needs_ema
    assert one.output_dir == str(tmp_path / "run" / "round_1")


def test_a_round_needs_its_round_data(phantom_root, tmp_path):
    with pytest.raises(
        ConfigError, match="trains on the teacher's pseudo-labels: train it with semisam.workflow.train"
    ):
        Trainer(round_config(_cfg(phantom_root, tmp_path), 1), progress=False)


def test_a_round_weighs_its_pseudo_labels_fully_from_the_first_step(phantom_root, tmp_path):
    method = build_method(round_config(_cfg(phantom_root, tmp_path), 1))
    method.bank_source = RoundData([])
    assert method.pseudo_label_weight(0) == method.cfg.pseudo_labels.weight


# ---------------------------------------------------------------------------------------------- a whole run
def _guarded_rounds(cfg, teacher, monkeypatch):
    """Embeddings of the pool and val made; every reader of the run replaced by a :class:`LabelGuard`. Returns the
    unlabeled cases and the guard."""
    pc.precompute(cfg, teacher=teacher, splits=["unlabeled", "val"], priors=False, progress=False)
    real = build_reader(cfg.data)
    unlabeled = resolve_split(cfg.data, real.case_ids()).unlabeled
    guard = LabelGuard(real, unlabeled)
    monkeypatch.setattr(trainer_module, "build_reader", lambda data_cfg: guard)
    monkeypatch.setattr(rounds_module, "build_reader", lambda data_cfg: guard)
    return unlabeled, guard


def test_rounds_run_end_to_end_without_touching_unlabeled_labels(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    cfg = _cfg(phantom_root, tmp_path)
    unlabeled, guard = _guarded_rounds(cfg, tiny_teacher, monkeypatch)
    result = train(cfg, progress=False, teacher=tiny_teacher)
    assert guard.touched == []  # not read, not even asked whether it exists

    run = tmp_path / "run"
    assert (run / "round_0" / "checkpoints" / "best.pt").exists()
    assert load_checkpoint(run / "round_0" / "checkpoints" / "last.pt")["config"]["method"]["name"] == "supervised"
    selection = json.loads((run / "round_1" / "selection.json").read_text())
    assert selection["pool"] == len(unlabeled)
    assert selection["selected"] == len(selection["items"]) <= round(0.5 * len(unlabeled))
    assert selection["selected"] > 0
    with (run / "round_1" / "reliability.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(unlabeled)
    kept = {r["case"] for r in rows if r["selected"] == "1"}
    assert kept == {c for c, _ in selection["items"]}
    kept_scores = [float(r["score"]) for r in rows if r["selected"] == "1"]
    dropped_scores = [float(r["score"]) for r in rows if r["selected"] == "0" and r["score"] != "nan"]
    assert min(kept_scores) >= max(dropped_scores, default=-1.0)  # the most reliable were kept
    assert (run / "round_1" / "pseudo_labels.png").stat().st_size > 0
    with (run / "round_1" / "metrics.csv").open() as f:
        tags = {r["tag"] for r in csv.DictReader(f)}
    assert {"loss/pseudo_label", "weight/pseudo_label", "loss/supervised"} <= tags
    assert "loss/consistency" not in tags
    assert load_checkpoint(run / "round_1" / "checkpoints" / "last.pt")["ema"] is None  # no EMA in a round
    # the run's checkpoints are the last round's
    final = load_checkpoint(result.best_checkpoint)
    round_best = load_checkpoint(run / "round_1" / "checkpoints" / "best.pt")
    assert final["config"]["output_dir"] == str(run / "round_1")
    assert all(torch.equal(final["model"][k], round_best["model"][k]) for k in final["model"])
    timings = json.loads((run / "rounds.json").read_text())
    assert {"round_0_train_s", "round_1_label_s", "round_1_train_s"} <= set(timings)

    # run again: nothing is recomputed (the bank file is not rewritten, no round trains again)
    bank_mtime = (run / "round_1" / "bank.npz").stat().st_mtime_ns
    monkeypatch.setattr(rounds_module.PseudoLabeler, "label", _forbidden)
    again = train(cfg, progress=False, teacher=tiny_teacher)
    assert (run / "round_1" / "bank.npz").stat().st_mtime_ns == bank_mtime
    assert again.best_metric == result.best_metric
    # the stages only read back keep the seconds recorded when they ran, not the read-back's
    assert json.loads((run / "rounds.json").read_text()) == timings

    # one more round extends the finished run: round 1 is read back, round 2 is labeled by round 1's student
    monkeypatch.undo()
    more = train(_cfg(phantom_root, tmp_path, "run", "pseudo_labels.rounds=2"), progress=False, teacher=tiny_teacher)
    assert (run / "round_1" / "bank.npz").stat().st_mtime_ns == bank_mtime
    second = json.loads((run / "round_2" / "selection.json").read_text())
    assert second["checkpoint"] == str(run / "round_1" / "checkpoints" / "best.pt")
    assert load_checkpoint(more.best_checkpoint)["config"]["output_dir"] == str(run / "round_2")
    assert load_checkpoint(run / "round_2" / "checkpoints" / "last.pt")["iteration"] > 0
    assert {"round_2_label_s", "round_2_train_s"} <= set(json.loads((run / "rounds.json").read_text()))

    # a finished round 0 can stand in for this run's round 0, but only one trained as round 0 would be
    round0 = f"pseudo_labels.round0_checkpoint={run}/round_0/checkpoints/best.pt"
    train(_cfg(phantom_root, tmp_path, "reuse", round0), progress=False, teacher=tiny_teacher)
    assert not (tmp_path / "reuse" / "round_0").exists()
    assert (tmp_path / "reuse" / "checkpoints" / "best.pt").exists()
    other = _cfg(phantom_root, tmp_path, "other", "seed=5", round0)
    with pytest.raises(ConfigError, match="another config than this run's round 0.*seed"):
        train(other, progress=False, teacher=tiny_teacher)


def test_an_interrupted_round_keeps_the_seconds_of_the_stages_it_finished(
    phantom_root, tmp_path, tiny_teacher, monkeypatch
):
    cfg = _cfg(phantom_root, tmp_path, "cut", "schedule.iterations=3")
    pc.precompute(cfg, teacher=tiny_teacher, splits=["unlabeled", "val"], priors=False, progress=False)
    real_fit = workflow_rounds.Trainer.fit

    def fit_until_round_1(self):
        if self.cfg.output_dir.endswith("round_1"):
            raise KeyboardInterrupt  # stopped after round 1's labeling, before its training
        return real_fit(self)

    monkeypatch.setattr(workflow_rounds.Trainer, "fit", fit_until_round_1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, teacher=tiny_teacher)
    cut = json.loads((tmp_path / "cut" / "rounds.json").read_text())
    assert cut["round_0_train_s"] > 0 and cut["round_1_label_s"] > 0

    monkeypatch.undo()
    train(cfg, progress=False, teacher=tiny_teacher)  # resumed: labeling read back, round 1 trained here
    timings = json.loads((tmp_path / "cut" / "rounds.json").read_text())
    assert timings["round_0_train_s"] == cut["round_0_train_s"]
    assert timings["round_1_label_s"] == cut["round_1_label_s"]
    assert timings["round_1_train_s"] > 0


def _forbidden(*args, **kwargs):
    raise AssertionError("the bank was recomputed")


def test_a_round_starts_from_the_previous_weights(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path, "init", "schedule.iterations=3")
    first = Trainer(round_config(cfg, 0), progress=False).fit()
    pc.precompute(cfg, teacher=tiny_teacher, splits=["unlabeled"], priors=False, progress=False)
    unlabeled = resolve_split(cfg.data, build_reader(cfg.data).case_ids()).unlabeled
    from semisam.pseudolabel.labeler import PseudoLabelBank

    data = RoundData([(unlabeled[0], -1)], PseudoLabelBank(iteration=0))
    trainer = Trainer(
        round_config(cfg, 1),
        False,
        bank_source=lambda ctx: data,
        unlabeled_items=data.items,
        init_weights=first.checkpoint,
    )
    trainer._begin(trainer.ckpt_dir / "last.pt")  # no last.pt: a fresh round starts from init_weights
    saved = load_checkpoint(first.checkpoint)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.ema is None  # a round on the supervised backbone keeps no EMA that nothing would read


def test_reliability_report_bins_and_shares(phantom_root, tmp_path, tiny_teacher):
    """The analysis's per-bin report on a real (tiny-teacher) labeling: every image in exactly one bin, the shares
    nested, gains computed from the reported Dice."""
    cfg = _cfg(phantom_root, tmp_path, "analysis")
    pc.precompute(cfg, teacher=tiny_teacher, splits=["unlabeled"], priors=False, progress=False)
    from semisam.data.cases import CaseLoader
    from semisam.data.dataset import expand_to_slices
    from semisam.pseudolabel.labeler import PseudoLabeler
    from semisam.student.unet import build_student
    from semisam.teacher.stores import open_embedding_store

    reader = build_reader(cfg.data)
    items = expand_to_slices(reader, resolve_split(cfg.data, reader.case_ids()).unlabeled)
    model = build_student(cfg.student, 1, cfg.data.num_classes)
    labeler = PseudoLabeler(
        cfg,
        tiny_teacher,
        CaseLoader(reader, cfg.data),
        open_embedding_store(cfg, tiny_teacher, [c for c, _ in items]),
        None,
        torch.device("cpu"),
    )
    results, _ = labeler.label(model, items, {1: True, 2: True, 3: True}, seed=0)
    refs = [labeler.loader.label_slice(c, k) for c, k in items]
    report = reliability_report(results, refs, cfg.data.num_classes, bins=3)
    for rule in ("teacher", "student", "both"):
        r = report[rule]
        assert sum(b["images"] for b in r["bins"]) + r["unscored"]["images"] == len(items)
        counts = [r["top_fraction"][f]["images"] for f in ("0.25", "0.5", "0.75", "1")]
        assert counts == sorted(counts)
        for row in r["bins"]:
            assert row["score_range"][0] <= row["score_range"][1]
            gain = 100 * (row["dice_teacher_before_rectification"] - row["dice_model_all"])
            assert row["gain_points"] == pytest.approx(gain, nan_ok=True)


def test_a_supervised_run_with_priors_needs_no_priors_of_the_pool(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    """Round 0 with priors (and supervised_priors) trains on labeled images only: a cache without the unlabeled
    pool's priors is enough."""
    monkeypatch.setattr(stores, "identity_from_config", lambda c: stores.identity_of(tiny_teacher))
    cfg = _cfg(phantom_root, tmp_path, "sup_priors", "method.name=supervised", "priors.enabled=true")
    pc.precompute(cfg, teacher=tiny_teacher, splits=["labeled", "val"], progress=False)
    result = Trainer(cfg, progress=False).fit()
    assert result.iterations == cfg.schedule.iterations
    assert load_checkpoint(result.checkpoint)["model_info"]["in_channels"] == 3  # image + seg prior + boundary


@pytest.mark.parametrize("backbone", ["unimatch", "bcp"])
def test_rounds_on_a_backbone_train_the_whole_pool_with_the_teacher_on_the_selected(
    phantom_root, tmp_path, tiny_teacher, monkeypatch, backbone
):
    cfg = _cfg(phantom_root, tmp_path, "run", f"method.backbone={backbone}", "method.bcp.pretrain_fraction=0.34")
    zero, one = round_config(cfg, 0), round_config(cfg, 1)
    assert zero.method.name == backbone and zero.method.backbone == "auto"  # the backbone's own run
    assert one.method.name == "semisam_rounds" and one.method.backbone == backbone
    assert (one.method.bcp.pretrain_fraction == 0) == (backbone == "bcp")  # BCP pre-trains in round 0 only
    unlabeled, guard = _guarded_rounds(cfg, tiny_teacher, monkeypatch)
    seen = {}
    real_init = Trainer.__init__

    def spy(self, round_cfg, *args, **kwargs):
        real_init(self, round_cfg, *args, **kwargs)
        if kwargs.get("bank_source") is not None:
            seen["items"], seen["bank"] = self.unlabeled_items, self.bank_source.bank

    monkeypatch.setattr(Trainer, "__init__", spy)
    train(cfg, progress=False, teacher=tiny_teacher)
    assert guard.touched == []
    run = tmp_path / "run"
    assert load_checkpoint(run / "round_0" / "checkpoints" / "last.pt")["config"]["method"]["name"] == backbone
    selection = json.loads((run / "round_1" / "selection.json").read_text())
    pool = [[c, k] for c, k in seen["items"]]
    assert pool == selection["train_items"] and len(pool) == selection["pool"] == len(unlabeled)
    # the bank holds the selected images only, at their places in the pool
    assert sorted(pool[i] for i in seen["bank"].entries) == sorted(selection["items"])
    assert 0 < len(seen["bank"].entries) < len(pool)
    with (run / "round_1" / "metrics.csv").open() as f:
        tags = {r["tag"] for r in csv.DictReader(f)}
    assert "pseudo/teacher_fraction" in tags


# ---------------------------------------------------------------------------------------------- the control
def test_the_same_steps_control_trains_round_1_without_asking_the_teacher(phantom_root, tmp_path, monkeypatch):
    cfg = _cfg(phantom_root, tmp_path, "control", "schedule.iterations=4", "pseudo_labels.control=true")

    def no_teacher(*args, **kwargs):
        raise AssertionError("the control asked the teacher")

    monkeypatch.setattr(rounds_module, "build_run_teacher", no_teacher)
    result = train(cfg, progress=False)  # no teacher given: none may be built
    run = tmp_path / "control"
    assert not (run / "round_1" / "selection.json").exists()
    round1 = load_checkpoint(run / "round_1" / "checkpoints" / "last.pt")
    assert round1["iteration"] == round_config(cfg, 1).schedule.iterations  # the same extra steps
    assert load_checkpoint(result.best_checkpoint)["config"]["output_dir"] == str(run / "round_1")
    backbone = _cfg(phantom_root, tmp_path, "c2", "method.backbone=unimatch", "pseudo_labels.control=true")
    pool = resolve_split(backbone.data, build_reader(backbone.data).case_ids()).unlabeled
    data = rounds_module.make_round_bank(backbone, run / "round_0/checkpoints/best.pt", tmp_path / "r1", 1)
    assert sorted({c for c, _ in data.items}) == sorted(pool) and not data.bank.entries  # its own pool, no label


def test_trusting_no_class_in_rounds_must_say_it_is_the_control(phantom_root, tmp_path):
    with pytest.raises(ConfigError, match="pseudo_labels.control=true"):
        _cfg(phantom_root, tmp_path, "run", "pseudo_labels.trust=none")
    _cfg(phantom_root, tmp_path, "run", "pseudo_labels.trust=none", "pseudo_labels.control=true")
    with pytest.raises(ConfigError, match="same-steps control of method.name=semisam_rounds"):
        load_config(
            REPO / "configs/demo.yaml",
            tiny_overrides(phantom_root, tmp_path / "x", **{"pseudo_labels.control": "true"}),
        )


def test_the_rounds_label_with_the_adapted_teacher(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    cfg = _cfg(
        phantom_root,
        tmp_path,
        "adapted",
        "schedule.iterations=3",
        "teacher.adapt=decoder",
        "teacher.adaptation.steps=2",
    )
    seen = []
    real = rounds_module.RoundLabeling.build

    def recording(cfg, teacher, device):
        seen.append(teacher)
        return real(cfg, teacher, device)

    monkeypatch.setattr(rounds_module.RoundLabeling, "build", recording)
    pc.precompute(cfg, teacher=tiny_teacher, splits=["unlabeled", "val"], priors=False, progress=False)
    train(cfg, progress=False, teacher=tiny_teacher)
    assert len(seen) == 1 and seen[0].adaptation is not None and seen[0].frozen is tiny_teacher
    assert seen[0].class_embedding is not None
