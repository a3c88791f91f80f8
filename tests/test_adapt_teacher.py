"""The adapted teacher (teacher.adapt=decoder): a decoder trained on the labeled images only, the image encoder
untouched, each class routed through its own prompt embedding, the adaptation reused only when identical, and
every user of the teacher given the adapted one."""

import json

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.config.schema import ConfigError
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.pseudolabel.analysis import compare_teachers, pooled_class_dice
from semisam.pseudolabel.refine import refined_dir_name
from semisam.teacher import adapt as adapt_module
from semisam.teacher.adapt import adapt_teacher, build_run_teacher, low_res_target
from semisam.teacher.boxes import perturb_box
from semisam.teacher.engine import ClassPromptEmbedding
from semisam.teacher.errors import TeacherError

from .conftest import REPO, tiny_overrides
from .test_semisam import LabelGuard


def _cfg(root, tmp_path, *extra):
    overrides = tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised"})
    overrides += [
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "teacher.adapt=decoder",
        "teacher.adaptation.steps=24",
        "teacher.adaptation.lr=0.003",
        "pseudo_labels.min_area=1",
        *extra,
    ]
    return load_config(REPO / "configs/demo.yaml", overrides)


def _decode(teacher, box, classes):
    embedding = torch.randn((1, *teacher.embedding_shape), generator=torch.Generator().manual_seed(0))
    boxes = np.repeat(np.asarray([box], np.float32), len(classes), axis=0)
    size = (32, 32)
    return teacher.decode_boxes(embedding, [boxes], [size], [teacher.input_size(size)], classes=[classes])[0].logits


# ---------------------------------------------------------------------------------------------- the engine
def test_a_zero_class_embedding_answers_as_the_published_decoder(tiny_teacher):
    adapted = tiny_teacher.with_decoder(None, ClassPromptEmbedding(3, tiny_teacher.embedding_shape[0]))
    box = [4.0, 5.0, 20.0, 24.0]
    assert torch.equal(_decode(adapted, box, [1, 2]), _decode(tiny_teacher, box, [1, 2]))


def test_the_class_embedding_routes_each_prompt_to_its_own_class(tiny_teacher):
    embedding = ClassPromptEmbedding(3, tiny_teacher.embedding_shape[0])
    with torch.no_grad():
        embedding.embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    adapted = tiny_teacher.with_decoder(None, embedding)
    box = [4.0, 5.0, 20.0, 24.0]
    mixed = _decode(adapted, box, [1, 2, 1])
    only_one, only_two = _decode(adapted, box, [1]), _decode(adapted, box, [2])
    assert not torch.allclose(only_one[0], only_two[0], atol=1e-3)  # the class changes the answer
    torch.testing.assert_close(mixed[0], only_one[0])  # each prompt's answer is its own class's, batch or not
    torch.testing.assert_close(mixed[1], only_two[0])
    torch.testing.assert_close(mixed[2], only_one[0])
    with pytest.raises(TeacherError, match="class of every prompt"):
        adapted.decode_boxes(
            torch.zeros((1, *tiny_teacher.embedding_shape)), [np.asarray([box], np.float32)], [(32, 32)], [(64, 64)]
        )
    with pytest.raises(ValueError, match="foreground classes 1..2"):
        _decode(adapted, box, [3])


def test_an_adapted_teacher_shares_the_encoders_and_owns_its_decoder(tiny_teacher):
    adapted = tiny_teacher.with_decoder(None, None)
    assert adapted.model.image_encoder is tiny_teacher.model.image_encoder
    assert adapted.model.prompt_encoder is tiny_teacher.model.prompt_encoder
    assert adapted.frozen is tiny_teacher
    with torch.no_grad():
        next(adapted.model.mask_decoder.parameters()).add_(1.0)
    assert not torch.equal(
        next(adapted.model.mask_decoder.parameters()), next(tiny_teacher.model.mask_decoder.parameters())
    )
    assert not any(p.requires_grad for p in adapted.model.parameters())


def test_the_low_resolution_target_is_the_inverse_of_postprocess_masks(tiny_teacher):
    component = np.zeros((32, 48), bool)
    component[8:24, 10:30] = True
    target = low_res_target(tiny_teacher, component).float()
    logits = (target * 2 - 1)[None, None] * 20  # a confident decode of exactly the target
    h, w = tiny_teacher.input_size(component.shape)
    back = tiny_teacher.model.postprocess_masks(logits, (h, w), component.shape)[0, 0] > 0
    assert (back.numpy() == component).mean() > 0.97


def test_perturbed_boxes_stay_in_the_image_and_at_least_a_pixel_wide():
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = perturb_box(np.asarray([30.0, 0.0, 31.0, 2.0]), (32, 32), rng, 0.9, (0.5, 1.5))
        assert box[0] >= 0 and box[2] <= 32 and box[1] >= 0 and box[3] <= 32
        assert box[2] - box[0] >= 1 - 1e-5 and box[3] - box[1] >= 1 - 1e-5


# ---------------------------------------------------------------------------------------------- the adaptation
def test_adaptation_trains_the_decoder_only_on_labeled_images_and_improves_val(
    phantom_root, tmp_path, tiny_teacher, monkeypatch
):
    cfg = _cfg(phantom_root, tmp_path)
    real = build_reader(cfg.data)
    split = resolve_split(cfg.data, real.case_ids())
    guard = LabelGuard(real, [*split.unlabeled, *split.test])  # val labels select; no other label is read
    monkeypatch.setattr(adapt_module, "build_reader", lambda data_cfg: guard)
    encoder = {k: v.clone() for k, v in tiny_teacher.model.image_encoder.state_dict().items()}
    prompts = {k: v.clone() for k, v in tiny_teacher.model.prompt_encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in tiny_teacher.model.mask_decoder.state_dict().items()}

    result = adapt_teacher(cfg, tiny_teacher, progress=False)

    assert guard.touched == []
    for before, module in ((encoder, tiny_teacher.model.image_encoder), (prompts, tiny_teacher.model.prompt_encoder)):
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # bitwise
    assert all(torch.equal(decoder[k], v) for k, v in tiny_teacher.model.mask_decoder.state_dict().items())
    report = json.loads((result.directory / "adaptation.json").read_text())
    assert len(report["classes"]) == cfg.data.num_classes - 1
    scores = next(iter(report["classes"].values()))
    assert report["best_step"] > 0 and scores["adapted"] > scores["frozen"] + 0.05  # a random decoder learns
    assert (result.directory / "adaptation.png").stat().st_size > 0
    assert result.teacher.adaptation == report["identity"]
    assert result.teacher.model.image_encoder is tiny_teacher.model.image_encoder
    changed = result.teacher.model.mask_decoder.state_dict()
    assert any(not torch.equal(decoder[k], v) for k, v in changed.items())


def test_the_same_identity_reuses_the_adaptation_and_any_change_adapts_again(
    phantom_root, tmp_path, tiny_teacher, monkeypatch
):
    calls = []
    real_adapt = adapt_module._adapt

    def counting(*args, **kwargs):
        calls.append(args[0].seed)
        return real_adapt(*args, **kwargs)

    monkeypatch.setattr(adapt_module, "_adapt", counting)
    first = build_run_teacher(_cfg(phantom_root, tmp_path, "teacher.adaptation.steps=6"), tiny_teacher, False)
    again = build_run_teacher(_cfg(phantom_root, tmp_path, "teacher.adaptation.steps=6"), tiny_teacher, False)
    assert len(calls) == 1  # read back, as a resumed run does
    for a, b in zip(first.model.mask_decoder.parameters(), again.model.mask_decoder.parameters(), strict=True):
        assert torch.equal(a, b)
    build_run_teacher(_cfg(phantom_root, tmp_path, "teacher.adaptation.steps=6", "seed=5"), tiny_teacher, False)
    build_run_teacher(
        _cfg(phantom_root, tmp_path, "teacher.adaptation.steps=6", "data.split.labeled_count=8"), tiny_teacher, False
    )
    build_run_teacher(_cfg(phantom_root, tmp_path, "teacher.adaptation.steps=7"), tiny_teacher, False)
    assert len(calls) == 4
    assert build_run_teacher(_cfg(phantom_root, tmp_path, "teacher.adapt=none"), tiny_teacher) is tiny_teacher
    assert len(calls) == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("teacher.adapt=encoder", "teacher.adapt"),
        ("teacher.adaptation.steps=0", "teacher.adaptation.steps"),
        ("teacher.adaptation.jitter=1.5", "teacher.adaptation.jitter"),
    ],
)
def test_bad_adaptation_settings_are_refused(phantom_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(phantom_root, tmp_path, override)


# ---------------------------------------------------------------------------------------------- the users
def test_pooled_class_dice_counts_every_pixel_once():
    pred = [np.array([[1, 1, 0, 2]]), np.array([[0, 0, 0, 0]])]
    ref = [np.array([[1, 0, 0, 2]]), np.array([[1, 0, 0, 0]])]
    one, two = pooled_class_dice(pred, ref, 3)
    assert one == pytest.approx(2 * 1 / (2 + 2)) and two == 1.0
    assert np.isnan(pooled_class_dice([np.zeros((2, 2))], [np.zeros((2, 2))], 2)[0])


def test_the_analysis_compares_published_adapted_and_student_on_the_same_images(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path, "teacher.adaptation.steps=6")
    model = torch.nn.Sequential(torch.nn.Conv2d(cfg.data.in_channels, cfg.data.num_classes, 1))
    out = compare_teachers(cfg, model, limit=3, device=torch.device("cpu"), teacher=tiny_teacher, progress=False)
    names = cfg.data.class_names[1:] if cfg.data.class_names else ["1"]
    assert out["images"] == 3
    for name in names:
        assert set(out[name]) == {"frozen", "adapted", "student"}
    none = _cfg(phantom_root, tmp_path, "teacher.adapt=none")
    assert set(compare_teachers(none, model, 3, torch.device("cpu"), tiny_teacher, False)[names[0]]) == {
        "frozen",
        "student",
    }


def test_refinement_by_the_adapted_teacher_is_written_beside_the_published_one(phantom_root, tmp_path):
    cfg = _cfg(phantom_root, tmp_path)
    assert refined_dir_name("test", cfg) == "eval_test_refined_adapted"
    assert refined_dir_name("val", _cfg(phantom_root, tmp_path, "teacher.adapt=none")) == "eval_val_refined"
