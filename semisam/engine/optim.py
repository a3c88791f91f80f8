"""Optimiser and learning-rate schedule from the ``schedule`` config.

The scheduler is stepped once per iteration, after the optimiser step, so iteration ``i`` (0-based) trains
with ``lr_i = lr * factor(i)`` where, with ``W = warmup_iterations`` and ``N = iterations``:

- warmup (``i < W``): ``factor = (i + 1) / W``, a linear ramp that reaches the base lr at ``i = W - 1``;
- afterwards, with ``p = (i - W) / (N - W)`` (the progress through the rest of the run, clipped to [0, 1]):
  ``poly``: ``(1 - p) ** poly_power`` (SSL4MIS: ``lr * (1 - i / N) ** 0.9`` when ``W = 0``),
  ``cosine``: ``0.5 * (1 + cos(pi * p))`` (down to 0), ``constant``: 1.

It is one :class:`~torch.optim.lr_scheduler.LambdaLR` computing this closed form: the lr never drifts from
repeated multiplication, and resuming needs only ``scheduler.state_dict()`` (which stores the step count).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from semisam.config.schema import LR_SCHEDULES, ConfigError, ScheduleConfig

logger = logging.getLogger("semisam")


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], cfg: ScheduleConfig
) -> torch.optim.Optimizer:
    """``sgd`` (momentum ``cfg.momentum``, weight decay ``cfg.weight_decay``, no Nesterov; SSL4MIS: 0.01, 0.9,
    1e-4) or ``adamw`` (decoupled weight decay ``cfg.weight_decay``, default betas), at lr ``cfg.lr``."""
    if cfg.lr <= 0:
        raise ConfigError(f"schedule.lr={cfg.lr} must be > 0")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"schedule.optimizer={cfg.optimizer!r} is not one of sgd, adamw")


def lr_factor(cfg: ScheduleConfig) -> Callable[[int], float]:
    """The multiplier of the base lr at 0-based iteration ``i``, as documented in this module."""
    total, warmup, schedule, power = cfg.iterations, cfg.warmup_iterations, cfg.lr_schedule, cfg.poly_power
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"schedule.lr_schedule={schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if total <= 0:
        raise ConfigError(f"schedule.iterations={total} must be > 0")
    if not 0 <= warmup < total:
        raise ConfigError(f"schedule.warmup_iterations={warmup} must be in [0, schedule.iterations={total})")
    if schedule == "poly" and power <= 0:
        raise ConfigError(f"schedule.poly_power={power} must be > 0")

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        p = min(max((i - warmup) / (total - warmup), 0.0), 1.0)
        if schedule == "poly":
            return (1.0 - p) ** power
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> LRScheduler:
    """A per-iteration :class:`LambdaLR` for ``cfg.lr_schedule`` with optional linear warmup.

    Call ``scheduler.step()`` once after every optimiser step. Resumable: save ``optimizer.state_dict()`` and
    ``scheduler.state_dict()``, rebuild both from the same config, load them, and the lr sequence continues
    exactly as in an uninterrupted run.
    """
    scheduler = LambdaLR(optimizer, lr_lambda=lr_factor(cfg))
    logger.debug(
        "lr schedule %s from %g over %d iterations (warmup %d)",
        cfg.lr_schedule,
        cfg.lr,
        cfg.iterations,
        cfg.warmup_iterations,
    )
    return scheduler
