"""The exponential moving average (EMA) of the student: the mean teacher, built on timm's ``ModelEmaV3``.

Schedule (SSL4MIS ``update_ema_variables``): after the optimiser step of iteration ``t`` (0-based),
``ema = alpha_t * ema + (1 - alpha_t) * student`` with ``alpha_t = min(1 - 1 / (t + 1), decay)``, so the first
update (t = 0) copies the student, the second averages with weight 0.5, and alpha reaches ``decay`` at
``t = 1 / (1 - decay) - 1`` (99 for 0.99).

``ModelEmaV3`` with ``use_warmup=True, warmup_gamma=1, warmup_power=1`` computes
``min(1 - (1 + (s - 1))^-1, decay) = min(1 - 1/s, decay)`` for its ``step`` argument ``s`` (and 0 for s <= 1),
so ``alpha_t`` is ModelEmaV3's decay at ``s = t + 1``; :meth:`StudentEMA.update` passes exactly that
(``tests/test_engine_parts.py`` checks it against the formula).

Buffers: every floating-point buffer (batch-norm ``running_mean`` / ``running_var``) is averaged with the same
``alpha_t`` as the parameters; integer buffers (``num_batches_tracked``) are copied from the student. The
EMA module is kept in eval mode, so it normalises with these averaged running statistics (and applies no
dropout). SSL4MIS instead runs its EMA model in train mode, normalising each teacher batch with its own batch
statistics; with batch norm that is the one behavioural difference.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

logger = logging.getLogger("semisam")


def ema_alpha(iteration: int, decay: float) -> float:
    """SSL4MIS's EMA coefficient after the optimiser step of 0-based iteration t: min(1 - 1/(t+1), decay)."""
    return min(1.0 - 1.0 / (iteration + 1), decay)


class StudentEMA:
    """An EMA copy of a student network.

    Args:
        model: the student; it is deep-copied (same device and dtype), the copy is put in eval mode and its
            parameters stop requiring gradients.
        decay: the final EMA decay (SSL4MIS: 0.99), in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay={decay} must be in [0, 1)")
        self.decay = float(decay)
        self._ema = ModelEmaV3(
            model,
            decay=self.decay,
            use_warmup=True,
            warmup_gamma=1.0,
            warmup_power=1.0,
            exclude_buffers=False,
        )
        self._ema.module.requires_grad_(False)
        self.last_iteration: int | None = None

    @property
    def module(self) -> nn.Module:
        """The averaged network: float (B, C_in, H, W) -> logits (B, C_out, H, W), eval mode, no gradients."""
        return self._ema.module

    def alpha(self, iteration: int) -> float:
        """The EMA coefficient that :meth:`update` uses at ``iteration`` (ModelEmaV3's own computation)."""
        return self._ema.get_decay(iteration + 1)

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        """Fold ``model`` in after the optimiser step of 0-based ``iteration`` (SSL4MIS's ``global_step``).

        ``iteration`` 0 copies the model, 1 averages half-half, then ``alpha = min(1 - 1/(iteration+1),
        decay)``.
        """
        if iteration < 0:
            raise ValueError(f"iteration={iteration} must be >= 0")
        self._ema.update(model, step=iteration + 1)
        self.last_iteration = int(iteration)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": averaged weights and buffers, "decay": float, "last_iteration": int | None}``.

        Plain tensors, floats and ints: loadable with ``torch.load(weights_only=True)``. ``state["module"]``
        is an ordinary state dict of the student's architecture.
        """
        return {
            "module": self.module.state_dict(),
            "decay": self.decay,
            "last_iteration": self.last_iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (or from a bare state dict of the student's architecture)."""
        if "module" in state and isinstance(state["module"], dict):
            self.module.load_state_dict(state["module"])
            saved_decay = state.get("decay")
            if saved_decay is not None and float(saved_decay) != self.decay:
                logger.warning("EMA state saved with decay %s, continuing with decay %s", saved_decay, self.decay)
            last = state.get("last_iteration")
            self.last_iteration = None if last is None else int(last)
        else:
            self.module.load_state_dict(state)
