"""A tiny end-to-end run: train -> checkpoint -> resume -> evaluate, on the generated phantom."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from semisam.config.loader import load_config
from semisam.config.schema import ConfigError
from semisam.engine.trainer import Trainer
from semisam.evaluation.runner import evaluate_checkpoint

from .conftest import REPO, tiny_overrides

DEMO = REPO / "configs" / "demo.yaml"


def _cfg(root, out, **extra):
    return load_config(DEMO, tiny_overrides(root, out, **extra))


def test_supervised_run_writes_the_run_directory_and_evaluates(phantom_root, tmp_path):
    cfg = _cfg(phantom_root, tmp_path / "run", **{"method.name": "supervised"})
    result = Trainer(cfg, progress=False).fit()
    run = result.run_dir
    for name in (
        "config.yaml",
        "environment.json",
        "metrics.csv",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert result.iterations == 6
    assert load_config(run / "config.yaml") == cfg  # the saved config is the resolved one
    env = json.loads((run / "environment.json").read_text())
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert "git_commit" in env and env["packages"]["monai"]
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["iteration"] == 6 and state["config"]["method"]["name"] == "supervised"

    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    tags = {r["tag"] for r in rows}
    assert {"loss/supervised", "lr", "val/dice"} <= tags
    val = {int(r["iteration"]): float(r["value"]) for r in rows if r["tag"] == "val/dice"}
    assert list(val) == [3, 6]

    # the best checkpoint is the validation the run logged as best, and scoring it again gives the same Dice
    first_best = max(val, key=lambda it: (val[it], -it))  # a later tie does not replace the best
    assert (result.best_iteration, result.best_metric) == (first_best, pytest.approx(val[first_best], rel=1e-5))
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    assert (best["iteration"], best["best_metric"]) == (result.best_iteration, result.best_metric)
    rescored = evaluate_checkpoint(result.best_checkpoint, "val", progress=False)
    assert rescored["foreground_mean"]["dice"] == pytest.approx(result.best_metric, rel=1e-5, abs=1e-6)

    summary = evaluate_checkpoint(result.best_checkpoint, "test", progress=False)
    out = run / "eval_test"
    assert summary["num_cases"] == 4
    assert set(summary["mean"]) == {"1", "2", "3"}
    assert {"dice", "iou", "hd95", "asd"} <= set(summary["foreground_mean"])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["foreground_mean"] == pytest.approx(summary["foreground_mean"], nan_ok=True)
    with (out / "metrics_per_case.csv").open() as f:
        per_case = list(csv.DictReader(f))
    assert len(per_case) == 4 * 3
    for cls, means in summary["mean"].items():  # the per-case rows average to the summary's per-class mean
        dices = [float(r["dice"]) for r in per_case if r["class"] == cls and r["dice"]]
        assert sum(dices) / len(dices) == pytest.approx(means["dice"]), cls
    assert (out / "predictions.png").stat().st_size > 1000


def _weights(trainer):
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in trainer.ema.module.state_dict().items()})
    return state


def test_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(phantom_root, tmp_path):
    extra = {"method.name": "mean_teacher", "deterministic": "true"}
    straight = Trainer(_cfg(phantom_root, tmp_path / "a", **extra), progress=False)
    straight.fit()

    first = Trainer(_cfg(phantom_root, tmp_path / "b", **extra), progress=False)
    first.fit(stop_at=4)  # as if killed after the checkpoint at iteration 4
    assert torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["iteration"] == 4
    resumed = Trainer(_cfg(phantom_root, tmp_path / "b", **extra), progress=False)
    resumed.fit()
    assert resumed.iteration == 6

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with (tmp_path / "b/metrics.csv").open() as f:
        rows = [(r["iteration"], r["tag"]) for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows))  # no duplicated record after the resume


def test_resume_with_another_config_is_refused(phantom_root, tmp_path):
    Trainer(_cfg(phantom_root, tmp_path / "r", **{"method.name": "supervised"}), progress=False).fit(stop_at=3)
    other = _cfg(phantom_root, tmp_path / "r", **{"method.name": "supervised", "schedule.lr": "0.5"})
    with pytest.raises(ConfigError, match=r"schedule\.lr"):
        Trainer(other, progress=False).fit()


def _val_records(run) -> list[tuple[str, str, str]]:
    with (run / "metrics.csv").open() as f:
        return [(r["iteration"], r["tag"], r["value"]) for r in csv.DictReader(f) if r["tag"].startswith("val/")]


def test_same_seed_same_weights_and_metrics_another_seed_differs(phantom_root, tmp_path):
    extra = {"method.name": "mean_teacher", "deterministic": "true"}
    trainers, results = {}, {}
    for name, seed in (("x", "0"), ("y", "0"), ("z", "1")):  # each built then run, as tools/train.py does
        trainers[name] = Trainer(_cfg(phantom_root, tmp_path / name, **extra, seed=seed), progress=False)
        results[name] = trainers[name].fit()
    x, y, z = (_weights(trainers[n]) for n in "xyz")
    assert all(torch.equal(x[k], y[k]) for k in x)  # model and EMA, bitwise
    assert results["x"].best_metric == results["y"].best_metric
    assert _val_records(tmp_path / "x") == _val_records(tmp_path / "y")  # every validation Dice of the run
    for split in ("val", "test"):
        sx = evaluate_checkpoint(results["x"].best_checkpoint, split, progress=False)
        sy = evaluate_checkpoint(results["y"].best_checkpoint, split, progress=False)
        assert sx["metric_per_case"] == sy["metric_per_case"], split
    assert any(not torch.equal(x[k], z[k]) for k in x)  # the seed matters


@pytest.mark.parametrize("tool", ["train", "evaluate", "demo", "precompute", "benchmark", "analyze_everything"])
def test_tools_explain_themselves(tool):
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage:" in out and "key=value" in out


def test_train_tool_reports_a_bad_key_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/train.py"),
            "--config",
            str(DEMO),
            "schedule.iterationz=3",
            f"output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "schedule.iterationz" in proc.stderr and "Traceback" not in proc.stderr
