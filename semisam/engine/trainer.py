"""The training loop: batches in, optimiser steps, EMA, validation, checkpoints, records.

The loss of each method lives in :mod:`semisam.methods`; data, student, optimiser and evaluation are
built by their own modules. The trainer knows no method and no pseudo-label machinery by name: it reads what the
method declares (unlabeled data, EMA, strong views), and what a method trains on besides its batches (the bank of
the teacher's pseudo-labels, refreshed online or fixed for a round) is a part passed in by the caller
(:mod:`semisam.workflow.train`). A run directory holds ``config.yaml``, ``environment.json``,
``checkpoints/{last,best}.pt``, ``tensorboard/`` and ``metrics.csv``. If ``checkpoints/last.pt`` exists, the
run resumes from it (same config required), with model, EMA, optimiser, scheduler, scaler, RNG state and data
order restored, so that it ends where an uninterrupted run would.

Under ``torchrun`` (see :mod:`semisam.distributed`) every process trains its share of each global batch
(``schedule.batch_size`` images per process) through DistributedDataParallel; rank 0 alone validates, records
and writes checkpoints. Checkpoints carry the number of processes and, with several, every rank's RNG state; a
run resumes with the same number of processes, every rank loading ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from semisam import distributed
from semisam.config.loader import config_differences, config_to_dict, save_config, unused_keys
from semisam.config.schema import ConfigError, RefineConfig, RunConfig, trains_on_pseudo_labels
from semisam.data.dataset import (
    Item,
    IterationBatchSampler,
    SliceDataset,
    check_labeled_cases,
    expand_to_slices,
    require_labels,
)
from semisam.data.fusion import fuse_priors, student_in_channels
from semisam.data.memory import SliceStore
from semisam.data.readers import CaseReader, build_reader
from semisam.data.splits import Split, resolve_split
from semisam.engine.ema import StudentEMA
from semisam.engine.optim import build_optimizer, build_scheduler
from semisam.engine.rng import capture_rng, restore_rng
from semisam.evaluation.inference import evaluate_cases
from semisam.methods import build_method
from semisam.methods.base import BankSource, StepOutput
from semisam.run_logger import NullRunLogger, RunLogger, colorize, to_rgb
from semisam.student.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from semisam.student.unet import build_run_student
from semisam.teacher.cache import CacheStore
from semisam.teacher.stores import open_prior_store
from semisam.utils import atomic_write_text, autocast_dtype, resolve_device, seed_everything
from semisam.version import environment_info

logger = logging.getLogger("semisam")

# Keys that may differ between a run and its resumption (they do not change what is computed).
RESUMABLE_DIFFERENCES = (
    "data.num_workers",
    "data.root",
    "output_dir",
    "device",
    "eval.batch_size",
    "teacher.cache_dir",
    "teacher.checkpoint_dir",
    "teacher.allow_download",
    "pseudo_labels.rounds",  # how many rounds follow does not change one round: a finished run can be extended
    *(f"refine.{f.name}" for f in dataclasses.fields(RefineConfig)),  # test-time only
)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    run_dir: Path
    iterations: int
    best_metric: float
    best_iteration: int
    last_checkpoint: Path
    best_checkpoint: Path
    selected: str = "best"  # eval.checkpoint: which of the two stands for the run

    @property
    def checkpoint(self) -> Path:
        """The checkpoint that stands for the run (``eval.checkpoint``)."""
        return self.best_checkpoint if self.selected == "best" else self.last_checkpoint


@dataclass
class RunContext:
    """The data side of a run, built by the trainer and handed to the parts passed in (a bank source's factory):
    the reader, the split, the labeled and unlabeled training slices, the priors store (``None`` without priors),
    the device and the run directory."""

    reader: CaseReader
    split: Split
    labeled_items: list[Item]
    unlabeled_items: list[Item]
    priors: CacheStore | None
    device: torch.device
    run_dir: Path


class BankSchedule(BankSource, Protocol):
    """Where the unlabeled batches' pseudo-labels come from, and when they change: the online refresher
    (:class:`semisam.pseudolabel.refresh.PseudoLabelRefresher`) or a self-training round's fixed bank
    (:class:`semisam.pseudolabel.rounds.RoundData`)."""

    bank: Any  # a PseudoLabelBank: ``entries`` keyed by position in the unlabeled items
    seconds: float

    def is_due(self, iteration: int) -> bool: ...

    def refresh(self, model: torch.nn.Module, iteration: int, log: RunLogger | NullRunLogger) -> Any: ...

    def resume(self, iteration: int) -> None: ...


BankSourceFactory = Callable[[RunContext], BankSchedule]


class Trainer:
    """Trains a student as configured. ``Trainer(cfg).fit()``.

    Args:
        cfg: the run's config.
        progress: tqdm bars (rank 0 only).
        bank_source: for a method that trains on the teacher's pseudo-labels, a factory that builds the bank
            source from the run's data (:class:`RunContext`); :func:`semisam.workflow.train.build_trainer` and the
            rounds pass it. Called once, after the data and before the student are built.
        unlabeled_items: the unlabeled slices to train on instead of the split's whole pool (a round that trains
            on the selected images only).
        init_weights: a checkpoint whose student weights a fresh run starts from (a round that continues the
            last one); optimiser and schedule start anew, the EMA from those weights.
    """

    def __init__(
        self,
        cfg: RunConfig,
        progress: bool = True,
        bank_source: BankSourceFactory | None = None,
        unlabeled_items: Sequence[Item] | None = None,
        init_weights: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.main = distributed.is_main()  # the process that validates, records and writes files
        self.progress = progress and self.main
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = distributed.local_device(resolve_device(cfg.device))
        self.amp_dtype = autocast_dtype(cfg.schedule.amp, self.device)
        self.init_weights = init_weights
        seed_everything(cfg.seed, cfg.deterministic)
        self.method = None  # built with the data: the method says whether the unlabeled pool is read
        self.context = self._build_data(unlabeled_items)
        self.bank_source = self._attach_bank_source(bank_source)  # before the student: a teacher may draw weights
        self.stores = self._build_stores()
        self._build_model()
        self.iteration = 0
        self.best_metric = -math.inf
        self.best_iteration = -1

    # ------------------------------------------------------------------ construction
    def _build_data(self, unlabeled_items: Sequence[Item] | None) -> RunContext:
        """Reader, split, method, training slices and priors store (labels of val checked before any step)."""
        cfg = self.cfg
        reader = build_reader(cfg.data)
        split: Split = resolve_split(cfg.data, reader.case_ids())
        require_labels(reader, split.val, "val")  # before any step, not at the first validation
        self.method = build_method(cfg)
        labeled = expand_to_slices(reader, split.labeled)
        if unlabeled_items is not None:
            unlabeled = list(unlabeled_items)
        elif self.method.uses_unlabeled:
            unlabeled = expand_to_slices(reader, split.unlabeled)
        else:
            unlabeled = []
        if self.method.uses_unlabeled and not unlabeled:
            raise ConfigError(f"method.name={cfg.method.name} needs unlabeled data, but the split has none")
        priors = None
        if cfg.priors.enabled:
            unlabeled_cases = sorted({case for case, _ in unlabeled})  # none for a supervised run
            priors = open_prior_store(cfg, [*split.labeled, *unlabeled_cases, *split.val])
        return RunContext(reader, split, labeled, unlabeled, priors, self.device, self.run_dir)

    def _attach_bank_source(self, factory: BankSourceFactory | None) -> BankSchedule | None:
        """Build the bank source from the run's data and tell the method where its banks come from."""
        if factory is None:
            if trains_on_pseudo_labels(self.cfg):
                raise ConfigError(
                    f"method.name={self.cfg.method.name} trains on the teacher's pseudo-labels: train it with "
                    "semisam.workflow.train (tools/train.py), which gives the trainer its bank source (the online "
                    "refresher, or a round's bank)"
                )
            return None
        source = factory(self.context)
        self.method.bank_source = source  # the pseudo-label ramp starts at the first real bank
        return source

    def _build_stores(self) -> dict[bool, SliceStore | None]:
        """Every training slice decoded, normalised and resized once (``data.in_memory``; a bad file stops the run
        here, named), keyed by ``labeled``."""
        cfg, ctx = self.cfg, self.context
        stores: dict[bool, SliceStore | None] = {True: None, False: None}
        if cfg.data.in_memory:
            check_labeled_cases(ctx.reader, ctx.split.labeled, cfg.data)  # the labels' own message first
            stores[True] = SliceStore.build(
                ctx.reader, ctx.labeled_items, cfg.data, True, ctx.priors, self.progress, "labeled"
            )
            if self.method.uses_unlabeled:
                stores[False] = SliceStore.build(
                    ctx.reader, ctx.unlabeled_items, cfg.data, False, ctx.priors, self.progress, "unlabeled"
                )
        return stores

    def _build_model(self) -> None:
        """The student, its EMA (if the method keeps one), the DDP wrapper, optimiser, schedule and scaler."""
        cfg = self.cfg
        self.in_channels = student_in_channels(cfg)
        self.model = build_run_student(cfg).to(self.device)
        self.ema = StudentEMA(self.model, cfg.method.ema_decay) if self.method.needs_ema else None
        self.train_model = distributed.wrap_model(self.model, self.device)  # DDP under torchrun, else the model
        self.optimizer = build_optimizer(self.model.parameters(), cfg.schedule)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    # the run's data, by the names the loop reads
    @property
    def reader(self) -> CaseReader:
        return self.context.reader

    @property
    def split(self) -> Split:
        return self.context.split

    @property
    def labeled_items(self) -> list[Item]:
        return self.context.labeled_items

    @property
    def unlabeled_items(self) -> list[Item]:
        return self.context.unlabeled_items

    @property
    def priors(self) -> CacheStore | None:
        return self.context.priors

    # ------------------------------------------------------------------ state
    def _state(self, rank_rng: list | None = None) -> dict:
        """The checkpoint dict; ``rank_rng``: every rank's RNG state (several processes, ``last.pt``)."""
        state = {
            "config": config_to_dict(self.cfg),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best_metric": self.best_metric,
            "best_iteration": self.best_iteration,
            "rng": capture_rng(),
            "model_info": {
                "arch": self.cfg.student.arch,
                "in_channels": self.in_channels,
                "num_classes": self.cfg.data.num_classes,
            },
            "world_size": distributed.world_size(),
        }
        if rank_rng is not None and len(rank_rng) > 1:
            state["rank_rng"] = rank_rng
        return state

    def _save_last(self, path: Path) -> None:
        """Write ``last.pt`` on rank 0 with every rank's RNG state. All ranks call it (it gathers)."""
        rank_rng = distributed.gather_to_main(capture_rng())
        if self.main:
            save_checkpoint(path, self._state(rank_rng))

    def _resume(self, path: Path) -> dict:
        """Restore everything but the RNG state, which is returned: it is restored only after the data loaders
        exist (creating a loader iterator draws from torch's generator)."""
        state = load_checkpoint(path, map_location=self.device)
        self._check_same_config(state["config"], path)
        saved_world, world = int(state.get("world_size", 1)), distributed.world_size()
        if saved_world != world:
            raise ConfigError(
                f"{path} was written by a run of {saved_world} process(es); resuming it with {world} would change "
                f"every batch. Resume with torchrun --nproc_per_node={saved_world} (or one process for 1)."
            )
        load_model_weights(self.model, state, path)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_metric = float(state["best_metric"])
        self.best_iteration = int(state["best_iteration"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)
        rank_rng = state.get("rank_rng")
        return rank_rng[distributed.rank()] if rank_rng else state["rng"]

    def _start_from(self, path: Path) -> None:
        """A round that continues the last one: its student weights (and a fresh EMA of them); optimiser and
        schedule start anew."""
        load_model_weights(self.model, load_checkpoint(path, map_location=self.device), path)
        if self.ema is not None:
            self.ema = StudentEMA(self.model, self.cfg.method.ema_decay)
        logger.info("starting from the weights of %s", path)

    def _check_same_config(self, saved: dict, path: Path) -> None:
        """Refuse to resume a run written with another config. Keys that cannot change this run's computation are
        not compared: those of :data:`RESUMABLE_DIFFERENCES` and the ``method.*`` keys its method does not read
        (e.g. a round written when its config still carried the unused consistency weight)."""
        unread = [k for k in unused_keys(self.cfg) if k.startswith("method.")]
        differing = config_differences(self.cfg, saved, [*RESUMABLE_DIFFERENCES, *unread])
        if differing:
            raise ConfigError(
                f"{path} was written by a run with another config; resuming would mix two experiments. "
                f"Differences: {'; '.join(differing[:6])}. Use another output_dir, or delete the run directory."
            )

    # ------------------------------------------------------------------ data
    def _loader(self, items, labeled: bool, batch_size: int, seed_offset: int) -> DataLoader:
        bank = self.bank_source.bank if (self.bank_source is not None and not labeled) else None
        strong = 0 if labeled else self.method.strong_views()  # the views the method asks for
        dataset = SliceDataset(
            self.reader,
            items,
            self.cfg.data,
            labeled=labeled,
            train=True,
            strong=strong,
            priors=self.priors,
            bank=bank,
            store=self.stores[labeled],
        )
        # global batches of batch_size per process; each process takes its own disjoint share
        sampler = IterationBatchSampler(
            len(dataset),
            batch_size * distributed.world_size(),
            self.cfg.schedule.iterations,
            self.cfg.seed + seed_offset,
            start=self.iteration,
        )
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_sampler=distributed.shard_batches(sampler),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            # workers' base seed from a private generator: creating an iterator never moves the global RNG
            generator=torch.Generator().manual_seed(self.cfg.seed + 7919 * (seed_offset + 1)),
        )

    # ------------------------------------------------------------------ loop
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train to ``schedule.iterations``, resuming from ``checkpoints/last.pt`` if present.

        Args:
            stop_at: stop early after this iteration (checkpoint written), as a killed job would; the same
                config run again resumes there. For time-boxed jobs and tests.
        """
        sc = self.cfg.schedule
        last, best = self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt"
        rng_state = self._begin(last)
        log = RunLogger(self.run_dir, self.iteration) if self.main else NullRunLogger()
        if self.bank_source is not None:
            self.bank_source.resume(self.iteration)
        distributed.barrier()  # every rank has read last.pt and the bank before rank 0 may write new ones
        # The samplers end at the last iteration, so each loader is iterated exactly once.
        self._labeled_batches = iter(self._loader(self.labeled_items, True, sc.batch_size, 0))
        self._unlabeled_batches = self._unlabeled_loader() if self.method.uses_unlabeled else None
        if rng_state is not None:
            restore_rng(rng_state)
        self.model.train()
        bar = tqdm(
            total=sc.iterations, initial=self.iteration, desc="train", disable=not self.progress, dynamic_ncols=True
        )
        self._tic = time.perf_counter()
        end = sc.iterations if stop_at is None else min(stop_at, sc.iterations)
        try:
            while self.iteration < end:
                self._refresh_if_due(log)
                out, batch_l = self._step(last)
                bar.update(1)
                self._after_step(out, batch_l, log, bar, best)
                if (sc.checkpoint_every and self.iteration % sc.checkpoint_every == 0) or self.iteration in (
                    sc.iterations,
                    end,
                ):
                    self._save_last(last)
        finally:
            bar.close()
            log.close()
        return self._end(last, best)

    def _begin(self, last: Path) -> dict | None:
        """Resume from ``last`` (returning the RNG state to restore once the loaders exist), or start from
        ``init_weights``; write the run's records; log what the run is."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rng_state = self._resume(last) if last.exists() else None
        if rng_state is None and self.init_weights is not None:
            self._start_from(self.init_weights)
        if self.main:
            save_config(cfg, self.run_dir / "config.yaml")
            atomic_write_text(self.run_dir / "environment.json", json.dumps(environment_info(), indent=2))
        logger.info(
            "run %s: %s, %d labeled / %d unlabeled training slices, %d val cases, device %s%s%s",
            self.run_dir,
            cfg.method.name,
            len(self.labeled_items),
            len(self.unlabeled_items),
            len(self.split.val),
            self.device,
            f" ({self.amp_dtype})" if self.amp_dtype else "",
            f", {distributed.world_size()} processes" if distributed.is_distributed() else "",
        )
        return rng_state

    def _unlabeled_loader(self):
        return iter(self._loader(self.unlabeled_items, False, self.cfg.schedule.unlabeled_batch_size, 1))

    def _refresh_if_due(self, log: RunLogger | NullRunLogger) -> None:
        """Refresh the bank before the step of this iteration if it is due, and restart the unlabeled loader so
        that its workers see the new bank."""
        source = self.bank_source
        if source is None or not source.is_due(self.iteration):
            return
        if source.bank.iteration != self.iteration:  # not already done before a restart
            source.refresh(self._prompting_model(), self.iteration, log)
        self._unlabeled_batches = self._unlabeled_loader()

    def _step(self, last: Path) -> tuple[StepOutput, dict]:
        """One optimiser step on the next batches; returns the method's output and the labeled batch."""
        batch_l = self._inputs(next(self._labeled_batches))
        batch_u = self._inputs(next(self._unlabeled_batches)) if self._unlabeled_batches else None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.method.step(self.train_model, self.ema, batch_l, batch_u, self.iteration)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"loss is {out.loss.item()} at iteration {self.iteration}; last good state is {last}"
            )
        self._optimise(out.loss)
        distributed.average_buffers_(self.model)  # batch-norm statistics equal on every rank
        if self.ema is not None:  # alpha_t uses the 0-based index of the step just taken (SSL4MIS)
            self.ema.update(self.model, self.iteration)
        self.iteration += 1
        return out, batch_l

    def _after_step(self, out: StepOutput, batch_l: dict, log: RunLogger | NullRunLogger, bar, best: Path) -> None:
        """Scalars, image grids and validation as the schedule says, after the step that made ``iteration``."""
        sc, it = self.cfg.schedule, self.iteration
        if sc.log_every and it % sc.log_every == 0:
            logs = {**distributed.all_reduce_mean(out.logs), "lr": self.optimizer.param_groups[0]["lr"]}
            logs["time/iter_s"] = (time.perf_counter() - self._tic) / sc.log_every
            self._tic = time.perf_counter()
            log.scalars(it, logs)
            bar.set_postfix(loss=f"{float(out.loss.detach()):.4f}")
        if self.main and sc.image_every and (it % sc.image_every == 0 or it == 1):
            self._log_images(log, out.preview, it, batch_l.get("priors"))
        if self.main and ((sc.val_every and it % sc.val_every == 0) or it == sc.iterations):
            self._validate(log, best)

    def _end(self, last: Path, best: Path) -> TrainResult:
        if self.main and self.iteration == self.cfg.schedule.iterations and not best.exists():  # no validation
            save_checkpoint(best, self._state())  # last is best
        distributed.barrier()  # rank 0's files are written when fit returns on any rank
        return TrainResult(
            self.run_dir, self.iteration, self.best_metric, self.best_iteration, last, best, self.cfg.eval.checkpoint
        )

    def _inputs(self, batch: dict) -> dict:
        """Move a batch to the device and build the student's input (image fused with SAMAug priors; on odd
        iterations of SAMAug's alternating scheme, the raw input)."""
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        if self.priors is not None:
            raw = self.cfg.priors.alternate and self.iteration % 2 == 1
            batch["raw_image"] = batch["image"]
            for key in [k for k in ("image", "strong_image", "strong_image_2") if k in batch]:
                batch[key] = fuse_priors(batch[key], None if raw else batch["priors"], self.cfg.priors.fusion)
        return batch

    def _prompting_model(self) -> torch.nn.Module:
        """The model whose predictions prompt the teacher at a refresh: the EMA model, or the student itself for
        methods without one."""
        return self.ema.module if self.ema is not None else self.model

    def _optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.schedule.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.schedule.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()

    def _validate(self, log: RunLogger, best: Path) -> None:
        if not self.split.val:
            return
        acc, _ = evaluate_cases(
            self.model,
            self.reader,
            self.split.val,
            self.cfg.data,
            self.cfg.eval,
            self.device,
            self.cfg.eval.val_metrics,
            self.amp_dtype,
            priors=self.priors,
            priors_cfg=self.cfg.priors,
        )
        fg = acc.foreground_mean()
        per_class = acc.mean()
        values = {f"val/{name}": value for name, value in fg.items()}
        names = self.cfg.data.class_names
        for cls, metrics in per_class.items():
            label = names[int(cls)] if names else cls
            values[f"val/dice_{label}"] = metrics["dice"]
        log.scalars(self.iteration, values)
        dice = fg["dice"]
        improved = dice > self.best_metric
        if improved:
            self.best_metric, self.best_iteration = dice, self.iteration
            save_checkpoint(best, self._state())
        logger.info(
            "iteration %d: val Dice %.4f (best %.4f at %d)%s",
            self.iteration,
            dice,
            self.best_metric,
            self.best_iteration,
            " *" if improved else "",
        )

    def _log_images(
        self, log: RunLogger, preview: dict[str, torch.Tensor], iteration: int, priors: torch.Tensor | None
    ) -> None:
        if "image" in preview:
            rows = [to_rgb(preview["image"])]
            names = ["image"]
            if priors is not None:  # SAMAug's two maps, or the embedding priors' first two components
                rows += [to_rgb(priors[:, :1].detach()), to_rgb(priors[:, 1:2].detach())]
                embedding = self.cfg.priors.source == "embeddings"
                names += ["component 1", "component 2"] if embedding else ["seg prior", "boundary prior"]
            rows += [colorize(preview["label"]), colorize(preview["pred"])]
            tag = " | ".join([*names, "label", "prediction"])
            log.image_grid(f"train/labeled ({tag})", iteration, rows)
        if "unlabeled_image" in preview:
            rows, names = [to_rgb(preview["unlabeled_image"])], ["image"]
            if "unlabeled_pseudo_label" in preview:
                rows.append(colorize(preview["unlabeled_pseudo_label"]))
                names.append("pseudo-label")
            for key, name in (("unlabeled_uncertainty", "uncertainty"), ("unlabeled_weight", "kept")):
                if key in preview:
                    rows.append(preview[key][:, None].float().clamp(0, 1).expand(-1, 3, -1, -1))
                    names.append(name)
            rows.append(colorize(preview["unlabeled_pred"]))
            names.append("prediction")
            log.image_grid(f"train/unlabeled ({' | '.join(names)})", iteration, rows)
