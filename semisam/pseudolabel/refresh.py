"""The pseudo-label bank's life in a run: when it is refreshed, how, and how it survives a restart.

After the warm-up (``pseudo_labels.warmup`` of the run), every ``pseudo_labels.refresh_every`` iterations, the
EMA model labels every unlabeled item through the frozen teacher (:mod:`semisam.pseudolabel.labeler`), after
a check of the model and (``pseudo_labels.trust=calibrate``) a trust calibration on held-out labeled items:
``pseudo_labels.calibration_images`` slices spread evenly over the val cases. Not the labeled training images:
the student has memorised those, so its own score there says nothing about its score on unlabeled images (and
never the labels of unlabeled images). Each bank is saved as
``<run>/pseudo_labels/bank_<iteration>.npz`` (atomically; the last two are kept), so a run resumed at iteration
t trains on the bank of the last refresh at or before t, exactly as the uninterrupted run did.

Under torchrun only rank 0 holds the teacher and refreshes; it writes the bank file, all ranks meet at a barrier,
and the other ranks load that file (the same file a resumed run would load), so every rank trains on the same
pseudo-labels without sending them over the process group.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from semisam import distributed
from semisam.config.schema import RunConfig
from semisam.data.cases import CaseLoader, Item
from semisam.data.readers import CaseReader
from semisam.pseudolabel.labeler import BankEntry, PseudoLabelBank, PseudoLabeler, PseudoLabelResult
from semisam.pseudolabel.pipeline import calibrate_then_label, calibration_items, initial_trust, labeling_seed
from semisam.run_logger import NullRunLogger, RunLogger, colorize, to_rgb
from semisam.teacher.adapt import build_run_teacher
from semisam.teacher.cache import CacheStore
from semisam.teacher.stores import open_embedding_store

logger = logging.getLogger("semisam")

KEEP_BANKS = 2


class PseudoLabelRefresher:
    """Owns the teacher, the embedding cache, the labeler and the bank of one run (under torchrun, rank 0 owns the
    teacher and labeler; the other ranks only read its banks)."""

    def __init__(
        self,
        cfg: RunConfig,
        reader: CaseReader,
        held_out_items: list[Item],
        unlabeled_items: list[Item],
        priors: CacheStore | None,
        device: torch.device,
        run_dir: Path,
        teacher=None,
        progress: bool = True,
    ) -> None:
        """``held_out_items``: slices of labeled cases the student never trains on (the val split); the
        calibration and the gate use ``pseudo_labels.calibration_images`` of them, spread evenly
        (:func:`~semisam.pseudolabel.pipeline.calibration_items`)."""
        self.cfg = cfg
        self.reader = reader
        self.unlabeled_items = unlabeled_items
        self.calibration_items = calibration_items(cfg, held_out_items)
        self.bank_dir = run_dir / "pseudo_labels"
        self.main = distributed.is_main()
        self.bank = PseudoLabelBank()
        self.trusted = initial_trust(cfg)
        self.seconds = 0.0  # spent in refreshes during this process
        if not self.main:
            return
        self.teacher = build_run_teacher(cfg, teacher, progress)  # progress: of an adaptation
        cases = sorted({c for c, _ in unlabeled_items} | {c for c, _ in self.calibration_items})
        embeddings = open_embedding_store(cfg, self.teacher, cases)
        self.labeler = PseudoLabeler(
            cfg, self.teacher, CaseLoader(reader, cfg.data, priors), embeddings, priors, device
        )

    # ---------------------------------------------------------------- schedule
    @property
    def first_bank_iteration(self) -> int | None:
        """The iteration of this run's first refresh that produced a bank; ``None`` while there is none."""
        return self.bank.first_iteration if self.bank.entries else None

    @property
    def first_refresh(self) -> int:
        return int(self.cfg.pseudo_labels.warmup * self.cfg.schedule.iterations)

    def is_due(self, iteration: int) -> bool:
        """A refresh happens before the step of ``iteration``."""
        start = self.first_refresh
        return iteration >= start and (iteration - start) % self.cfg.pseudo_labels.refresh_every == 0

    # ---------------------------------------------------------------- persistence
    def _bank_path(self, iteration: int) -> Path:
        return self.bank_dir / f"bank_{iteration:08d}.npz"

    def resume(self, iteration: int) -> None:
        """Load the bank of the last refresh at or before ``iteration`` (none before the first refresh)."""
        candidates = sorted(self.bank_dir.glob("bank_*.npz")) if self.bank_dir.exists() else []
        usable = [p for p in candidates if int(p.stem.split("_")[1]) <= iteration]
        stale = [p for p in candidates if int(p.stem.split("_")[1]) > iteration]
        for path in stale if self.main else ():  # written after the checkpoint we resume from: it will run again
            path.unlink()
        if usable:
            self.bank = PseudoLabelBank.load(usable[-1])
            self.trusted = dict(self.bank.trusted) or self.trusted
            logger.info(
                "pseudo-label bank of iteration %d restored (%d items)", self.bank.iteration, len(self.bank.entries)
            )

    # ---------------------------------------------------------------- refresh
    def refresh(self, model: torch.nn.Module, iteration: int, log: RunLogger | NullRunLogger) -> PseudoLabelBank:
        """Calibrate trust and check the model on labeled items, then relabel every unlabeled item with ``model``
        (the EMA model). A model whose foreground Dice on the calibration items is below
        ``pseudo_labels.min_model_dice`` (early in a run, the EMA can still be mostly the random start) would
        prompt the teacher with noise and teach confident background: that refresh is skipped.

        Under torchrun every rank calls this; rank 0 refreshes, then the others load the bank it wrote."""
        if self.main:
            self._refresh(model, iteration, log)
        if distributed.is_distributed():
            distributed.barrier()  # rank 0's bank file is complete
            if not self.main:
                self.resume(iteration)  # the newest bank at or before this iteration: rank 0's, or the kept one
        return self.bank

    def _refresh(self, model: torch.nn.Module, iteration: int, log: RunLogger | NullRunLogger) -> PseudoLabelBank:
        tic = time.perf_counter()
        pl = self.cfg.pseudo_labels
        labeling = calibrate_then_label(
            self.labeler,
            model,
            self.unlabeled_items,
            self.calibration_items,
            self.trusted,
            labeling_seed(self.cfg.seed, iteration),
        )
        scalars = dict(labeling.calibration.scalars)
        if labeling.skipped:
            scalars["pseudo/skipped"] = 1.0
            scalars["time/refresh_s"] = time.perf_counter() - tic  # the calibration cost a skipped one too
            log.scalars(iteration, scalars)
            logger.warning(
                "iteration %d: pseudo-label refresh skipped: the EMA model's Dice on the held-out calibration "
                "images is %.3f < pseudo_labels.min_model_dice=%.2f, so its prompts would be noise; "
                "the current bank (%s) stays",
                iteration,
                labeling.calibration.model_dice,
                pl.min_model_dice,
                f"iteration {self.bank.iteration}" if self.bank.entries else "empty: no pseudo-label loss yet",
            )
            return self.bank
        self.trusted = labeling.calibration.trusted  # only with a bank: the decision in force is the bank's
        results, stats = labeling.results, labeling.stats
        self.bank = self._save_bank(iteration, results)
        elapsed = time.perf_counter() - tic
        self.seconds += elapsed
        scalars.update(stats.scalars())
        scalars["time/refresh_s"] = elapsed
        log.scalars(iteration, scalars)
        self._log_grid(log, iteration, results[:4])
        logger.info(
            "iteration %d: pseudo-labels refreshed for %d images in %.1f s "
            "(%.0f%% certain, %.0f%% model fallback, %.0f%% ignored)",
            iteration,
            len(results),
            elapsed,
            100 * scalars["pseudo/fraction_certain"],
            100 * scalars["pseudo/fraction_model_fallback"],
            100 * scalars["pseudo/fraction_ignored"],
        )
        return self.bank

    def _save_bank(self, iteration: int, results: list[PseudoLabelResult]) -> PseudoLabelBank:
        """The bank of this refresh, written atomically; banks older than the last ``KEEP_BANKS`` are deleted."""
        first = self.first_bank_iteration
        bank = PseudoLabelBank(
            iteration=iteration, trusted=dict(self.trusted), first_iteration=iteration if first is None else first
        )
        bank.entries = {i: BankEntry.from_rectified(r.rectified) for i, r in enumerate(results)}
        bank.save(self._bank_path(iteration))
        for old in sorted(self.bank_dir.glob("bank_*.npz"))[:-KEEP_BANKS]:
            old.unlink()
        return bank

    def _log_grid(self, log: RunLogger, iteration: int, results) -> None:
        """image | pseudo-label | uncertainty | weight | model prediction, at a common display size."""
        if not results:
            return
        loader = self.labeler.loader
        items = self.unlabeled_items[: len(results)]
        size = tuple(self.cfg.data.image_size)

        def resize(x: torch.Tensor, nearest: bool) -> torch.Tensor:
            return torch.nn.functional.interpolate(x.float(), size, mode="nearest" if nearest else "bilinear")

        images = torch.cat([resize(torch.from_numpy(loader.image_slice(c, k))[None], False) for c, k in items])
        labels = torch.cat([resize(torch.from_numpy(r.rectified.label)[None, None], True) for r in results])
        unc = torch.cat([resize(torch.from_numpy(r.rectified.uncertainty)[None, None], False) for r in results])
        weight = torch.cat([resize(torch.from_numpy(r.rectified.weight)[None, None], True) for r in results])
        preds = torch.cat([resize(torch.from_numpy(r.model_probs.argmax(0))[None, None], True) for r in results])
        rows = [
            to_rgb(images),
            colorize(labels[:, 0].long()),
            unc.clamp(0, 1).expand(-1, 3, -1, -1),
            weight.expand(-1, 3, -1, -1),
            colorize(preds[:, 0].long()),
        ]
        log.image_grid("pseudo/unlabeled (image | pseudo-label | uncertainty | kept | EMA prediction)", iteration, rows)
