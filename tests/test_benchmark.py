"""The benchmark runner: configs per method and scale, shared teacher cache, resumable runs, the results table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from semisam.benchmark.protocols import (
    VARIANTS,
    MethodVariant,
    Protocol,
    Scale,
    get_protocol,
    get_scale,
    get_variant,
)
from semisam.benchmark.runner import BenchmarkRunner, RunRecord, aggregate, build_run_config, format_table
from semisam.config.loader import load_config
from semisam.config.schema import ConfigError

from .conftest import REPO, tiny_overrides


def _summary(dice: dict[str, float], hd95: float) -> dict:
    fg = sum(dice.values()) / len(dice)
    return {
        "mean": {c: {"dice": d, "hd95": hd95, "asd": 1.0} for c, d in dice.items()},
        "foreground_mean": {"dice": fg, "hd95": hd95, "asd": 1.0},
        "class_names": {"1": "RV", "2": "LV"},
        "units": {"hd95": "voxels"},
        "num_cases": 3,
    }


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    records = [
        RunRecord("supervised", 0, "a", _summary({"1": 0.5, "2": 0.7}, 10.0), train_seconds=60.0, other_dice=0.5),
        RunRecord("supervised", 1, "b", _summary({"1": 0.7, "2": 0.9}, 20.0), train_seconds=120.0, other_dice=0.7),
        RunRecord("semisam", 0, "c", _summary({"1": 0.8, "2": float("nan")}, 5.0), 100.0, 1.0, 25.0),
    ]
    table = aggregate(records, ["supervised", "mean_teacher", "semisam"])
    assert list(table) == ["supervised", "semisam"]  # a method without runs has no row
    sup = table["supervised"]
    assert sup["foreground"]["dice"]["mean"] == pytest.approx(0.7)
    assert sup["foreground"]["dice"]["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.6 and 0.8
    assert sup["dice_per_class"]["RV"]["mean"] == pytest.approx(0.6)
    assert sup["train_minutes"]["mean"] == pytest.approx(1.5)
    assert table["semisam"]["dice_per_class"]["LV"] == {"mean": None, "std": None, "n": 0}  # NaN left out
    assert table["semisam"]["refresh_share"]["mean"] == pytest.approx(0.25)
    text = format_table(table, "voxels")
    assert "| supervised | 2 | 0.700 ± 0.141 | 0.600 ± 0.141 | 0.800 ± 0.141 | 15.0 ± 7.1 |" in text
    assert sup["other_dice"]["mean"] == pytest.approx(0.6)  # the other checkpoint's test Dice, kept beside
    assert "| Dice with last.pt |" in text  # these records score best.pt (records before eval.checkpoint)
    assert "| 15.0 ± 7.1 | 1.0 ± 0.0 | 0.600 ± 0.141 | n/a | 1.5 ± 0.7 |" in text  # n/a: not refined
    assert "| semisam | 1 | n/a | 0.800 | n/a | 5.0 | 1.0 | n/a | n/a | 1.7 | 25 % |" in text
    assert "refined by the teacher" not in text


def test_the_table_shows_the_refined_scores_beside_the_students():
    def refined(dice: dict[str, float], student_fg: float, rv: bool) -> dict:
        out = _summary(dice, 1.0)
        out["student"] = {"foreground_mean": {"dice": student_fg}}
        out["refinement"] = {"trusted": {"1": rv, "2": True}, "seconds_per_image": 2.0}
        return out

    first = refined({"1": 0.6, "2": 0.8}, 0.6, True)
    second = refined({"1": 0.7, "2": 1.0}, 0.8, False)
    records = [
        RunRecord("supervised", 0, "a", _summary({"1": 0.5, "2": 0.7}, 1.0), refined=first),
        RunRecord("supervised", 1, "b", _summary({"1": 0.7, "2": 0.9}, 1.0), refined=second),
    ]
    table = aggregate(records, ["supervised"])
    ref = table["supervised"]["refined"]
    assert ref["dice"]["mean"] == pytest.approx(0.775)
    assert ref["gain_points"]["mean"] == pytest.approx(7.5)  # +10 and +5 points over the same students
    assert ref["refined_in_seeds"] == {"RV": 1, "LV": 2}
    text = format_table(table, "voxels")
    assert "| 0.775 ± 0.106 |" in text.splitlines()[2]  # the column "Dice refined" of the main table
    assert (
        "| supervised | 0.775 ± 0.106 | 0.650 ± 0.071 | 0.900 ± 0.141 | 7.5 ± 3.5 | RV 1, LV 2 | 2.00 ± 0.00 |" in text
    )
    # a method whose seeds are not all refined shows no refined mean (it would mix students)
    records[1].refined = None
    assert aggregate(records, ["supervised"])["supervised"]["refined"] is None


def test_every_method_of_a_protocol_shares_schedule_split_and_seed(tmp_path):
    protocol, scale = get_protocol("acdc-3"), Scale("cpu", {"acdc": "cpu_acdc.yaml"})
    cfgs = {m: build_run_config(protocol, VARIANTS[m], scale, 3, tmp_path) for m in VARIANTS}
    for name, cfg in cfgs.items():
        assert cfg.seed == 3
        assert cfg.schedule == cfgs["supervised"].schedule
        if name != "head_feat":  # the reference without a U-Net
            assert cfg.student == cfgs["supervised"].student
        if name.startswith("semisam_rounds_pool_pl"):  # the one variant (and its control) whose point is the pool
            assert cfg.data.split.unlabeled_count is None
            cfg.data.split.unlabeled_count = cfgs["supervised"].data.split.unlabeled_count
        assert cfg.data == cfgs["supervised"].data
        assert cfg.data.split.labeled_count == 68
        assert cfg.schedule.iterations == 1500 and list(cfg.data.image_size) == [128, 128]
        assert cfg.student.arch == ("embedding_head" if name == "head_feat" else "res_unet")
        assert cfg.output_dir == str(tmp_path / name / "seed3")
        assert cfg.teacher.cache_dir == str(tmp_path / "cache")
    added = [m for m in VARIANTS if m.endswith(("_control", "_adapted"))]  # every rounds variant's control
    assert {m: cfgs[m].method.name for m in VARIANTS if m not in added} == {
        "supervised": "supervised",
        "supervised_priors": "supervised",
        "supervised_samaug": "supervised",
        "mean_teacher": "mean_teacher",
        "unimatch": "unimatch",
        "fixmatch": "unimatch",
        "bcp": "bcp",
        "semisam_priors": "mean_teacher",
        "semisam_pl": "semisam_online",
        "semisam_online": "semisam_online",
        "semisam_rounds_pl": "semisam_rounds",
        "semisam_rounds_pool_pl": "semisam_rounds",
        "semisam_rounds2_pl": "semisam_rounds",
        "semisam_rounds_priors": "semisam_rounds",
        "semisam_unimatch": "semisam_rounds",
        "semisam_bcp": "semisam_rounds",
        "semisam": "semisam_rounds",
        "supervised_feat": "supervised",
        "head_feat": "supervised",
        "unimatch_feat": "unimatch",
        "semisam_feat": "semisam_rounds",
        "semisam_unimatch_feat": "semisam_rounds",
    }
    rounds = [m for m in VARIANTS if m not in added and cfgs[m].method.name == "semisam_rounds" and m != "semisam"]
    assert sorted(f"{m}_control" for m in rounds) == sorted(m for m in added if m.endswith("_control"))
    for name in rounds:  # the control: the same run, no teacher label
        control = cfgs[f"{name}_control"]
        assert control.pseudo_labels.control and not cfgs[name].pseudo_labels.control
        assert control.method == cfgs[name].method and control.priors == cfgs[name].priors
        assert control.teacher.adapt == "none"
    for name in ("semisam_feat", "semisam_unimatch_feat", "semisam_unimatch"):
        adapted = cfgs[f"{name}_adapted"]
        assert adapted.teacher.adapt == "decoder" and cfgs[name].teacher.adapt == "none"
        assert adapted.method == cfgs[name].method and adapted.priors == cfgs[name].priors
    for name in ("supervised_feat", "unimatch_feat", "semisam_feat", "semisam_unimatch_feat"):
        assert cfgs[name].priors.enabled and cfgs[name].priors.source == "embeddings"
    assert cfgs["supervised_priors"].priors.source == "everything"
    fixmatch = cfgs["fixmatch"].method.unimatch  # FixMatch is a switch of UniMatch, not a copy
    assert fixmatch.strong_views == 1 and not fixmatch.feature_perturbation
    assert cfgs["unimatch"].method.unimatch.strong_views == 2 and cfgs["unimatch"].method.unimatch.feature_perturbation
    assert cfgs["semisam_unimatch"].method.backbone == "unimatch" and cfgs["semisam_bcp"].method.backbone == "bcp"
    assert cfgs["supervised_priors"].priors.enabled and not cfgs["supervised"].priors.enabled
    samaug = cfgs["supervised_samaug"].priors  # SAMAug's whole recipe, beside the concat ablation
    assert samaug.enabled and samaug.fusion == "add" and samaug.alternate
    assert cfgs["supervised_priors"].priors.fusion == "concat" and not cfgs["supervised_priors"].priors.alternate
    assert not cfgs["semisam"].priors.enabled and cfgs["semisam"].method.backbone == "auto"  # the default
    assert cfgs["semisam_rounds_priors"].priors.enabled and not cfgs["semisam_rounds_pl"].priors.enabled
    assert cfgs["semisam_rounds2_pl"].pseudo_labels.rounds == 2 and cfgs["semisam_rounds_pl"].pseudo_labels.rounds == 1
    assert cfgs["semisam_online"].priors.enabled and not cfgs["semisam_pl"].priors.enabled
    assert cfgs["semisam_priors"].priors.enabled
    assert all(c.pseudo_labels.mode is None and c.pseudo_labels.enabled is None for c in cfgs.values())
    assert cfgs["mean_teacher"].method.ema_decay == cfgs["semisam"].method.ema_decay


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown protocol 'acdc-5'.*acdc-3"):
        get_protocol("acdc-5")
    with pytest.raises(ConfigError, match="unknown method 'remixmatch'"):
        get_variant("remixmatch")


@pytest.fixture()
def phantom_protocol(tmp_path, phantom_root):
    """A protocol on the session phantom whose configs live in a temporary configs folder."""
    configs = tmp_path / "configs"
    (configs / "phantom").mkdir(parents=True)
    (configs / "benchmark").mkdir()
    for method in ("supervised", "mean_teacher", "semisam"):
        (configs / "phantom" / f"6_{method}.yaml").write_text(
            f"defaults: [{REPO / 'configs' / 'demo.yaml'}]\nmethod: {{name: {method}}}\n"
        )
    (configs / "benchmark" / "tiny.yaml").write_text("pseudo_labels: {calibration_images: 2, min_model_dice: 0.0}\n")
    overrides = [
        o for o in tiny_overrides(phantom_root, tmp_path / "unused") if not o.startswith(("output_dir", "method.name"))
    ]  # each protocol config names its method
    protocol = Protocol("phantom-6", "phantom", "6", "phantom, 6 labeled")
    return configs, protocol, Scale("tiny", {"phantom": "tiny.yaml"}), overrides


def test_benchmark_runs_methods_once_and_is_resumable(tmp_path, phantom_protocol, tiny_teacher):
    configs, protocol, scale, overrides = phantom_protocol
    methods = [VARIANTS["supervised"], VARIANTS["semisam_pl"]]
    out = tmp_path / "bench"
    overrides = [*overrides, "pseudo_labels.warmup=0.3", "pseudo_labels.refresh_every=2"]
    runner = BenchmarkRunner(protocol, scale, methods, [0, 1], out, overrides, False, configs, tiny_teacher)
    results = runner.run(command="test")
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        ("supervised", 0),
        ("semisam_pl", 0),
        ("supervised", 1),
        ("semisam_pl", 1),
    ]
    assert results["teacher_cache"]["computed_cases"] > 0 and not results["teacher_cache"]["priors"]
    for r in results["runs"]:
        run_dir = out / r["method"] / f"seed{r['seed']}"
        summary = json.loads((run_dir / "eval_test" / "summary.json").read_text())
        assert summary["num_cases"] == 4
        # the run is scored with best.pt (eval.checkpoint) and last.pt is scored beside it
        other = json.loads((run_dir / "eval_test_last" / "summary.json").read_text())
        assert r["checkpoint"] == "best" and r["other_dice"] == other["foreground_mean"]["dice"]
    refreshes = results["table"]["semisam_pl"]["refresh_share"]
    assert refreshes["n"] == 2 and 0 < refreshes["mean"] < 1
    assert results["table"]["supervised"]["refresh_share"]["n"] == 0
    assert (out / "dice.png").stat().st_size > 0
    table = (out / "results.md").read_text()
    assert "| supervised | 2 |" in table and "| semisam_pl | 2 |" in table
    assert "Dice with last.pt" in table and "scoring the checkpoint with the best val Dice" in table
    # the machine and the teacher's dtype are written beside the figures: results move with them
    assert torch.backends.cpu.get_cpu_capability() in results["machine"]
    assert results["teacher_dtype"] == tiny_teacher.manifest()["dtype"]
    assert f"teacher computed in: {results['teacher_dtype']}" in table
    assert all(r["machine"] == results["machine"] for r in results["runs"])

    # started again: nothing is trained or computed again, the table is the same; a run trained on another
    # machine is named in the header
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    record = out / "supervised" / "seed1" / "benchmark_run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "machine": "CPU Elsewhere, 64 cores"}))
    again = BenchmarkRunner(protocol, scale, methods, [0, 1], out, overrides, False, configs, tiny_teacher).run("test")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps
    assert again["teacher_cache"]["computed_cases"] == 0
    assert again["table"] == results["table"]
    assert all(r["git_commit"] == results["git_commit"] for r in again["runs"])
    assert "(runs trained on CPU Elsewhere, 64 cores)" in (out / "results.md").read_text()

    # a scored run is not reused under another config: its result would be another experiment's
    changed = [*overrides, "method.dice_weight=0.7"]
    with pytest.raises(ConfigError, match=r"supervised/seed0 was scored with another config.*method.dice_weight"):
        BenchmarkRunner(protocol, scale, methods, [0], out, changed, False, configs, tiny_teacher).run("test")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps

    # --refine on the finished runs: every method is refined at test time, nothing is trained again
    refined = BenchmarkRunner(protocol, scale, methods, [0], out, overrides, False, configs, tiny_teacher, refine=True)
    results = refined.run("test")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps
    for name in ("supervised", "semisam_pl"):
        assert (out / name / "seed0" / "eval_test_refined" / "summary.json").exists()
        assert results["table"][name]["refined"]["dice"]["n"] == 1
    assert "method (refined by the teacher)" in (out / "results.md").read_text()


def test_the_benchmark_tool_runs_three_seeds_by_default():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    parser = tool.build_parser()
    args = parser.parse_args(["--protocol", "kvasir-10"])  # what main() parses when --seeds is not given
    seeds = tool.parse_seeds(args.seeds)
    assert seeds == list(tool.DEFAULT_SEEDS) and len(set(seeds)) == 3
    assert f"default {args.seeds}:" in " ".join(parser.format_help().split())  # and the help says the same


def test_seeds_change_the_runs_but_not_the_protocol(tmp_path, phantom_protocol):
    configs, protocol, scale, overrides = phantom_protocol
    a = build_run_config(protocol, VARIANTS["supervised"], scale, 0, tmp_path, overrides, configs)
    b = build_run_config(protocol, VARIANTS["supervised"], scale, 1, tmp_path, overrides, configs)
    assert (a.seed, b.seed) == (0, 1) and a.data == b.data and a.schedule == b.schedule


def test_a_variant_of_another_method_config_is_found(phantom_protocol):
    configs, protocol, _, _ = phantom_protocol
    variant = MethodVariant("x", "semisam", ("priors.enabled=false",))
    assert protocol.method_config(variant, configs) == configs / "phantom" / "6_semisam.yaml"


def test_rounds_share_round_0_with_the_supervised_run_of_their_seed(tmp_path):
    """A self-training run's round 0 is the supervised run of the same seed (with priors: supervised_priors), run
    first; the mean teacher is never one, and a rounds run without a matching supervised run trains its own."""
    names = ["semisam_rounds_priors", "semisam_rounds_pl", "mean_teacher", "supervised", "supervised_priors"]
    runner = BenchmarkRunner(
        get_protocol("kvasir-10"), get_scale("cpu"), [VARIANTS[m] for m in names], [0, 1], tmp_path, progress=False
    )
    assert runner.round0_providers == {
        ("semisam_rounds_priors", 0): "supervised_priors",
        ("semisam_rounds_priors", 1): "supervised_priors",
        ("semisam_rounds_pl", 0): "supervised",
        ("semisam_rounds_pl", 1): "supervised",
    }
    cfg = runner.configs[("semisam_rounds_pl", 1)]
    assert cfg.pseudo_labels.round0_checkpoint == str(tmp_path / "supervised" / "seed1" / "checkpoints" / "best.pt")
    alone = BenchmarkRunner(
        get_protocol("kvasir-10"), get_scale("cpu"), [VARIANTS["semisam"]], [0], tmp_path, progress=False
    )
    assert alone.round0_providers == {} and alone.configs[("semisam", 0)].pseudo_labels.round0_checkpoint is None


def test_a_scored_run_is_compared_on_what_it_uses(tmp_path):
    """A supervised run read back is not refused over teacher or pseudo-label settings it never used, nor over a
    setting added since at its default; a setting it uses still counts."""
    from semisam.config.loader import config_to_dict, unused_keys

    cfg = build_run_config(get_protocol("kvasir-10"), VARIANTS["supervised"], get_scale("cpu"), 0, tmp_path)
    saved = config_to_dict(cfg)
    saved["teacher"]["everything"]["box_scales"] = [0.5]
    saved["pseudo_labels"]["components"] = "largest"
    del saved["pseudo_labels"]["mode"]  # written before the setting existed
    assert "teacher.everything.box_scales" in unused_keys(cfg)
    run_dir = tmp_path / "supervised" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    BenchmarkRunner._check_scored_config(cfg, run_dir)  # accepted
    saved["schedule"]["lr"] = 0.01
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    with pytest.raises(ConfigError, match="schedule.lr"):
        BenchmarkRunner._check_scored_config(cfg, run_dir)


def test_a_scored_rounds_run_is_found_again_under_another_spelling_of_the_folder(tmp_path):
    """The round-0 checkpoint the benchmark wrote under a relative ``--out`` (or a folder since moved) names the
    same run as the absolute path of today's call; another seed's checkpoint does not."""
    from semisam.config.loader import config_to_dict

    methods = [VARIANTS["unimatch"], VARIANTS["semisam_unimatch"]]
    runner = BenchmarkRunner(get_protocol("kvasir-5"), get_scale("cpu"), methods, [0], tmp_path, progress=False)
    cfg = runner.configs[("semisam_unimatch", 0)]
    run_dir = tmp_path / "semisam_unimatch" / "seed0"
    run_dir.mkdir(parents=True)
    saved = config_to_dict(cfg)
    for written, accepted in [
        ("runs/benchmark/kvasir-5_cpu/unimatch/seed0/checkpoints/best.pt", True),
        ("/elsewhere/kvasir-5_cpu/unimatch/seed0/checkpoints/best.pt", True),
        ("runs/benchmark/kvasir-5_cpu/unimatch/seed1/checkpoints/best.pt", False),
        ("runs/benchmark/kvasir-5_cpu/unimatch/seed0/checkpoints/last.pt", False),
    ]:
        saved["pseudo_labels"]["round0_checkpoint"] = written
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
        if accepted:
            BenchmarkRunner._check_scored_config(cfg, run_dir)
        else:
            with pytest.raises(ConfigError, match="round0_checkpoint"):
                BenchmarkRunner._check_scored_config(cfg, run_dir)


def test_the_teacher_pass_computes_only_what_the_runs_read(tmp_path, monkeypatch):
    """Priors of the unlabeled pool only for a run that trains on the pool with priors; pool embeddings for a
    pseudo-label run without them (an embeddings-only pass)."""
    import semisam.benchmark.runner as runner_module
    import semisam.teacher.precompute as pc

    calls, pools = [], []

    def fake_precompute(cfg, teacher, splits, progress, priors, keep_embeddings_of):
        calls.append((tuple(splits), priors, keep_embeddings_of))
        pools.append(cfg.data.split.unlabeled_count)
        return pc.PrecomputeReport(root=tmp_path, computed=list(splits), images=len(splits), seconds=1.0)

    monkeypatch.setattr(runner_module, "precompute", fake_precompute)
    monkeypatch.setattr(runner_module, "build_teacher", lambda cfg: object())

    def teacher_pass(names):
        calls.clear()
        methods = [VARIANTS[m] for m in names]
        runner = BenchmarkRunner(get_protocol("acdc-3"), get_scale("cpu"), methods, [0], tmp_path, progress=False)
        runner.prepare_teacher()
        return list(calls), runner.precompute_report

    calls_made, report = teacher_pass(["supervised_priors", "semisam_rounds_pl"])
    assert calls_made == [
        (("labeled", "val", "test"), True, ("unlabeled", "val")),
        (("unlabeled", "val"), False, ("unlabeled", "val")),
    ]
    assert report["computed_cases"] == 5 and report["seconds"] == 2.0
    assert teacher_pass(["supervised_priors", "mean_teacher"])[0] == [(("labeled", "val", "test"), True, None)]
    assert teacher_pass(["semisam_rounds_priors"])[0] == [
        (("labeled", "unlabeled", "val", "test"), True, ("unlabeled", "val"))
    ]
    assert teacher_pass(["semisam_rounds_pl"])[0] == [(("unlabeled", "val"), False, ("unlabeled", "val"))]
    assert teacher_pass(["supervised", "mean_teacher"])[0] == []
    # a run on the whole pool: the embeddings pass covers its pool, not the scale's reduced one
    pools.clear()
    teacher_pass(["semisam_rounds_pl", "semisam_rounds_pool_pl"])
    assert pools == [None]
    pools.clear()
    assert teacher_pass(["semisam_rounds_priors", "semisam_rounds_pool_pl"])[0] == [
        (("labeled", "unlabeled", "val", "test"), True, ("unlabeled", "val")),
        (("unlabeled", "val"), False, ("unlabeled", "val")),
    ]
    assert pools == [300, None]
    # one prior pass per source: SAMAug's maps and the embedding priors are two stores
    sources = []
    real = fake_precompute

    def recording(cfg, *args, **kwargs):
        sources.append(cfg.priors.source if kwargs["priors"] else None)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(runner_module, "precompute", recording)
    assert teacher_pass(["supervised_priors", "supervised_feat", "head_feat"])[0] == [
        (("labeled", "val", "test"), True, None),
        (("labeled", "val", "test"), True, None),
    ]
    assert sources == ["everything", "embeddings"]


def test_feature_rounds_share_round_0_with_supervised_feat(tmp_path):
    names = ["semisam_feat", "supervised_feat", "supervised"]
    runner = BenchmarkRunner(
        get_protocol("kvasir-10"), get_scale("cpu"), [VARIANTS[m] for m in names], [0], tmp_path, progress=False
    )
    assert runner.round0_providers == {("semisam_feat", 0): "supervised_feat"}


def test_a_whole_pool_rounds_run_shares_the_supervised_round0(tmp_path):
    """The pool's size is no difference for a supervised run (it never reads the pool), so the whole-pool variant
    starts from the supervised run of its seed like the reduced-pool one."""
    methods = [VARIANTS["supervised"], VARIANTS["semisam_rounds_pool_pl"]]
    runner = BenchmarkRunner(get_protocol("kvasir-10"), get_scale("cpu"), methods, [0], tmp_path, progress=False)
    assert runner.round0_providers == {("semisam_rounds_pool_pl", 0): "supervised"}
    assert runner.configs[("semisam_rounds_pool_pl", 0)].data.split.unlabeled_count is None
    assert runner.configs[("supervised", 0)].data.split.unlabeled_count == 150


@pytest.mark.parametrize("method", ["supervised", "unimatch", "bcp"])
def test_a_method_step_is_timed_on_random_batches(method):
    from semisam.benchmark.throughput import method_step_seconds

    cfg = load_config(
        REPO / "configs/demo.yaml",
        ["data.root=unused", f"method.name={method}", "data.image_size=[32,32]", "student.features=[4,8,16,32]"],
    )
    seconds = method_step_seconds(cfg, steps=2, warmup=1)
    assert 0 < seconds < 60
