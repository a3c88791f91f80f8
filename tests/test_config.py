from pathlib import Path

import pytest

from semisam.config.loader import config_from_dict, config_to_dict, load_config
from semisam.config.schema import ConfigError

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
