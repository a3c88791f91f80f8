"""Test-time refinement: the output rule, the calibration that hands a class back to the student, the student's
classes returned untouched, no label read while refining, and the report with both scores side by side."""

import json

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.data.cases import CaseLoader
from semisam.data.dataset import expand_to_slices
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.trainer import Trainer
from semisam.evaluation.runner import evaluate_checkpoint
from semisam.pseudolabel import refine as refine_module
from semisam.pseudolabel.labeler import PseudoLabeler
from semisam.pseudolabel.rectify import SOURCE_IGNORED, SOURCE_MODEL, SOURCE_TEACHER, Rectified, output_label
from semisam.pseudolabel.refine import calibrate_refinement, evaluate_refined, refine_images
from semisam.teacher import precompute as pc
from semisam.teacher.stores import open_embedding_store

from .conftest import REPO, tiny_overrides
from .test_semisam import LabelGuard


def _probs(label: np.ndarray, num_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Softmax-like (K, H, W) probabilities whose argmax is ``label``."""
    other = (1 - confidence) / (num_classes - 1)
    probs = np.full((num_classes, *label.shape), other, dtype=np.float32)
    np.put_along_axis(probs, label[None].astype(np.int64), confidence, axis=0)
    return probs


# ---------------------------------------------------------------------------------------------- the output rule
def test_output_takes_the_rectified_label_where_kept_and_the_student_elsewhere():
    student = np.array([[0, 1, 1, 2]])
    rectified = Rectified(
        label=np.array([[1, 0, 2, 2]]),
        weight=np.array([[1.0, 0.0, 1.0, 1.0]], np.float32),
        uncertainty=np.zeros((1, 4), np.float32),
        source=np.array([[SOURCE_TEACHER, SOURCE_IGNORED, SOURCE_MODEL, SOURCE_TEACHER]], np.uint8),
    )
    out = output_label(rectified, _probs(student, 3))
    assert out.tolist() == [[1, 1, 2, 2]]  # the ignored pixel is the student's, the others the rectified label
    # class 2 left to the student: its mask is exactly the student's (pixel 2 loses the teacher's 2, pixel 3 keeps 2)
    out = output_label(rectified, _probs(student, 3), student_classes=[2])
    assert ((out == 2) == (student == 2)).all()
    assert out.tolist() == [[1, 1, 1, 2]]


# ---------------------------------------------------------------------------------------------- calibration
def _cfg(root, tmp_path, *extra):
    overrides = tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised"})
    overrides += [
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "pseudo_labels.min_area=1",
        "pseudo_labels.perturbations=2",
    ]
    return load_config(REPO / "configs/demo.yaml", [*overrides, *extra])


def _labeler(cfg, teacher, reader=None):
    reader = reader or build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    pc.precompute(cfg, teacher=teacher, splits=["val", "test"], priors=False, progress=False,
                  keep_embeddings_of=["val", "test"])  # fmt: skip
    store = open_embedding_store(cfg, teacher, [*split.val, *split.test])
    return PseudoLabeler(cfg, teacher, CaseLoader(reader, cfg.data), store, None, torch.device("cpu")), split


def _oracle_student(labeler, reference):
    """A student that finds every structure but leaves scattered one-pixel holes in it (every 4th pixel on a
    diagonal lattice: the structure stays one component with its box). The test's oracle reads the labels."""

    def probabilities(model, items):
        out = []
        for case_id, k in items:
            ref = reference.label_slice(case_id, k)
            rows, cols = np.indices(ref.shape)
            holes = (ref > 0) & ((rows + cols) % 4 == 0)
            out.append(_probs(np.where(holes, 0, ref), labeler.cfg.data.num_classes, 0.95))
        return out

    return probabilities


def _teacher_answers(labeler, reference, good: bool):
    """Decodes of a teacher that returns each prompt's class exactly inside its box (good) or nothing (bad)."""
    from semisam.pseudolabel.labeler import boxes_cover

    def decode(items, prompt_sets):
        out = []
        for (case_id, k), sets in zip(items, prompt_sets, strict=True):
            ref = reference.label_slice(case_id, k)
            maps = []
            for prompt, group in sets:
                exact = ((ref == prompt.class_index) & boxes_cover([prompt.box], ref.shape)).astype(np.float32)
                answer = exact if good else np.zeros_like(exact)
                maps.append(np.stack([np.clip(answer, 0.01, 0.99)] * len(group)))
            out.append(maps)
        return out

    return decode


@pytest.mark.parametrize("good", [True, False])
def test_calibration_refines_a_class_only_when_it_gains_on_val(phantom_root, tmp_path, tiny_teacher, good):
    cfg = _cfg(phantom_root, tmp_path)
    labeler, split = _labeler(cfg, tiny_teacher)
    reference = CaseLoader(build_reader(cfg.data), cfg.data)
    labeler.model_probabilities = _oracle_student(labeler, reference)
    labeler._decode = _teacher_answers(labeler, reference, good)
    items = expand_to_slices(labeler.loader.reader, split.val)
    trusted, scalars = calibrate_refinement(labeler, torch.nn.Identity(), items, seed=0)
    assert set(trusted) == {1, 2, 3}
    # the exact teacher fills the student's holes: every class gains; the teacher that answers nothing
    # would erase each class: every class is handed back to the student
    assert all(trusted.values()) if good else not any(trusted.values())
    for name in ("RV", "Myo", "LV"):
        gain = scalars[f"refined_dice_{name}"] - scalars[f"model_dice_{name}"]
        assert (gain > 0.005) if good else (gain < -0.005)

    refined = refine_images(labeler, torch.nn.Identity(), items, trusted, seed=1)
    for (case_id, k), r in zip(items, refined, strict=True):
        ref = reference.label_slice(case_id, k)
        if good:  # the refined output is the reference itself: the teacher's exact answers inside the boxes
            assert (r.refined == ref).mean() > (r.student == ref).mean()
        else:  # every class handed back: the student's prediction, bit for bit
            np.testing.assert_array_equal(r.refined, r.student)


def test_a_class_handed_to_the_student_is_returned_exactly(phantom_root, tmp_path, tiny_teacher):
    """With the real (random tiny) teacher refining RV and LV, the myocardium left to the student is its own."""
    cfg = _cfg(phantom_root, tmp_path, "pseudo_labels.model_confidence=0.99")
    labeler, split = _labeler(cfg, tiny_teacher)
    torch.manual_seed(0)
    from semisam.student.unet import build_student

    model = build_student(cfg.student, cfg.data.in_channels, cfg.data.num_classes).eval()
    items = expand_to_slices(labeler.loader.reader, split.test)
    refined = refine_images(labeler, model, items, {1: True, 2: False, 3: True}, seed=0)
    for r in refined:
        np.testing.assert_array_equal(r.refined == 2, r.student == 2)
    with pytest.raises(ValueError, match="every foreground class"):
        refine_images(labeler, model, items, {1: True}, seed=0)


def test_refinement_reads_no_label_of_the_images_it_refines(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path)
    real = build_reader(cfg.data)
    split = resolve_split(cfg.data, real.case_ids())
    guard = LabelGuard(real, split.test)
    labeler, _ = _labeler(cfg, tiny_teacher, reader=guard)
    plain, _ = _labeler(cfg, tiny_teacher)
    torch.manual_seed(0)
    from semisam.student.unet import build_student

    model = build_student(cfg.student, cfg.data.in_channels, cfg.data.num_classes).eval()
    items = expand_to_slices(real, split.test)
    trusted = {1: True, 2: True, 3: True}
    guarded = refine_images(labeler, model, items, trusted, seed=0)
    assert guard.touched == []
    for a, b in zip(guarded, refine_images(plain, model, items, trusted, seed=0), strict=True):
        np.testing.assert_array_equal(a.refined, b.refined)


# ---------------------------------------------------------------------------------------------- the report
def test_a_refined_evaluation_reports_student_and_refined_side_by_side(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path)
    result = Trainer(cfg, progress=False).fit()
    plain = evaluate_checkpoint(result.checkpoint, "test", tmp_path / "plain", progress=False)
    summary = evaluate_refined(result.checkpoint, "test", tmp_path / "refined", progress=False, teacher=tiny_teacher)
    on_disk = json.loads((tmp_path / "refined" / "summary.json").read_text())
    assert on_disk["refinement"]["trusted"].keys() == {"1", "2", "3"}
    assert on_disk["refinement"]["calibration"]["images"] > 0
    for key in ("mean", "foreground_mean", "metric_per_case"):
        assert key in on_disk and key in on_disk["student"]
    # the student-alone scores are those of a plain evaluation of the same checkpoint
    for c, values in plain["mean"].items():
        for m, v in values.items():
            assert summary["student"]["mean"][c][m] == pytest.approx(v, nan_ok=True)
    for entry in on_disk["metric_per_case"]:
        assert entry["student_metrics"].keys() == entry["metrics"].keys() == {"1", "2", "3"}
    assert summary["refinement"]["teacher"] == {"adapt": "none", "val_dice": None}  # the published teacher refined
    # a class the calibration left to the student scores exactly as the student there
    for c, refined in summary["refinement"]["trusted"].items():
        if not refined:
            assert summary["mean"][c]["dice"] == pytest.approx(summary["student"]["mean"][c]["dice"], nan_ok=True)
    for name in ("metrics_per_case.csv", "metrics_per_case_student.csv", "refinement.png"):
        assert (tmp_path / "refined" / name).stat().st_size > 0


def test_the_refined_classes_can_be_forced_for_an_ablation(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path)
    result = Trainer(cfg, progress=False).fit()
    out = tmp_path / "forced"
    summary = evaluate_refined(
        result.checkpoint, "test", out, None, ["refine.classes=[2]"], progress=False, teacher=tiny_teacher
    )
    assert summary["refinement"]["trusted"] == {"1": False, "2": True, "3": False}
    assert summary["refinement"]["calibration"]["images"] == 0  # not calibrated


def test_the_adapted_teacher_refines_into_its_own_folder(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path)
    result = Trainer(cfg, progress=False).fit()
    adapted = ["teacher.adapt=decoder", "teacher.adaptation.steps=3"]
    summary = evaluate_refined(result.checkpoint, "test", None, None, adapted, progress=False, teacher=tiny_teacher)
    run = result.checkpoint.parent.parent
    assert json.loads((run / "eval_test_refined_adapted" / "summary.json").read_text()) == json.loads(
        json.dumps(summary)
    )
    teacher = summary["refinement"]["teacher"]
    assert teacher["adapt"] == "decoder" and set(teacher["val_dice"]) == set(cfg.data.class_names[1:])
    assert not (run / "eval_test_refined").exists()


def test_refinement_needs_a_val_split_to_calibrate_on(phantom_root, tmp_path, tiny_teacher):
    from semisam.config.schema import ConfigError

    cfg = _cfg(phantom_root, tmp_path)
    result = Trainer(cfg, progress=False).fit()
    with pytest.raises(ConfigError, match="val"):
        refine_module.evaluate_refined(result.checkpoint, "val", progress=False, teacher=tiny_teacher)
