"""Run a benchmark protocol end to end: teacher cache once, every method and seed trained, each scored on test.

Layout of ``<out_dir>`` (one folder per protocol and scale)::

    <out_dir>/
      cache/                            the teacher's embeddings and priors, computed once, shared by all methods
      <method>/seed<s>/                 a normal run directory (config.yaml, checkpoints/, tensorboard/, ...)
      <method>/seed<s>/eval_test/       summary.json, metrics_per_case.csv, figures of the run's checkpoint
                                        (eval.checkpoint: last or best)
      <method>/seed<s>/eval_test_<other>/   the same for the other checkpoint (how much selection matters)
      <method>/seed<s>/eval_test_refined/   with --refine: the run's checkpoint refined by the teacher at test time
                                        (summary.json with the refined and the student-alone scores)
      <method>/seed<s>/benchmark_run.json   wall-clock seconds of training / evaluation, refresh seconds
      results.json, results.md, dice.png    the table (mean and spread over seeds) and the figure

A run whose ``eval_test/summary.json`` exists is not trained again; a run interrupted during training resumes from
its ``checkpoints/last.pt`` (the trainer's own resume), so the whole benchmark can be started again after a kill.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from semisam.benchmark.protocols import CONFIGS_DIR, MethodVariant, Protocol, Scale
from semisam.config.loader import config_differences, config_to_dict, load_config, unused_keys
from semisam.config.schema import ConfigError, RunConfig, trains_on_pseudo_labels, uses_rounds
from semisam.engine.trainer import RESUMABLE_DIFFERENCES
from semisam.evaluation.figures import save_figure
from semisam.evaluation.runner import evaluate_checkpoint
from semisam.pseudolabel.refine import evaluate_refined, refined_dir_name
from semisam.teacher.engine import build_teacher
from semisam.teacher.precompute import precompute
from semisam.utils import atomic_write_text
from semisam.version import describe_machine, environment_info
from semisam.workflow.rounds import round0_ignored_keys, round_config
from semisam.workflow.train import train

logger = logging.getLogger("semisam")

METRICS = ("dice", "hd95", "asd")


@dataclass
class RunRecord:
    """One trained and scored (method, seed)."""

    method: str
    seed: int
    run_dir: str
    summary: dict
    train_seconds: float | None = None
    eval_seconds: float | None = None
    refresh_seconds: float | None = None
    best_iteration: int | None = None
    git_commit: str | None = None  # the code that trained it (None in records written before it was kept)
    machine: str | None = None  # the machine that trained it, :func:`describe_machine` (None in older records)
    checkpoint: str = "best"  # which checkpoint ``summary`` scores (records before eval.checkpoint: best)
    other_dice: float | None = None  # test foreground Dice of the other checkpoint (last <-> best)
    refined: dict | None = None  # the test-time refined evaluation's summary.json (with --refine)

    @property
    def refresh_share(self) -> float | None:
        """Fraction of the training wall-clock time spent in pseudo-label refreshes (None when unknown)."""
        if not self.train_seconds or self.refresh_seconds is None:
            return None
        return self.refresh_seconds / self.train_seconds


def build_run_config(
    protocol: Protocol,
    method: MethodVariant,
    scale: Scale,
    seed: int,
    out_dir: Path,
    overrides: Sequence[str] = (),
    configs_dir: Path = CONFIGS_DIR,
) -> RunConfig:
    """The validated config of one run: protocol/method YAML, scale YAML, variant overrides, user overrides, then
    the seed, output folder and shared cache (which always win)."""
    paths = [protocol.method_config(method, configs_dir)]
    scale_file = scale.config(protocol, configs_dir)
    if scale_file is not None:
        paths.append(scale_file)
    forced = [f"seed={seed}", f"output_dir={run_dir_of(out_dir, method.name, seed)}"]
    forced.append(f"teacher.cache_dir={out_dir / 'cache'}")
    return load_config(paths, [*method.overrides, *overrides, *forced])


def _pool_size(cfg: RunConfig) -> float:
    """How many unlabeled cases the split takes from the pool (``inf``: all of them)."""
    count = cfg.data.split.unlabeled_count
    return math.inf if count is None else count


def _adaptation_overrides(cfg: RunConfig) -> list[str]:
    """``teacher.adapt`` and ``teacher.adaptation.*`` of ``cfg`` as ``key=value`` overrides."""
    adaptation = config_to_dict(cfg)["teacher"]["adaptation"]
    return [f"teacher.adapt={cfg.teacher.adapt}", *(f"teacher.adaptation.{k}={v}" for k, v in adaptation.items())]


def run_dir_of(out_dir: Path, method: str, seed: int) -> Path:
    """Where the run of ``method`` with ``seed`` lives."""
    return out_dir / method / f"seed{seed}"


def refresh_seconds(run_dir: Path) -> float | None:
    """Total ``time/refresh_s`` in a run's ``metrics.csv`` (None if the run logged no refresh)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        values = [float(row["value"]) for row in csv.DictReader(f) if row["tag"] == "time/refresh_s"]
    return sum(values) if values else None


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def _stats(values: Sequence[float | None]) -> dict:
    vals = _finite(values)
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def aggregate(records: Sequence[RunRecord], methods: Sequence[str]) -> dict:
    """Mean and spread (sample std) over seeds, per method: foreground-mean metrics and Dice per class.

    Returns ``{method: {"foreground": {metric: stats}, "dice_per_class": {class_name: stats}, "seeds": [...],
    "refresh_share": stats}}``; the foreground mean of each run is the mean over classes of the per-class means
    over cases (the literature's averaging).
    """
    out = {}
    for name in methods:
        runs = [r for r in records if r.method == name]
        if not runs:
            continue
        names = runs[0].summary.get("class_names", {})
        classes = list(runs[0].summary["mean"].keys())
        out[name] = {
            "seeds": [r.seed for r in runs],
            "foreground": {m: _stats([r.summary["foreground_mean"].get(m) for r in runs]) for m in METRICS},
            "dice_per_class": {
                names.get(c, f"class_{c}"): _stats([r.summary["mean"][c].get("dice") for r in runs]) for c in classes
            },
            "refresh_share": _stats([r.refresh_share for r in runs]),
            "train_minutes": _stats([None if r.train_seconds is None else r.train_seconds / 60 for r in runs]),
            "checkpoint": runs[0].checkpoint,
            "other_dice": _stats([r.other_dice for r in runs]),
            "refined": _refined_stats(runs, names, classes),
        }
    return out


def _refined_stats(runs: Sequence[RunRecord], names: dict, classes: list[str]) -> dict | None:
    """Mean and spread over seeds of the refined evaluation (None unless every run has one): foreground Dice, Dice
    per class, the gain over the student alone in Dice points, seconds per image, how many seeds refine each class."""
    summaries = [r.refined for r in runs]
    if not summaries or any(s is None for s in summaries):
        return None
    return {
        "dice": _stats([s["foreground_mean"].get("dice") for s in summaries]),
        "dice_per_class": {
            names.get(c, f"class_{c}"): _stats([s["mean"][c].get("dice") for s in summaries]) for c in classes
        },
        "gain_points": _stats(
            [100 * (s["foreground_mean"]["dice"] - s["student"]["foreground_mean"]["dice"]) for s in summaries]
        ),
        "seconds_per_image": _stats([s["refinement"]["seconds_per_image"] for s in summaries]),
        "refined_in_seeds": {
            names.get(c, f"class_{c}"): sum(bool(s["refinement"]["trusted"].get(c)) for s in summaries) for c in classes
        },
    }


def _cell(stats: dict, digits: int) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    if stats["n"] > 1:
        text += f" ± {stats['std']:.{digits}f}"
    return text


def format_table(table: dict, units: str) -> str:
    """A Markdown table: one row per method, mean (± std over seeds) of foreground Dice, Dice per class, HD95,
    ASD, minutes of training and the refresh share."""
    if not table:
        return "(no finished runs)\n"
    classes = list(next(iter(table.values()))["dice_per_class"])
    head = ["method", "seeds", "Dice (fg mean)", *[f"Dice {c}" for c in classes]]
    other = "best" if next(iter(table.values())).get("checkpoint", "best") == "last" else "last"
    head += [f"HD95 ({units})", f"ASD ({units})", f"Dice with {other}.pt", "Dice refined", "train min", "refresh share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        share = row["refresh_share"]
        refined = row.get("refined")
        cells = [name, str(len(row["seeds"])), _cell(row["foreground"]["dice"], 3)]
        cells += [_cell(row["dice_per_class"][c], 3) for c in classes]
        cells += [_cell(row["foreground"]["hd95"], 1), _cell(row["foreground"]["asd"], 1)]
        cells += [_cell(row.get("other_dice", {"mean": None}), 3)]
        cells += ["n/a" if refined is None else _cell(refined["dice"], 3)]
        cells += [_cell(row["train_minutes"], 1), "n/a" if share["mean"] is None else f"{100 * share['mean']:.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    refined_rows = {name: row["refined"] for name, row in table.items() if row.get("refined")}
    if refined_rows:  # the refined output per class, and the gain over the same students alone
        head = ["method (refined by the teacher)", "Dice (fg mean)", *[f"Dice {c}" for c in classes]]
        head += ["gain (points)", "classes refined (seeds)", "s per image"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, ref in refined_rows.items():
            cells = [name, _cell(ref["dice"], 3), *[_cell(ref["dice_per_class"][c], 3) for c in classes]]
            cells += [_cell(ref["gain_points"], 1), ", ".join(f"{c} {n}" for c, n in ref["refined_in_seeds"].items())]
            cells += [_cell(ref["seconds_per_image"], 2)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_results_figure(path: Path, table: dict, title: str) -> None:
    """A PNG grouped bar chart: Dice per class and the foreground mean, one bar per method (error bars: std)."""
    methods = list(table)
    groups = [*next(iter(table.values()))["dice_per_class"], "mean"]
    fig = Figure(figsize=(max(5.0, 1.2 + 0.5 * len(groups) * len(methods)), 3.8), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(methods)
    xs = np.arange(len(groups))
    cmap = colormaps["tab10"]
    for i, name in enumerate(methods):
        row = table[name]
        stats = [*row["dice_per_class"].values(), row["foreground"]["dice"]]
        heights = [s["mean"] or 0.0 for s in stats]
        errors = [s["std"] or 0.0 for s in stats]
        bars = ax.bar(xs + (i - (len(methods) - 1) / 2) * width, heights, width, yerr=errors, label=name)
        for bar in bars:
            bar.set_color(cmap(i % 10))
            ax.annotate(
                f"{bar.get_height():.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(xs, groups)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("Dice (test)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(methods), 3), loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def _respell_round0(saved: dict, cfg: RunConfig, out_dir: Path) -> None:
    """Give ``saved`` (a scored run's config, as a dict) the current spelling of its round-0 checkpoint when both
    name the same run of this benchmark folder ``out_dir``: the benchmark sets that path itself, under ``--out``, so
    a relative ``--out``, another spelling of it or a moved folder changes the text and not the run. A checkpoint
    of another run (or another seed) still differs."""
    current = cfg.pseudo_labels.round0_checkpoint
    written = (saved.get("pseudo_labels") or {}).get("round0_checkpoint")
    if not current or not written or current == written:
        return
    try:
        below = Path(current).relative_to(out_dir).parts  # <provider>/seed<s>/checkpoints/<name>.pt
    except ValueError:
        return  # not a run of this folder: given by the user, compared as written
    if Path(written).parts[-len(below) :] == below:
        saved["pseudo_labels"]["round0_checkpoint"] = current


class BenchmarkRunner:
    """Runs one protocol at one scale for the given methods and seeds (see the module docstring for the layout).

    Args:
        protocol, scale: from :mod:`semisam.benchmark.protocols`.
        methods: method variants, run in this order (per seed).
        seeds: one run per method and seed.
        out_dir: the benchmark folder.
        overrides: ``key=value`` applied to every run (e.g. ``data.root=...``); they must not differ by method.
        progress: tqdm bars in training, precompute and evaluation.
        configs_dir: where the protocols' YAML files are (default: the repository's ``configs/``).
        teacher: an already built teacher (default: built once from the first teacher-using run's config).
        refine: also score every run's checkpoint refined by the teacher at test time
            (:func:`~semisam.pseudolabel.refine.evaluate_refined`), supervised runs included (the control).
    """

    def __init__(
        self,
        protocol: Protocol,
        scale: Scale,
        methods: Sequence[MethodVariant],
        seeds: Sequence[int],
        out_dir: str | Path,
        overrides: Sequence[str] = (),
        progress: bool = True,
        configs_dir: Path = CONFIGS_DIR,
        teacher=None,
        refine: bool = False,
    ) -> None:
        self.protocol, self.scale, self.methods, self.seeds = protocol, scale, list(methods), list(seeds)
        self.refine = refine
        self.out_dir = Path(out_dir)
        self.overrides = list(overrides)
        self.progress = progress
        # every config is built (and validated) before anything runs
        self.configs = {
            (m.name, s): build_run_config(protocol, m, scale, s, self.out_dir, self.overrides, configs_dir)
            for s in self.seeds
            for m in self.methods
        }
        self.round0_providers = self._share_round0()
        self.teacher = teacher
        self.precompute_report: dict | None = None

    def _share_round0(self) -> dict[tuple[str, int], str]:
        """Self-training runs whose round 0 is exactly another method's run of the same seed (``supervised`` for
        rounds without priors, ``supervised_priors`` with them, the backbone's own run for rounds on a backbone):
        that run's checkpoint stands for their round 0 (``pseudo_labels.round0_checkpoint``), so each seed trains
        it once. Returns ``{(method, seed): provider}``."""
        providers = {}
        for (name, seed), cfg in self.configs.items():
            if not uses_rounds(cfg) or cfg.pseudo_labels.round0_checkpoint:
                continue
            for other in self.methods:
                other_cfg = self.configs[(other.name, seed)]
                if uses_rounds(other_cfg):
                    continue
                diff = config_differences(round_config(cfg, 0), config_to_dict(other_cfg), round0_ignored_keys(cfg))
                if not diff:
                    ckpt = Path(other_cfg.output_dir) / "checkpoints" / f"{other_cfg.eval.checkpoint}.pt"
                    cfg.pseudo_labels.round0_checkpoint = str(ckpt)
                    providers[(name, seed)] = other.name
                    break
        return providers

    def _teacher_config(self) -> tuple[RunConfig | None, bool]:
        """The config to precompute with (a teacher-using run's) and whether priors are needed."""
        cfgs = [self.configs[(m.name, self.seeds[0])] for m in self.methods]
        users = [c for c in cfgs if c.priors.enabled or trains_on_pseudo_labels(c)]
        if not users:
            return None, False
        need_priors = any(c.priors.enabled for c in cfgs)
        first = next(c for c in users if c.priors.enabled) if need_priors else users[0]
        return first, need_priors

    def prepare_teacher(self) -> None:
        """Build the teacher once and fill the shared cache (embeddings; priors if a method uses them)."""
        cfg, need_priors = self._teacher_config()
        if self.refine:  # test-time refinement needs the teacher for every method (its embeddings come lazily)
            self.teacher = self.teacher or build_teacher(self.configs[(self.methods[0].name, self.seeds[0])].teacher)
        if cfg is None:
            return
        self.teacher = self.teacher or build_teacher(cfg.teacher)
        cfgs = [self.configs[(m.name, self.seeds[0])] for m in self.methods]
        pseudo = any(trains_on_pseudo_labels(c) for c in cfgs)
        keep = ("unlabeled", "val") if pseudo else None
        # priors of every image a student with priors sees; the pool's only if such a student trains on it.
        # Embeddings of the pool and val (the calibration) if a run trains on pseudo-labels, priors or not.
        # The pool's embeddings are those of the widest pool a pseudo-label run reads (a variant may train on
        # the whole pool while others take the scale's reduced one).
        passes: list[tuple[RunConfig, tuple[str, ...], bool]] = []
        pool_priors = any(c.priors.enabled and c.method.name != "supervised" for c in cfgs)
        if need_priors:  # one pass per prior source (SAMAug's maps, the embedding priors) the methods take
            prior_splits = ("labeled", "unlabeled", "val", "test") if pool_priors else ("labeled", "val", "test")
            by_source: dict[str, RunConfig] = {}
            for c in cfgs:  # the first method of each source, in the methods' order
                if c.priors.enabled:
                    by_source.setdefault(c.priors.source, c)
            passes += [(c, prior_splits, True) for c in by_source.values()]
        if pseudo:
            widest = max((c for c in cfgs if trains_on_pseudo_labels(c)), key=_pool_size)
            if not pool_priors or _pool_size(widest) > _pool_size(cfg):
                passes.append((widest, ("unlabeled", "val"), False))
        reports = [
            precompute(c, self.teacher, splits=splits, progress=self.progress, priors=priors, keep_embeddings_of=keep)
            for c, splits, priors in passes
        ]
        report = reports[0]
        for extra in reports[1:]:
            report.computed += extra.computed
            report.skipped += extra.skipped
            report.images += extra.images
            report.seconds += extra.seconds
        self.precompute_report = {
            "cache": str(report.root),
            "computed_cases": len(report.computed),
            "skipped_cases": report.skipped,
            "images": report.images,
            "seconds": report.seconds,
            "priors": need_priors,
        }
        logger.info(
            "teacher cache ready: %d cases computed (%d images, %.0f s), %d already cached",
            len(report.computed),
            report.images,
            report.seconds,
            report.skipped,
        )

    def run_one(self, method: MethodVariant, seed: int) -> RunRecord:
        """Train (or resume) and score one run; a run already scored is read back."""
        cfg = self.configs[(method.name, seed)]
        run_dir = Path(cfg.output_dir)
        summary_path = run_dir / "eval_test" / "summary.json"
        record_path = run_dir / "benchmark_run.json"
        if summary_path.exists() and record_path.exists():
            self._check_scored_config(cfg, run_dir)
            logger.info("%s seed %d: already scored, reading %s", method.name, seed, summary_path)
            saved = {k: v for k, v in json.loads(record_path.read_text()).items() if k != "refined"}
            return self._refined(RunRecord(summary=json.loads(summary_path.read_text()), **saved))
        logger.info("%s seed %d: training in %s", method.name, seed, run_dir)
        resumed = (run_dir / "checkpoints" / "last.pt").exists()
        tic = time.perf_counter()
        result = train(cfg, progress=self.progress, teacher=self.teacher)
        train_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        summary = evaluate_checkpoint(result.checkpoint, split="test", progress=self.progress)
        other = "best" if result.selected == "last" else "last"
        other_summary = evaluate_checkpoint(
            result.best_checkpoint if other == "best" else result.last_checkpoint,
            split="test",
            out_dir=run_dir / f"eval_test_{other}",
            progress=False,
        )
        provider = self.round0_providers.get((method.name, seed))
        if (run_dir / "rounds.json").exists():  # rounds: the sum of their stages, each timed when it ran
            stages = json.loads((run_dir / "rounds.json").read_text())
            if provider is not None:  # its round 0 was trained by that run: count that run's time
                saved = json.loads((Path(self.configs[(provider, seed)].output_dir) / "benchmark_run.json").read_text())
                stages["round_0_train_s"] = saved.get("train_seconds")
            resumed = any(v is None for v in stages.values())
            train_seconds = sum(v for v in stages.values() if v is not None)
        env = environment_info()
        record = RunRecord(
            method=method.name,
            seed=seed,
            run_dir=str(run_dir),
            summary=summary,
            train_seconds=None if resumed else train_seconds,  # a resumed run's time is not the whole run's
            eval_seconds=time.perf_counter() - tic,
            refresh_seconds=refresh_seconds(run_dir),
            best_iteration=result.best_iteration,
            git_commit=env["git_commit"],
            machine=describe_machine(env),
            checkpoint=result.selected,
            other_dice=other_summary["foreground_mean"]["dice"],
        )
        saved = {k: v for k, v in asdict(record).items() if k not in ("summary", "refined")}
        atomic_write_text(record_path, json.dumps(saved, indent=2))
        record = self._refined(record)
        logger.info(
            "%s seed %d: test Dice %.4f with %s.pt (%s.pt: %.4f; best val at iteration %d)",
            method.name,
            seed,
            summary["foreground_mean"]["dice"],
            result.selected,
            other,
            record.other_dice,
            result.best_iteration,
        )
        return record

    def _refined(self, record: RunRecord) -> RunRecord:
        """``record`` with its test-time refined evaluation (computed unless on disk), when the benchmark refines."""
        cfg = self.configs[(record.method, record.seed)]
        path = Path(record.run_dir) / refined_dir_name("test", cfg) / "summary.json"
        if path.exists():
            record.refined = json.loads(path.read_text())
        elif self.refine:
            checkpoint = Path(record.run_dir) / "checkpoints" / f"{record.checkpoint}.pt"
            logger.info("%s seed %d: refining the test predictions of %s", record.method, record.seed, checkpoint)
            # the teacher as this benchmark configures it (a run trained without pseudo-labels never stored it)
            evaluate_refined(
                checkpoint, "test", overrides=_adaptation_overrides(cfg), progress=self.progress, teacher=self.teacher
            )
            record.refined = json.loads(path.read_text())
        return record

    @staticmethod
    def _check_scored_config(cfg: RunConfig, run_dir: Path) -> None:
        """A scored run is reused only if it was trained with the config this benchmark would use now."""
        saved_path = run_dir / "config.yaml"
        if not saved_path.exists():
            raise ConfigError(f"{run_dir} is scored but has no config.yaml, so its settings cannot be checked")
        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
        _respell_round0(saved, cfg, run_dir.parent.parent)  # type: ignore[arg-type]
        ignored = [*RESUMABLE_DIFFERENCES, *unused_keys(cfg)]  # e.g. the teacher's settings for a supervised run
        differing = config_differences(cfg, saved, ignored)  # type: ignore[arg-type]
        if differing:
            raise ConfigError(
                f"{run_dir} was scored with another config than this benchmark now builds (older code or other "
                f"overrides), so its result would be mixed with runs of this one. Differences: "
                f"{'; '.join(differing[:6])}. Give --out another folder, or delete that run directory."
            )

    def run(self, command: str = "") -> dict:
        """Everything: cache, runs, then ``results.json``, ``results.md`` and ``dice.png``. Returns the results."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_teacher()
        records = []
        providers = {p for p in self.round0_providers.values()}
        for seed in self.seeds:  # a run whose checkpoint is another's round 0 runs first
            for method in sorted(self.methods, key=lambda m: m.name not in providers):
                records.append(self.run_one(method, seed))
                self.write_results(records, command)  # a partial table after every run
        return self.write_results(records, command)

    def write_results(self, records: Sequence[RunRecord], command: str = "") -> dict:
        """Aggregate ``records`` and write the table (Markdown, JSON) and the figure."""
        table = aggregate(records, [m.name for m in self.methods])
        units = records[0].summary.get("units", {}).get("hd95", "pixels") if records else "pixels"
        env = environment_info()
        results = {
            "protocol": self.protocol.name,
            "protocol_description": self.protocol.description,
            "scale": self.scale.name,
            "scale_description": self.scale.description,
            "split": "test",
            "num_cases": records[0].summary.get("num_cases") if records else None,
            "distance_units": units,
            "command": command,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": describe_machine(env),
            "teacher_dtype": self.teacher.manifest()["dtype"] if self.teacher is not None else None,
            "git_commit": env["git_commit"],
            "teacher_cache": self.precompute_report,
            "table": table,
            "runs": [{k: v for k, v in asdict(r).items() if k not in ("summary", "refined")} for r in records],
        }
        atomic_write_text(self.out_dir / "results.json", json.dumps(results, indent=2))
        trained_by = sorted({r.git_commit for r in records if r.git_commit} - {env["git_commit"]})
        commits = results["git_commit"] + (f" (runs read back from {', '.join(trained_by)})" if trained_by else "")
        other_machines = sorted({r.machine for r in records if r.machine} - {results["machine"]})
        machines = results["machine"] + (f" (runs trained on {'; '.join(other_machines)})" if other_machines else "")
        scored = sorted({r.checkpoint for r in records}) or ["?"]
        which = {"last": "the last checkpoint", "best": "the checkpoint with the best val Dice"}
        header = (
            f"# {self.protocol.name}, scale {self.scale.name}\n\n"
            f"{self.protocol.description}; {self.scale.description}. Test split ({results['num_cases']} cases), "
            f"scoring {' / '.join(which.get(c, c) for c in scored)}; mean ± sample std over seeds. "
            f"Distances in {units}.\n\n"
            f"- command: `{command}`\n- machine: {machines}\n"
            f"- teacher computed in: {results['teacher_dtype'] or 'not used'}\n- commit: {commits}\n"
            f"- date: {results['date']}\n\n"
        )
        atomic_write_text(self.out_dir / "results.md", header + format_table(table, units))
        if table:
            title = f"{self.protocol.name} ({self.scale.name} scale): test Dice per class"
            save_results_figure(self.out_dir / "dice.png", table, title)
        return results
