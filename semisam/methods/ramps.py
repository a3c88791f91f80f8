"""Ramp-up schedules for loss weights (Laine & Aila 2017, as used by SSL4MIS)."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(current / length, 0, 1)``; 1.0 when ``length`` is 0.

    Rises from exp(-5) ~= 0.0067 at ``current = 0`` to 1.0 at ``current >= length`` (SSL4MIS's
    ``ramps.sigmoid_rampup``). ``length`` must be >= 0.
    """
    if length < 0:
        raise ValueError(f"ramp length {length} must be >= 0")
    if length == 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight(iteration: float, total_iterations: float, final_weight: float, rampup_fraction: float) -> float:
    """Weight of the consistency term at ``iteration``: ``final_weight * sigmoid_rampup(iteration, L)``.

    The ramp lasts ``L = rampup_fraction * total_iterations`` iterations, after which the weight stays at
    ``final_weight``. SSL4MIS ramps over the whole 30k-iteration run (``rampup_fraction = 1``) in steps of 150
    iterations; here the ramp is continuous in the iteration.
    """
    if total_iterations <= 0:
        raise ValueError(f"total_iterations={total_iterations} must be > 0")
    if not 0 <= rampup_fraction <= 1:
        raise ValueError(f"rampup_fraction={rampup_fraction} must be in [0, 1]")
    return final_weight * sigmoid_rampup(iteration, rampup_fraction * total_iterations)
