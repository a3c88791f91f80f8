"""One entry point for training as configured: a single run of the trainer, or self-training rounds.

``tools/train.py``, the demo and the benchmark call :func:`train`; ``pseudo_labels.mode=rounds`` (method
``semisam``) runs :class:`~semisam.pseudolabel.rounds.SelfTraining`, everything else one
:class:`~semisam.engine.trainer.Trainer`.
"""

from __future__ import annotations

from semisam.config.schema import RunConfig, uses_rounds
from semisam.engine.trainer import Trainer, TrainResult

__all__ = ["train", "uses_rounds"]


def train(cfg: RunConfig, progress: bool = True, teacher=None) -> TrainResult:
    """Train (or resume) as ``cfg`` says and return the result of the run (of its last round, with rounds)."""
    if uses_rounds(cfg):
        from semisam.pseudolabel.rounds import SelfTraining

        return SelfTraining(cfg, progress=progress, teacher=teacher).fit()
    return Trainer(cfg, progress=progress, teacher=teacher).fit()
