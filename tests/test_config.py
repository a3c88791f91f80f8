import logging
from pathlib import Path

import pytest

from semisam.config.loader import REMOVED_KEYS, config_differences, config_from_dict, config_to_dict, load_config
from semisam.config.schema import (
    METHOD_NAMES,
    ConfigError,
    RunConfig,
    reads_method_keys,
    semisam_backbone,
    trains_on_pseudo_labels,
    uses_rounds,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIGS = [*sorted((REPO / "configs").glob("*/[0-9]*.yaml")), REPO / "configs" / "demo.yaml"]


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_run_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.num_classes >= 2
    assert cfg.output_dir.startswith("runs/")


def test_acdc_protocol_values_compose_from_concerns():
    cfg = load_config(REPO / "configs/acdc/3_mean_teacher.yaml")
    assert cfg.data.format == "ssl4mis_h5"
    assert cfg.data.split.labeled_count == 68
    assert cfg.method.name == "mean_teacher"
    assert cfg.schedule.iterations == 30000 and cfg.schedule.batch_size == 12
    assert list(cfg.student.features) == [16, 32, 64, 128, 256]


def test_later_configs_and_overrides_win():
    cfg = load_config(
        [REPO / "configs/kvasir/10_supervised.yaml", REPO / "configs/schedule/cpu.yaml"],
        ["schedule.iterations=7", "data.image_size=[96,96]"],
    )
    assert cfg.schedule.iterations == 7
    assert list(cfg.data.image_size) == [96, 96]
    assert cfg.schedule.val_every == 250  # from cpu.yaml
    assert cfg.data.split.labeled.key == "labeled_10pct"


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match="schedule.iterationz"):
        load_config(REPO / "configs/demo.yaml", ["schedule.iterationz=5"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="schedule.iterations"):
        load_config(REPO / "configs/demo.yaml", ["schedule.iterations=many"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"defaults: [{REPO / 'configs/demo.yaml'}]\nstudent:\n  widths: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"student\.widths") as info:
        load_config(bad)
    assert "bad.yaml" in str(info.value)


def test_missing_required_value():
    with pytest.raises(ConfigError, match="data.root"):
        load_config(None, ["data.name=x", "data.format=folder", "data.num_classes=2"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.name=fixmatch", "method.name"),
        ("data.format=dicom", "data.format"),
        ("schedule.lr=-1", "schedule.lr"),
        ("data.image_size=[8,8]", "data.image_size"),
        ("data.split.labeled_count=0", "no labeled data"),
        ("eval.metrics=[dice,hd100]", "eval.metrics"),
    ],
)
def test_rule_violations_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(REPO / "configs/demo.yaml", [override])


def test_two_labeled_rules_conflict():
    with pytest.raises(ConfigError, match="only one of"):
        load_config(REPO / "configs/kvasir/10_supervised.yaml", ["data.split.labeled_count=5"])


def test_defaults_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("defaults: [nowhere]\n")
    with pytest.raises(ConfigError, match="nowhere"):
        load_config(tmp_path / "c.yaml")


def test_plain_dict_round_trip():
    cfg = load_config(REPO / "configs/acdc/7_mean_teacher.yaml", ["seed=3"])
    data = config_to_dict(cfg)
    assert isinstance(data, dict) and data["data"]["split"]["labeled_count"] == 136
    assert config_from_dict(data) == cfg
    assert config_from_dict(data, ["seed=4"]).seed == 4


# ---------------------------------------------------------------------------------------------- method names
DEMO = REPO / "configs" / "demo.yaml"


def test_the_schema_defaults_are_the_documented_ones():
    default = RunConfig()
    assert default.method.backbone == "auto"  # supervised for semisam_rounds, mean_teacher for semisam_online
    assert default.pseudo_labels.mode is None and default.pseudo_labels.enabled is None  # deprecated keys
    semisam = load_config(REPO / "configs/kvasir/10_semisam.yaml")
    assert semisam.method.name == "semisam_rounds" and semisam_backbone(semisam) == "supervised"
    online = load_config([REPO / "configs/kvasir/10_semisam.yaml", REPO / "configs/method/semisam_online.yaml"])
    assert online.method.name == "semisam_online" and semisam_backbone(online) == "mean_teacher"
    demo = load_config(DEMO)
    assert demo.method.name == "semisam_rounds" and demo.priors.enabled  # the demo: rounds, priors on


@pytest.mark.parametrize(
    ("name", "backbone", "resolved"),
    [
        ("semisam_rounds", "auto", "supervised"),
        ("semisam_rounds", "supervised", "supervised"),
        ("semisam_rounds", "unimatch", "unimatch"),
        ("semisam_rounds", "bcp", "bcp"),
        ("semisam_online", "auto", "mean_teacher"),
        ("semisam_online", "mean_teacher", "mean_teacher"),
        ("semisam_online", "unimatch", "unimatch"),
        ("semisam_online", "bcp", "bcp"),
    ],
)
def test_the_semisam_names_validate_on_their_backbones(name, backbone, resolved, caplog):
    with caplog.at_level(logging.WARNING, logger="semisam"):
        cfg = load_config(DEMO, [f"method.name={name}", f"method.backbone={backbone}"])
    assert "deprecated" not in caplog.text  # the new names warn about nothing
    assert (cfg.method.name, cfg.method.backbone, semisam_backbone(cfg)) == (name, backbone, resolved)
    assert trains_on_pseudo_labels(cfg) and uses_rounds(cfg) == (name == "semisam_rounds")
    assert "backbone" in reads_method_keys(cfg)
    assert ("consistency_weight" in reads_method_keys(cfg)) == (resolved == "mean_teacher")


def test_the_other_names_train_on_no_pseudo_labels():
    for name in METHOD_NAMES:
        cfg = load_config(DEMO, [f"method.name={name}"])
        assert trains_on_pseudo_labels(cfg) == name.startswith("semisam_")
        assert uses_rounds(cfg) == (name == "semisam_rounds")
        assert ("backbone" in reads_method_keys(cfg)) == name.startswith("semisam_")


OLD, ROUNDS, ONLINE = "method.name=semisam", "pseudo_labels.mode=rounds", "pseudo_labels.mode=online"


@pytest.mark.parametrize(
    ("old", "name", "backbone"),
    [
        ([OLD, ROUNDS], "semisam_rounds", "auto"),
        # rounds on the mean teacher had its consistency weight at 0: the supervised backbone, without the EMA
        ([OLD, ROUNDS, "method.backbone=mean_teacher"], "semisam_rounds", "supervised"),
        ([OLD, ROUNDS, "method.backbone=unimatch"], "semisam_rounds", "unimatch"),
        ([OLD, ONLINE], "semisam_online", "auto"),
        ([OLD, ONLINE, "method.backbone=mean_teacher"], "semisam_online", "mean_teacher"),
        ([OLD, ONLINE, "method.backbone=bcp"], "semisam_online", "bcp"),
        ([OLD, "pseudo_labels.enabled=false"], "mean_teacher", "auto"),  # the demo's priors on
        ([OLD, "pseudo_labels.enabled=false", "method.backbone=unimatch"], "unimatch", "auto"),
        ([OLD], "semisam_rounds", "auto"),  # no mode: semisam's documented default
        ([OLD, "pseudo_labels.enabled=true"], "semisam_rounds", "auto"),
        (["pseudo_labels.mode=online"], "semisam_online", "auto"),  # on a file that says semisam_rounds: the mode wins
        (["method.name=supervised", "pseudo_labels.mode=online", "pseudo_labels.enabled=true"], "supervised", "auto"),
    ],
)
def test_old_spellings_load_as_the_new_names_with_one_warning(old, name, backbone, caplog):
    with caplog.at_level(logging.WARNING, logger="semisam"):
        cfg = load_config(DEMO, old)
    assert (cfg.method.name, cfg.method.backbone) == (name, backbone)
    assert cfg.pseudo_labels.mode is None and cfg.pseudo_labels.enabled is None  # cleared: read nowhere else
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "semisam"]
    assert len(warnings) == 1 and "deprecated" in warnings[0] and f"method.name={name}" in warnings[0]
    assert "semisam_rounds or semisam_online" in warnings[0]  # says what to write instead


def test_a_config_saved_under_the_old_names_reads_back_as_the_new_ones_and_compares_equal(caplog):
    cfg = load_config(DEMO)  # semisam_rounds on auto
    old = config_to_dict(cfg)
    old["method"].update(name="semisam", backbone="mean_teacher")
    old["pseudo_labels"].update(enabled=True, mode="rounds")
    with caplog.at_level(logging.WARNING, logger="semisam"):
        back = config_from_dict(old)  # a checkpoint's config goes through the same translation
    assert (back.method.name, back.method.backbone, back.pseudo_labels.mode) == ("semisam_rounds", "supervised", None)
    assert "deprecated config spelling in a saved config" in caplog.text
    assert config_differences(cfg, old) == []  # a run written under the old names resumes
    supervised = load_config(DEMO, ["method.name=supervised"])
    old = config_to_dict(supervised)
    old["method"]["backbone"] = "mean_teacher"  # the former default, never read by a supervised run
    old["pseudo_labels"].update(enabled=True, mode="online")
    assert config_differences(supervised, old) == []
    old["method"]["name"] = "mean_teacher"  # a real difference still counts
    assert config_differences(supervised, old) == ["method.name: 'mean_teacher' -> 'supervised'"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method.backbone=mean_teacher"], r"method\.backbone='mean_teacher' is not one of auto, supervised, unimatch"),
        (["method.name=semisam_online", "method.backbone=supervised"], r"method\.backbone='supervised'"),
        (["method.name=semisam_offline"], r"method\.name"),
        (["method.backbone=fixmatch"], r"method\.backbone"),
        (["pseudo_labels.mode=weekly"], r"pseudo_labels\.mode='weekly'"),
        (["method.name=semisam", "pseudo_labels.enabled=false", "priors.enabled=false"], r"pseudo_labels\.enabled"),
    ],
)
def test_bad_method_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(DEMO, overrides)


def test_a_deprecated_key_set_past_the_loader_is_refused():
    cfg = load_config(DEMO)
    cfg.pseudo_labels.mode = "online"
    with pytest.raises(ConfigError, match=r"pseudo_labels\.mode='online' is deprecated"):
        validate_config(cfg)


def test_a_saved_config_with_a_removed_key_at_its_fixed_value_still_loads():
    cfg = load_config(REPO / "configs/demo.yaml", ["data.root=x"])
    saved = config_to_dict(cfg)
    saved["priors"]["projection_channels"] = REMOVED_KEYS["priors.projection_channels"]
    assert config_from_dict(saved) == cfg
    assert "projection_channels" in saved["priors"]  # the caller's dict is left alone
    saved["priors"]["projection_channels"] = 64
    with pytest.raises(ConfigError, match="priors.projection_channels=64 was removed"):
        config_from_dict(saved)
