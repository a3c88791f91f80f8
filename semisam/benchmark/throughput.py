"""Training throughput: the project's training loop against a plain in-memory loop of the same model and batch.

Both loops train the student of one config for the same number of steps on the same labeled images:

- ``semisam``: :class:`~semisam.engine.trainer.Trainer` as ``tools/train.py`` runs it (data pipeline with its
  augmentation, the method's loss, optimiser and scheduler, logging), with validation, checkpoints and image
  grids pushed past the end of the measured steps. Its rate comes from the trainer's own per-window timing
  (``time/iter_s`` in ``metrics.csv``), so set-up and the closing validation are not counted.
- ``plain``: what a user writes by hand: every image held as one tensor, a random batch drawn per step, random
  flips in torch, the same loss, AdamW at the same learning rate, ``zero_grad / backward / step``.

The figure of merit is labeled images per second (``batch_size / seconds per step``), the median over windows
after ``warmup`` steps. Wall-clock timing on a shared machine varies: repeat and report the spread.
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from semisam.config.loader import config_from_dict, config_to_dict
from semisam.config.schema import RunConfig
from semisam.data.dataset import expand_to_slices
from semisam.data.fusion import student_in_channels
from semisam.data.memory import SliceStore
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.ema import StudentEMA
from semisam.methods import build_method
from semisam.methods.losses import SupervisedLoss
from semisam.student.unet import build_run_student, build_student
from semisam.workflow.train import build_trainer


@dataclass
class Throughput:
    """Images per second of one loop (median over timing windows) and the windows' spread."""

    loop: str
    images_per_s: float
    seconds_per_step: float
    windows: int
    spread: float  # (max - min) / median of the windows' step times


def _summary(loop: str, step_times: list[float], batch: int) -> Throughput:
    median = statistics.median(step_times)
    return Throughput(loop, batch / median, median, len(step_times), (max(step_times) - min(step_times)) / median)


def plain_loop(cfg: RunConfig, steps: int, warmup: int, window: int = 10) -> Throughput:
    """A hand-written in-memory loop: the same student, batch size, loss and optimiser as ``cfg``.

    Args:
        cfg: a run config (data, student, schedule; the method's Dice/CE weights).
        steps: timed steps (after ``warmup`` untimed ones).
        window: steps per timing window.
    """
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    store = SliceStore.build(reader, expand_to_slices(reader, split.labeled), cfg.data, True, what="plain loop")
    images = torch.from_numpy(store.images)
    labels = torch.from_numpy(store.labels.astype("int64"))
    model = build_student(cfg.student, images.shape[1], cfg.data.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.schedule.lr, weight_decay=cfg.schedule.weight_decay)
    loss_fn = SupervisedLoss(cfg.data.num_classes, cfg.method.dice_weight, cfg.method.ce_weight)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = cfg.schedule.batch_size
    model.train()
    times: list[float] = []
    tic = time.perf_counter()
    for step in range(warmup + steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        x, y = images[index], labels[index]
        if torch.rand(1, generator=generator) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand(1, generator=generator) < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1 - warmup
        if done == 0:
            tic = time.perf_counter()
        elif done > 0 and done % window == 0:
            times.append((time.perf_counter() - tic) / window)
            tic = time.perf_counter()
    return _summary("plain", times, batch)


def project_loop(cfg: RunConfig, steps: int, warmup: int, window: int = 10) -> Throughput:
    """``Trainer.fit`` for ``warmup + steps`` iterations of ``cfg`` (its method, data pipeline and schedule), in a
    temporary run directory; validation, checkpoints and image grids only after the last step (not timed)."""
    total = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        data = config_to_dict(cfg)
        data["output_dir"] = str(Path(tmp) / "run")
        # the same per-step work; the lr warm-up is cut to fit the short run (it does not change a step's cost)
        warm = min(data["schedule"]["warmup_iterations"], total - 1)
        data["schedule"].update(
            iterations=total, val_every=0, checkpoint_every=0, image_every=0, log_every=window, warmup_iterations=warm
        )
        run_cfg = config_from_dict(data)
        build_trainer(run_cfg, progress=False).fit()
        with (Path(tmp) / "run" / "metrics.csv").open(newline="") as f:
            rows = [(int(r["iteration"]), float(r["value"])) for r in csv.DictReader(f) if r["tag"] == "time/iter_s"]
    times = [value for iteration, value in rows if iteration - window >= warmup]
    return _summary("semisam", times, cfg.schedule.batch_size)


def method_step_seconds(cfg: RunConfig, steps: int = 4, warmup: int = 2, iteration: int | None = None) -> float:
    """Seconds of one training step of ``cfg``'s method alone: its forward passes, loss, backward and AdamW step
    (and the EMA update where it keeps one) on random batches of the config's batch sizes and image size, without
    the data pipeline. The median of ``steps`` steps after ``warmup``. ``iteration``: the step index passed to the
    method (default: the middle of the run, past BCP's pre-training and any warm-up)."""
    method = build_method(cfg)
    channels, classes = student_in_channels(cfg), cfg.data.num_classes
    model = build_run_student(cfg).train()  # with the learned projection of embedding priors, if any
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.schedule.lr)
    ema = StudentEMA(model, cfg.method.ema_decay) if method.needs_ema else None
    height, width = cfg.data.image_size
    generator = torch.Generator().manual_seed(cfg.seed)
    b, u = cfg.schedule.batch_size, cfg.schedule.unlabeled_batch_size
    labeled = {
        "image": torch.rand(b, channels, height, width, generator=generator),
        "label": torch.randint(0, classes, (b, height, width), generator=generator),
    }
    unlabeled = {
        k: torch.rand(u, channels, height, width, generator=generator)
        for k in ("image", "strong_image", "strong_image_2")
    }
    start = cfg.schedule.iterations // 2 if iteration is None else iteration
    times = []
    for k in range(warmup + steps):
        tic = time.perf_counter()
        out = method.step(model, ema, labeled, unlabeled if method.uses_unlabeled else None, start + k)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, start + k)
        if k >= warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)
