"""Training methods: what one iteration computes from a labeled and an unlabeled batch.

One module per method; each method's settings are its section of ``method`` in the config
(:mod:`semisam.config.schema`). The trainer (:mod:`semisam.engine.trainer`) owns everything else (optimiser step,
EMA update, views, logging, checkpoints) and reads what a method needs from its declaration
(:mod:`semisam.methods.base`). A new method: a module here, its config dataclass and name in the schema, and
one line in :data:`METHOD_REGISTRY` (whose keys are the schema's ``METHOD_NAMES``).

======================  ==================================================================================
``supervised``          Dice + CE on the labeled batch (:class:`~semisam.methods.base.Method`)
``mean_teacher``        + consistency towards the EMA model (:mod:`semisam.methods.mean_teacher`)
``unimatch``            weak-to-strong pseudo-labels, CutMix, feature perturbation; FixMatch as a switch
``bcp``                 bidirectional copy-paste between labeled and unlabeled images
``semisam_rounds``      a self-training round: the teacher's rectified pseudo-labels of the selected images on
                        a backbone (supervised, unimatch, bcp; :mod:`semisam.methods.semisam`)
``semisam_online``      the teacher's pseudo-labels refreshed during one run of a backbone (mean_teacher,
                        unimatch, bcp)
======================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Callable

from semisam.config.schema import RunConfig
from semisam.methods.base import Method, StepOutput
from semisam.methods.bcp import BCP
from semisam.methods.mean_teacher import MeanTeacher
from semisam.methods.semisam import SemiSAM, SemiSAMRound, TeacherLabels, build_semisam
from semisam.methods.unimatch import UniMatch

METHOD_REGISTRY: dict[str, Callable[[RunConfig], Method]] = {
    "supervised": Method,
    "mean_teacher": MeanTeacher,
    "unimatch": UniMatch,
    "bcp": BCP,
    "semisam_rounds": build_semisam,
    "semisam_online": build_semisam,
}


def build_method(cfg: RunConfig) -> Method:
    """The method named by ``cfg.method.name``."""
    try:
        factory = METHOD_REGISTRY[cfg.method.name]
    except KeyError:
        raise ValueError(f"method.name={cfg.method.name!r} is not one of {sorted(METHOD_REGISTRY)}") from None
    return factory(cfg)


__all__ = [
    "BCP",
    "METHOD_REGISTRY",
    "MeanTeacher",
    "Method",
    "SemiSAM",
    "SemiSAMRound",
    "StepOutput",
    "TeacherLabels",
    "UniMatch",
    "build_method",
]
