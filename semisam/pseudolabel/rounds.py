"""Self-training rounds (``pseudo_labels.mode: rounds``): a trained student labels the pool through the teacher, and
a new round trains on labeled + the most reliable pseudo-labeled images.

What one run does (Keuth et al. 2024 "SAM carries the burden"; ST++'s reliable-image selection)::

    round 0   the student trained on the labeled images alone (method supervised, priors as configured), or a
              finished one given as pseudo_labels.round0_checkpoint (its config must be this round 0's: the
              benchmark passes the supervised run of the same seed, so round 0 is trained once per seed)
    round r   1. the last round's student (its eval.checkpoint) predicts every unlabeled image; per-class trust
                 is calibrated on held-out (val) slices as in an online refresh
              2. its components become box prompts, perturbed, decoded by the teacher, rectified per pixel
                 (:mod:`semisam.pseudolabel.labeler`)
              3. every image gets a reliability score (:mod:`semisam.pseudolabel.reliability`); the
                 select_fraction most reliable keep their pseudo-labels
              4. a new student (from the last round's weights, or from scratch: round_init) trains
                 round_iterations x schedule.iterations steps on labeled + selected images: Dice + CE on both,
                 each pseudo-labeled pixel weighted by the rectification, no consistency term

Layout of the run directory::

    <output_dir>/config.yaml            the run's own config
    <output_dir>/round_0/               a normal supervised run directory (absent with round0_checkpoint)
    <output_dir>/round_<r>/bank.npz     the selected images' pseudo-labels (atomic), then selection.json
    <output_dir>/round_<r>/reliability.csv   every pool image: its signals, score, whether it was kept
    <output_dir>/round_<r>/pseudo_labels.png the most and least reliable images: student vs pseudo-label
    <output_dir>/round_<r>/...          the round's run directory (checkpoints/, tensorboard/, metrics.csv)
    <output_dir>/checkpoints/{best,last}.pt  the last round's, where tools/evaluate.py and the benchmark look
    <output_dir>/rounds.json            seconds per stage

Every stage is resumable: a finished round is not trained again, a bank on disk is not recomputed, and a round
killed while training resumes from its ``last.pt``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semisam.config.loader import config_differences, config_from_dict, config_to_dict, save_config, unused_keys
from semisam.config.schema import ConfigError, MethodConfig, RunConfig, uses_rounds
from semisam.data.cases import CaseLoader, Item
from semisam.data.dataset import expand_to_slices
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.pseudolabel.labeler import (
    BankEntry,
    PseudoLabelBank,
    PseudoLabeler,
    PseudoLabelResult,
    spread,
)
from semisam.pseudolabel.reliability import rank_by_reliability, select_reliable
from semisam.teacher.stores import open_embedding_store, open_prior_store
from semisam.utils import atomic_write_text, resolve_device

logger = logging.getLogger("semisam")


def round0_ignored_keys(cfg: RunConfig) -> list[str]:
    """Config keys in which a finished run may differ from this run's round 0 and still stand for it: where it was
    written, and what a supervised run does not use (:func:`~semisam.config.loader.unused_keys`)."""
    from semisam.engine.trainer import RESUMABLE_DIFFERENCES

    return [*RESUMABLE_DIFFERENCES, *unused_keys(round_config(cfg, 0))]


@dataclass
class RoundData:
    """What a round after round 0 trains on besides the labeled images: the selected unlabeled ``items``, their
    ``bank`` (entries keyed by position in ``items``), and the checkpoint whose weights it starts from (``None``:
    random). Stands in for the online refresher in the trainer: the bank never changes during the round."""

    items: list[Item]
    bank: PseudoLabelBank
    init_checkpoint: Path | None = None
    seconds: float = 0.0  # no refresh happens during a round

    @property
    def first_bank_iteration(self) -> int:
        return 0

    def is_due(self, iteration: int) -> bool:
        return False

    def resume(self, iteration: int) -> None:
        """Nothing to restore: the bank is the round's, from its start."""


def trains_on_pool(cfg: RunConfig) -> bool:
    """Whether a round after round 0 trains on the whole unlabeled pool (the backbone's consistency teaching the
    images the selection left out, the teacher's labels joining on the selected ones) or only on the selected
    pseudo-labeled images (the mean-teacher backbone, whose rounds train without consistency)."""
    return cfg.method.backbone != MethodConfig.backbone  # every backbone but the mean teacher


def round_config(cfg: RunConfig, index: int) -> RunConfig:
    """The config of round ``index`` of a ``rounds`` run. Round 0 is a run of the backbone alone (``supervised``
    for the mean-teacher backbone); a later round is a ``semisam`` run of ``round_iterations`` x the iterations
    (warm-up scaled alike), without consistency term for the mean-teacher backbone."""
    run_dir = Path(cfg.output_dir)
    data = config_to_dict(cfg)
    data["output_dir"] = str(run_dir / f"round_{index}")
    data["pseudo_labels"]["round0_checkpoint"] = None
    backbone = cfg.method.backbone
    if index == 0:
        data["method"]["name"] = backbone if trains_on_pool(cfg) else "supervised"
        data["method"]["backbone"] = MethodConfig.backbone  # the default: the backbone run itself reads none
    else:
        sched = data["schedule"]
        scale = cfg.pseudo_labels.round_iterations
        sched["iterations"] = max(1, round(scale * cfg.schedule.iterations))
        sched["warmup_iterations"] = min(round(scale * cfg.schedule.warmup_iterations), sched["iterations"] - 1)
        if not trains_on_pool(cfg):  # the mean-teacher backbone's rounds: no consistency term
            data["method"]["consistency_weight"] = 0.0
        if backbone == "bcp":  # a later round starts from a trained student: no copy-paste pre-training again
            data["method"]["bcp"]["pretrain_fraction"] = 0.0
    return config_from_dict(data)


def check_round0(cfg: RunConfig, checkpoint: Path) -> None:
    """Refuse a ``round0_checkpoint`` trained otherwise than this run's round 0 would be."""
    from semisam.student.checkpoint import load_checkpoint

    saved = load_checkpoint(checkpoint)["config"]
    differing = config_differences(round_config(cfg, 0), saved, round0_ignored_keys(cfg))
    if differing:
        raise ConfigError(
            f"pseudo_labels.round0_checkpoint={checkpoint} was trained with another config than this run's round 0 "
            f"(a supervised run of the same data, student, schedule, priors and seed). Differences: "
            f"{'; '.join(differing[:6])}. Leave round0_checkpoint unset to train round 0 here."
        )


class SelfTraining:
    """Runs the rounds of one ``pseudo_labels.mode=rounds`` run. ``SelfTraining(cfg).fit()``.

    Args:
        cfg: a ``semisam`` config with ``pseudo_labels.enabled`` and ``mode: rounds``.
        progress: tqdm bars.
        teacher: an already built teacher (default: built from ``cfg.teacher`` when a bank must be made).
    """

    def __init__(self, cfg: RunConfig, progress: bool = True, teacher=None) -> None:
        if not uses_rounds(cfg):
            raise ConfigError("self-training rounds need method.name=semisam, pseudo_labels.enabled and mode=rounds")
        from semisam import distributed

        if distributed.is_distributed():
            raise ConfigError(
                "pseudo_labels.mode=rounds runs in one process for now (the bank is made on one rank); train it "
                "without torchrun, or use mode=online"
            )
        self.cfg = cfg
        self.progress = progress
        self.teacher = teacher
        self.run_dir = Path(cfg.output_dir)
        # seconds per stage; a stage read back or resumed keeps what was recorded when it ran (None if nothing was)
        path = self.run_dir / "rounds.json"
        self.recorded: dict[str, float | None] = json.loads(path.read_text()) if path.exists() else {}
        self.timings: dict[str, float | None] = {}

    # ---------------------------------------------------------------- the run
    def fit(self):
        """Train every round (resuming what exists) and return the last round's
        :class:`~semisam.engine.trainer.TrainResult`, its checkpoints copied to ``<output_dir>/checkpoints``."""
        from semisam.engine.trainer import Trainer, TrainResult

        cfg, pl = self.cfg, self.cfg.pseudo_labels
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        if pl.round0_checkpoint:
            checkpoint = Path(pl.round0_checkpoint)
            check_round0(cfg, checkpoint)
            logger.info("round 0: the finished run %s stands for it", checkpoint)
            self.timings["round_0_train_s"] = None
        else:
            round0 = round_config(cfg, 0)
            fresh, tic = not _has_started(round0), time.perf_counter()
            result = Trainer(round0, progress=self.progress, teacher=self.teacher).fit()
            self._time("round_0_train_s", fresh, tic)
            checkpoint = result.checkpoint
        for index in range(1, pl.rounds + 1):
            round_cfg = round_config(cfg, index)
            round_dir = Path(round_cfg.output_dir)
            fresh, tic = not (round_dir / "selection.json").exists(), time.perf_counter()
            items, bank = self.make_bank(checkpoint, round_dir, seed=cfg.seed * 1_000_003 + index)
            self._time(f"round_{index}_label_s", fresh, tic)
            init = checkpoint if pl.round_init == "previous" else None
            fresh, tic = not _has_started(round_cfg), time.perf_counter()
            trainer = Trainer(round_cfg, self.progress, self.teacher, round_data=RoundData(items, bank, init))
            result = trainer.fit()
            self._time(f"round_{index}_train_s", fresh, tic)
            checkpoint = result.checkpoint
            self._write_timings()
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
        self.timings[key] = time.perf_counter() - tic if fresh else self.recorded.get(key)

    def _write_timings(self) -> None:
        atomic_write_text(self.run_dir / "rounds.json", json.dumps(self.timings, indent=2))

    # ---------------------------------------------------------------- one bank
    def make_bank(self, checkpoint: Path, round_dir: Path, seed: int) -> tuple[list[Item], PseudoLabelBank]:
        """The selected items and their bank for the round in ``round_dir``, labeled by the student of
        ``checkpoint`` (read back if the round's ``selection.json`` exists)."""
        selection_path, bank_path = round_dir / "selection.json", round_dir / "bank.npz"
        if selection_path.exists() and bank_path.exists():
            selection = json.loads(selection_path.read_text())
            items = [(str(c), int(k)) for c, k in selection.get("train_items", selection["items"])]
            bank = PseudoLabelBank.load(bank_path)
            logger.info("%s: bank of %d selected images restored", round_dir.name, len(bank.entries))
            return items, bank
        from semisam.data.fusion import student_in_channels
        from semisam.student.checkpoint import load_checkpoint, load_model_weights
        from semisam.student.unet import build_student
        from semisam.teacher.engine import build_teacher

        cfg, pl = self.cfg, self.cfg.pseudo_labels
        device = resolve_device(cfg.device)
        reader = build_reader(cfg.data)
        split = resolve_split(cfg.data, reader.case_ids())
        pool = expand_to_slices(reader, split.unlabeled)
        calibration = spread(expand_to_slices(reader, split.val), pl.calibration_images)
        if pl.trust == "calibrate" and not calibration:
            raise ConfigError(
                "pseudo_labels.trust=calibrate needs held-out labeled cases (data.split.val or val_fraction) to "
                "score the teacher on; or set pseudo_labels.trust=all|none"
            )
        priors = None
        if cfg.priors.enabled:
            priors = open_prior_store(cfg, [*split.unlabeled, *split.val])
        self.teacher = self.teacher or build_teacher(cfg.teacher)
        embeddings = open_embedding_store(cfg, self.teacher, sorted({c for c, _ in [*pool, *calibration]}))
        state = load_checkpoint(checkpoint, map_location=device)
        model = build_student(cfg.student, student_in_channels(cfg), cfg.data.num_classes).to(device)
        load_model_weights(model, state, checkpoint)
        model.eval()
        loader = CaseLoader(reader, cfg.data, priors)
        labeler = PseudoLabeler(cfg, self.teacher, loader, embeddings, priors, device)
        trusted = dict.fromkeys(range(1, cfg.data.num_classes), pl.trust != "none")
        if pl.trust == "calibrate":
            labels = [loader.label_slice(c, k) for c, k in calibration]  # held-out labels score, never prompt
            trusted, _, model_dice = labeler.calibrate(model, calibration, labels, seed)
            logger.info(
                "%s: the round's student scores %.3f Dice on the calibration slices", round_dir.name, model_dice
            )
        logger.info("%s: labeling %d unlabeled images with the student of %s", round_dir.name, len(pool), checkpoint)
        results, stats = labeler.label(model, pool, trusted, seed + 1)
        scores = [r.reliability().score(pl.reliability) for r in results]
        chosen = select_reliable(scores, pl.select_fraction)
        items = [pool[i] for i in chosen]
        bank = PseudoLabelBank(iteration=0, trusted=dict(trusted), first_iteration=0)
        # entries keyed by position in the items the round trains on: the pool, or the selected images alone
        train_items = pool if trains_on_pool(cfg) else items
        keys = chosen if trains_on_pool(cfg) else range(len(chosen))
        bank.entries = {j: BankEntry.from_rectified(results[i].rectified) for j, i in zip(keys, chosen, strict=True)}
        round_dir.mkdir(parents=True, exist_ok=True)
        write_reliability_csv(round_dir / "reliability.csv", pool, results, scores, set(chosen))
        save_selection_figure(round_dir / "pseudo_labels.png", loader, pool, results, scores, cfg)
        bank.save(bank_path)
        selection = {
            "checkpoint": str(checkpoint),
            "rule": pl.reliability,
            "fraction": pl.select_fraction,
            "pool": len(pool),
            "selected": len(items),
            "score_threshold": min((scores[i] for i in chosen), default=math.nan),
            "trusted": {str(k): v for k, v in trusted.items()},
            "refresh": stats.scalars(),
            "items": [[c, k] for c, k in items],
            "train_items": [[c, k] for c, k in train_items],
        }
        atomic_write_text(selection_path, json.dumps(selection, indent=2))  # last: its presence means done
        logger.info(
            "%s: kept %d of %d pool images (reliability=%s >= %.3f); %.0f%% of their pixels ignored",
            round_dir.name,
            len(items),
            len(pool),
            pl.reliability,
            selection["score_threshold"],
            100 * float(np.mean([(e.weight == 0).mean() for e in bank.entries.values()])) if items else 0.0,
        )
        return train_items, bank


def write_reliability_csv(
    path: Path, items: list[Item], results: list[PseudoLabelResult], scores: list[float], chosen: set[int]
) -> None:
    """One row per pool image: case, slice, the two reliability signals, the score, prompts, kept share, selected."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "slice", "teacher_agreement", "student_agreement", "score", "prompts", "kept", "selected"])
    for i, ((case_id, k), r) in enumerate(zip(items, results, strict=True)):
        rel = r.reliability()
        kept = float((r.rectified.weight > 0).mean())
        row = [case_id, k, f"{rel.teacher:.4f}", f"{rel.student:.4f}", f"{scores[i]:.4f}", r.prompts, f"{kept:.4f}"]
        writer.writerow([*row, int(i in chosen)])
    atomic_write_text(path, buf.getvalue())


def save_selection_figure(
    path: Path, loader: CaseLoader, items: list[Item], results: list[PseudoLabelResult], scores: list[float], cfg
) -> None:
    """The 3 most and 3 least reliable images: the student's prediction (middle) and the pseudo-label (right,
    ignored pixels drawn as background, with its Dice against the student's prediction)."""
    from semisam.evaluation.figures import save_prediction_figure

    order = [i for i in rank_by_reliability(scores) if not math.isnan(scores[i])]
    shown = [*order[:3], *order[-3:]] if len(order) > 6 else order
    if not shown:
        return
    save_prediction_figure(
        path,
        [loader.image_slice(*items[i]) for i in shown],
        [results[i].model_probs.argmax(0) for i in shown],
        [results[i].rectified.label * (results[i].rectified.weight > 0) for i in shown],
        [f"{items[i][0]}: reliability {scores[i]:.2f}" for i in shown],
        cfg.data.num_classes,
        class_names=cfg.data.class_names or None,
        columns=("student", "pseudo-label (vs student)"),
    )


def _has_started(cfg: RunConfig) -> bool:
    """Whether the run of ``cfg`` has a checkpoint to resume from (its training time is then not this process's)."""
    return (Path(cfg.output_dir) / "checkpoints" / "last.pt").exists()


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
