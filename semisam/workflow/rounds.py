"""Self-training rounds (``method.name: semisam_rounds``), run above the trainer.

What one run does::

    round 0   the backbone's own run (supervised by default), priors as configured; or a finished
              run given as pseudo_labels.round0_checkpoint (its config must be this round 0's: the benchmark
              passes the run of the same seed, so round 0 is trained once per seed)
    round r   the last round's student (its eval.checkpoint) labels the pool through the teacher and the most
              reliable images keep their pseudo-labels (:func:`semisam.pseudolabel.rounds.make_round_bank`);
              a new student (from the last round's weights, or from scratch: round_init) trains
              round_iterations x schedule.iterations steps on labeled + those images (:func:`round_config`)

Layout of the run directory::

    <output_dir>/config.yaml            the run's own config
    <output_dir>/round_0/               the backbone's run directory (absent with round0_checkpoint)
    <output_dir>/round_<r>/             the round's bank files (see semisam.pseudolabel.rounds) and run directory
    <output_dir>/checkpoints/{best,last}.pt  the last trained round's, where tools/evaluate.py and the benchmark look
    <output_dir>/rounds.json            seconds per stage

Every stage is resumable: a finished round is not trained again, a bank on disk is not recomputed, and a round
killed while training resumes from its ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from semisam import distributed
from semisam.config.loader import config_differences, config_from_dict, config_to_dict, save_config, unused_keys
from semisam.config.schema import ConfigError, MethodConfig, RunConfig, semisam_backbone, uses_rounds
from semisam.engine.trainer import RESUMABLE_DIFFERENCES, Trainer, TrainResult
from semisam.pseudolabel.pipeline import labeling_seed
from semisam.pseudolabel.rounds import make_round_bank
from semisam.student.checkpoint import load_checkpoint
from semisam.teacher.engine import SamTeacher
from semisam.utils import atomic_write_text

logger = logging.getLogger("semisam")

ROUND0_KEY = "round_0_train_s"


def round_config(cfg: RunConfig, index: int) -> RunConfig:
    """The config of round ``index`` of a ``semisam_rounds`` run. Round 0 is a run of the backbone alone
    (``supervised``, ``unimatch`` or ``bcp``); a later round is a ``semisam_rounds`` run of ``round_iterations`` x
    the iterations (warm-up scaled alike) on the round's bank."""
    run_dir = Path(cfg.output_dir)
    data = config_to_dict(cfg)
    data["output_dir"] = str(run_dir / f"round_{index}")
    data["pseudo_labels"]["round0_checkpoint"] = None
    backbone = semisam_backbone(cfg)
    if index == 0:
        data["method"]["name"] = backbone
        data["method"]["backbone"] = MethodConfig.backbone  # the default: the backbone run itself reads none
        data["pseudo_labels"]["control"] = False  # nor a rounds-only key
    else:
        sched = data["schedule"]
        scale = cfg.pseudo_labels.round_iterations
        sched["iterations"] = max(1, round(scale * cfg.schedule.iterations))
        sched["warmup_iterations"] = min(round(scale * cfg.schedule.warmup_iterations), sched["iterations"] - 1)
        if backbone == "bcp":  # a later round starts from a trained student: no copy-paste pre-training again
            data["method"]["bcp"]["pretrain_fraction"] = 0.0
    return config_from_dict(data)


def round0_ignored_keys(cfg: RunConfig) -> list[str]:
    """Config keys in which a finished run may differ from this run's round 0 and still stand for it: where it was
    written, and what the backbone's run does not use (:func:`~semisam.config.loader.unused_keys`)."""
    return [*RESUMABLE_DIFFERENCES, *unused_keys(round_config(cfg, 0))]


def check_round0(cfg: RunConfig, checkpoint: Path) -> None:
    """Refuse a ``round0_checkpoint`` trained otherwise than this run's round 0 would be."""
    saved = load_checkpoint(checkpoint)["config"]
    differing = config_differences(round_config(cfg, 0), saved, round0_ignored_keys(cfg))
    if differing:
        raise ConfigError(
            f"pseudo_labels.round0_checkpoint={checkpoint} was trained with another config than this run's round 0 "
            f"(a run of the backbone alone with the same data, student, schedule, priors and seed). Differences: "
            f"{'; '.join(differing[:6])}. Leave round0_checkpoint unset to train round 0 here."
        )


class SelfTraining:
    """Runs the rounds of one ``semisam_rounds`` run. ``SelfTraining(cfg).fit()``.

    Args:
        cfg: a config for which :func:`~semisam.config.schema.uses_rounds` holds.
        progress: tqdm bars.
        teacher: an already built teacher (default: built from ``cfg.teacher`` when a bank must be made).
    """

    def __init__(self, cfg: RunConfig, progress: bool = True, teacher: SamTeacher | None = None) -> None:
        if not uses_rounds(cfg):
            raise ConfigError(f"self-training rounds need method.name=semisam_rounds, not {cfg.method.name}")
        if distributed.is_distributed():
            raise ConfigError(
                "method.name=semisam_rounds runs in one process for now (the bank is made on one rank); train it "
                "without torchrun, or use method.name=semisam_online"
            )
        self.cfg = cfg
        self.progress = progress
        self.teacher = teacher
        self.run_dir = Path(cfg.output_dir)
        # seconds per stage; a stage read back or resumed keeps what was recorded when it ran (None if nothing was)
        path = self.run_dir / "rounds.json"
        self.recorded: dict[str, float | None] = json.loads(path.read_text()) if path.exists() else {}
        self.timings: dict[str, float | None] = {}

    def fit(self) -> TrainResult:
        """Train every round (resuming what exists) and return the last trained round's result, its checkpoints
        copied to ``<output_dir>/checkpoints``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        checkpoint = self._round_zero()
        for index in range(1, self.cfg.pseudo_labels.rounds + 1):
            result = self._round(index, checkpoint)
            checkpoint = result.checkpoint
        return self._finish(result)

    def _round_zero(self) -> Path:
        """Round 0, trained here, or the finished run given as ``round0_checkpoint``: the checkpoint whose student
        labels round 1's pool."""
        given = self.cfg.pseudo_labels.round0_checkpoint
        if given:
            check_round0(self.cfg, Path(given))
            logger.info("round 0: the finished run %s stands for it", given)
            self.timings[ROUND0_KEY] = None
            return Path(given)
        round0 = round_config(self.cfg, 0)
        fresh, tic = not _has_started(round0), time.perf_counter()
        result = Trainer(round0, progress=self.progress).fit()
        self._time(ROUND0_KEY, fresh, tic)
        return result.checkpoint

    def _round(self, index: int, checkpoint: Path) -> TrainResult:
        """Label the pool with the student of ``checkpoint`` and train round ``index``."""
        cfg = round_config(self.cfg, index)
        round_dir = Path(cfg.output_dir)
        fresh, tic = not (round_dir / "selection.json").exists(), time.perf_counter()
        data = make_round_bank(
            self.cfg, checkpoint, round_dir, labeling_seed(self.cfg.seed, index), self.teacher, self.progress
        )
        self._time(f"round_{index}_label_s", fresh, tic)
        init = checkpoint if self.cfg.pseudo_labels.round_init == "previous" else None
        fresh, tic = not _has_started(cfg), time.perf_counter()
        result = Trainer(
            cfg, self.progress, bank_source=lambda context: data, unlabeled_items=data.items, init_weights=init
        ).fit()
        self._time(f"round_{index}_train_s", fresh, tic)
        return result

    def _finish(self, result: TrainResult) -> TrainResult:
        """Copy the last trained round's checkpoints to ``<output_dir>/checkpoints`` and write the timings."""
        final = self.run_dir / "checkpoints"
        final.mkdir(exist_ok=True)
        for name in ("best.pt", "last.pt"):
            _atomic_copy(Path(result.run_dir) / "checkpoints" / name, final / name)
        self._write_timings()
        return TrainResult(
            self.run_dir,
            result.iterations,
            result.best_metric,
            result.best_iteration,
            final / "last.pt",
            final / "best.pt",
            result.selected,
        )

    def _time(self, key: str, fresh: bool, tic: float) -> None:
        """Record the seconds of stage ``key`` and write them at once, so an interrupted run keeps the stages it
        finished (a stage resumed later reads them back instead of recording None)."""
        self.timings[key] = time.perf_counter() - tic if fresh else self.recorded.get(key)
        self._write_timings()

    def _write_timings(self) -> None:
        """Write what was recorded before this process over what it measured: stages of this run not reached yet
        keep their earlier figures."""
        atomic_write_text(self.run_dir / "rounds.json", json.dumps({**self.recorded, **self.timings}, indent=2))


def _has_started(cfg: RunConfig) -> bool:
    """Whether the run of ``cfg`` has a checkpoint to resume from (its training time is then not this process's)."""
    return (Path(cfg.output_dir) / "checkpoints" / "last.pt").exists()


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
