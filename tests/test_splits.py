"""Id lists and split resolution, on synthetic id sets and on the real ACDC / Kvasir-SEG protocols."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semisam.config.schema import DataConfig, SplitConfig, SubsetConfig
from semisam.data.errors import DataError
from semisam.data.readers import build_reader
from semisam.data.splits import Split, read_id_list, resolve_split

IDS = [f"c{i:02d}" for i in range(20)]


def _cfg(root: Path, **split) -> DataConfig:
    for name in ("train", "val", "test", "labeled"):
        value = split.get(name)
        if isinstance(value, str):
            split[name] = SubsetConfig(file=value)
        elif isinstance(value, tuple):
            split[name] = SubsetConfig(file=value[0], key=value[1])
    return DataConfig(name="t", format="folder", root=str(root), num_classes=2, split=SplitConfig(**split))


def _lines(path: Path, ids) -> str:
    path.write_text("\n".join(ids) + "\n")
    return path.name


def _flat(split: Split) -> list[str]:
    return split.labeled + split.unlabeled + split.val + split.test


# ----------------------------------------------------------------------------------------------------------
# read_id_list
# ----------------------------------------------------------------------------------------------------------


def test_read_text_list_strips_blanks_whitespace_and_extensions(tmp_path):
    path = tmp_path / "ids.list"
    path.write_text("a.h5\n\n  b.nii.gz \r\nc.PNG\nd\n1.2.840.5\ne.nii\n\n")
    assert read_id_list(path) == ["a", "b", "c", "d", "1.2.840.5", "e"]


def test_read_json_list_at_key_or_top_level(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"train": ["x.jpg", "y"], "val": []}))
    assert read_id_list(tmp_path / "s.json", "train") == ["x", "y"]
    assert read_id_list(tmp_path / "s.json", "val") == []
    (tmp_path / "l.json").write_text(json.dumps(["p", "q"]))
    assert read_id_list(tmp_path / "l.json") == ["p", "q"]


def test_read_id_list_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.list: id list not found"):
        read_id_list(tmp_path / "missing.list")
    (tmp_path / "s.json").write_text(json.dumps({"train": ["a", "b"], "bad": ["a", 3]}))
    with pytest.raises(DataError, match=r"s\.json: no key 'labeled'.*\['bad', 'train'\]"):
        read_id_list(tmp_path / "s.json", "labeled")
    with pytest.raises(DataError, match=r"s\.json.*expected a list.*key"):
        read_id_list(tmp_path / "s.json")
    with pytest.raises(DataError, match=r"s\.json \(key 'bad'\): ids must be strings"):
        read_id_list(tmp_path / "s.json", "bad")
    (tmp_path / "d.list").write_text("a\nb.h5\na.h5\nb\nc\n")
    with pytest.raises(DataError, match=r"d\.list: duplicate ids \['a', 'b'\]"):
        read_id_list(tmp_path / "d.list")
    with pytest.raises(DataError, match=r"d\.list: a text id list has no keys"):
        read_id_list(tmp_path / "d.list", "train")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        read_id_list(tmp_path / "broken.json")


# ----------------------------------------------------------------------------------------------------------
# resolve_split on synthetic ids
# ----------------------------------------------------------------------------------------------------------


def test_labeled_count_takes_the_first_ids_in_file_order(tmp_path):
    train = list(reversed(IDS[:14]))
    cfg = _cfg(
        tmp_path,
        train=_lines(tmp_path / "train.list", train),
        val=_lines(tmp_path / "val.list", IDS[14:17]),
        test=str(tmp_path / "test.list"),  # absolute paths are used as they are
        labeled_count=4,
    )
    _lines(tmp_path / "test.list", IDS[17:])
    split = resolve_split(cfg, IDS)
    assert split.labeled == train[:4]
    assert split.unlabeled == train[4:]
    assert split.val == IDS[14:17] and split.test == IDS[17:]


def test_default_pool_is_everything_not_in_val_or_test(tmp_path):
    cfg = _cfg(tmp_path, val=_lines(tmp_path / "v.list", IDS[:2]), test=_lines(tmp_path / "t.list", IDS[-2:]))
    split = resolve_split(cfg, IDS)
    # No labeled spec: every pool case is labeled (fully supervised).
    assert split.labeled == IDS[2:-2] and split.unlabeled == []


def test_labeled_fraction_and_unlabeled_count(tmp_path):
    split = resolve_split(_cfg(tmp_path, labeled_fraction=0.25, unlabeled_count=5), IDS)
    assert split.labeled == IDS[:5]
    assert split.unlabeled == IDS[5:10]
    assert split.val == [] and split.test == []


def test_shuffle_seed_is_deterministic_and_changes_the_labeled_set(tmp_path):
    a = resolve_split(_cfg(tmp_path, labeled_count=5, shuffle_seed=3), IDS)
    b = resolve_split(_cfg(tmp_path, labeled_count=5, shuffle_seed=3), IDS)
    c = resolve_split(_cfg(tmp_path, labeled_count=5, shuffle_seed=4), IDS)
    assert a == b
    assert a.labeled != IDS[:5] and a.labeled != c.labeled
    assert sorted(a.labeled + a.unlabeled) == IDS


def test_labeled_list_from_json_and_unlabeled_is_the_rest(tmp_path):
    (tmp_path / "splits.json").write_text(
        json.dumps({"train": IDS[:12], "val": IDS[12:16], "test": IDS[16:], "few": [IDS[7], IDS[2]]})
    )
    cfg = _cfg(
        tmp_path,
        train=("splits.json", "train"),
        val=("splits.json", "val"),
        test=("splits.json", "test"),
        labeled=("splits.json", "few"),
    )
    split = resolve_split(cfg, IDS)
    assert split.labeled == [IDS[7], IDS[2]]
    assert split.unlabeled == [i for i in IDS[:12] if i not in (IDS[7], IDS[2])]
    assert (len(split.val), len(split.test)) == (4, 4)


def test_carving_val_and_test_is_seeded_disjoint_and_independent_of_shuffle(tmp_path):
    split = resolve_split(_cfg(tmp_path, val_fraction=0.2, test_fraction=0.1, labeled_count=3), IDS)
    assert (len(split.val), len(split.test)) == (4, 2)
    assert sorted(_flat(split)) == IDS  # disjoint and covering
    assert split.labeled == [i for i in IDS if i not in split.val + split.test][:3]
    same = resolve_split(_cfg(tmp_path, val_fraction=0.2, test_fraction=0.1, labeled_count=3), IDS)
    shuffled = resolve_split(_cfg(tmp_path, val_fraction=0.2, test_fraction=0.1, labeled_count=3, shuffle_seed=9), IDS)
    other = resolve_split(_cfg(tmp_path, val_fraction=0.2, test_fraction=0.1, labeled_count=3, carve_seed=1), IDS)
    assert same == split
    assert (shuffled.val, shuffled.test) == (split.val, split.test)
    assert shuffled.labeled != split.labeled
    assert other.val != split.val


def test_split_errors(tmp_path):
    _lines(tmp_path / "train.list", [*IDS[:5], "ghost1", "ghost2"])
    with pytest.raises(DataError, match=r"train\.list: ids not found.*'ghost1', 'ghost2'.*\(2 in all\)"):
        resolve_split(_cfg(tmp_path, train="train.list"), IDS)
    _lines(tmp_path / "train.list", IDS[:10])
    _lines(tmp_path / "val.list", IDS[8:12])
    with pytest.raises(DataError, match=r"train and val share ids \['c08', 'c09'\]"):
        resolve_split(_cfg(tmp_path, train="train.list", val="val.list"), IDS)
    _lines(tmp_path / "lab.list", [IDS[1], IDS[15]])
    with pytest.raises(DataError, match=r"lab\.list: labeled ids not in the training pool: \['c15'\]"):
        resolve_split(_cfg(tmp_path, train="train.list", labeled="lab.list"), IDS)
    (tmp_path / "empty.list").write_text("\n")
    with pytest.raises(DataError, match=r"leaves no labeled data"):
        resolve_split(_cfg(tmp_path, train="empty.list"), IDS)
    with pytest.raises(DataError, match=r"duplicate case ids \['c03'\]"):
        resolve_split(_cfg(tmp_path), [*IDS, "c03"])
    with pytest.raises(DataError, match=r"labeled_count=30 must be in 1\.\.20"):
        resolve_split(_cfg(tmp_path, labeled_count=30), IDS)
    with pytest.raises(DataError, match=r"labeled_fraction=0\.01 of 20 pool cases selects none"):
        resolve_split(_cfg(tmp_path, labeled_fraction=0.01), IDS)
    with pytest.raises(DataError, match=r"either val\.file or val_fraction"):
        resolve_split(_cfg(tmp_path, val="val.list", val_fraction=0.1), IDS)
    with pytest.raises(DataError, match=r"only one of.*\['labeled_count', 'labeled_fraction'\]"):
        resolve_split(_cfg(tmp_path, labeled_count=2, labeled_fraction=0.5), IDS)
    with pytest.raises(DataError, match=r"leaving none to train on"):
        resolve_split(_cfg(tmp_path, val_fraction=0.5, test_fraction=0.5), IDS)
    with pytest.raises(DataError, match=r"nope\.list: id list not found"):
        resolve_split(_cfg(tmp_path, test="nope.list"), IDS)


# ----------------------------------------------------------------------------------------------------------
# The real protocols
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ci", ["true", "", "false"])
def test_missing_real_data_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci):
    from . import conftest

    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "no_shared_data")
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(outcome, match=r"no_shared_data[/\\]ACDC"):
        conftest.require_shared_data("ACDC")
    (tmp_path / "no_shared_data" / "ACDC").mkdir(parents=True)
    assert conftest.require_shared_data("ACDC") == tmp_path / "no_shared_data"


@pytest.mark.parametrize("labeled_count", [68, 136])
def test_real_acdc_literature_protocol(acdc_root, labeled_count):
    root = acdc_root
    cfg = _cfg(root, train="train_slices.list", val="val.list", test="test.list", labeled_count=labeled_count)
    cfg.format = "ssl4mis_h5"
    split = resolve_split(cfg, build_reader(cfg).case_ids())
    assert len(split.labeled) == labeled_count
    assert len(split.unlabeled) == 1312 - labeled_count
    assert (len(split.val), len(split.test)) == (20, 40)
    assert split.labeled[0] == "patient099_frame01_slice_15"
    assert split.labeled == read_id_list(root / "train_slices.list")[:labeled_count]
    assert split.val[0] == "patient028_frame01" and split.test[0] == "patient011_frame01"  # volumes


def test_real_kvasir_fixed_split(kvasir_root):
    root = kvasir_root
    cfg = _cfg(
        root,
        train=("splits.json", "train"),
        val=("splits.json", "val"),
        test=("splits.json", "test"),
        labeled=("splits.json", "labeled_10pct"),
    )
    split = resolve_split(cfg, build_reader(cfg).case_ids())
    assert (len(split.labeled), len(split.unlabeled), len(split.val), len(split.test)) == (80, 718, 100, 100)
    train = json.loads((root / "splits.json").read_text())["train"]
    assert split.labeled == train[:80] and split.unlabeled == train[80:]
