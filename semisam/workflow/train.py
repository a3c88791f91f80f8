"""One entry point for training as configured: one run of the trainer, or self-training rounds.

``tools/train.py``, the demo and the benchmark call :func:`train`. The trainer (:mod:`semisam.engine.trainer`)
knows no pseudo-label machinery: what a method trains on besides its batches is passed in here, as parts.

- ``pseudo_labels.mode=rounds`` (:func:`~semisam.config.schema.uses_rounds`): :class:`SelfTraining`, which
  trains round 0, makes each round's bank and trains the round with it;
- online pseudo-labels (:func:`~semisam.config.schema.trains_on_pseudo_labels`): one trainer, given a
  :class:`~semisam.pseudolabel.refresh.PseudoLabelRefresher` that relabels the pool during the run;
- everything else: one trainer.
"""

from __future__ import annotations

from semisam.config.schema import RunConfig, trains_on_pseudo_labels, uses_rounds
from semisam.data.dataset import expand_to_slices
from semisam.engine.trainer import RunContext, Trainer, TrainResult
from semisam.pseudolabel.refresh import PseudoLabelRefresher
from semisam.teacher.engine import SamTeacher
from semisam.workflow.rounds import SelfTraining

__all__ = ["build_trainer", "train"]


def train(cfg: RunConfig, progress: bool = True, teacher: SamTeacher | None = None) -> TrainResult:
    """Train (or resume) as ``cfg`` says and return the result of the run (of its last round, with rounds).
    ``teacher``: an already built teacher (default: built from ``cfg.teacher`` when one is needed)."""
    if uses_rounds(cfg):
        return SelfTraining(cfg, progress=progress, teacher=teacher).fit()
    return build_trainer(cfg, progress, teacher).fit()


def build_trainer(cfg: RunConfig, progress: bool = True, teacher: SamTeacher | None = None) -> Trainer:
    """The trainer of one run, with the online pseudo-label refresher when the run trains on the teacher's
    labels. Not for ``rounds`` configs: a round is trained by :class:`SelfTraining`, which gives it its bank."""

    def refresher(context: RunContext) -> PseudoLabelRefresher:
        return PseudoLabelRefresher(
            cfg,
            context.reader,
            expand_to_slices(context.reader, context.split.val),  # held-out labels calibrate trust
            context.unlabeled_items,
            context.priors,
            context.device,
            context.run_dir,
            teacher,
            progress,
        )

    online = trains_on_pseudo_labels(cfg) and not uses_rounds(cfg)
    return Trainer(cfg, progress=progress, bank_source=refresher if online else None)
