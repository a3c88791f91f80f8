"""The frozen SAM teacher: checkpoints, architectures, the batched engine, the embedding cache, the everything mode
and the SAMAug prior maps. The pseudo-label method built on it lives in :mod:`semisam.pseudolabel`.

Public API (re-exported here, imported lazily so that ``import semisam.teacher.cache`` stays light and does not
pull in segment-anything / torchvision):

- :class:`SamTeacher`, :func:`build_teacher`, :class:`DecodeResult`, :func:`teacher_dtype` (``engine``)
- :class:`TeacherSpec`, :data:`SPECS`, :func:`get_spec`, :func:`build_sam`, :func:`build_tiny_sam`,
  :func:`tiny_spec` (``models``)
- :func:`resolve_checkpoint`, :func:`sha256_file`, :func:`download_checkpoint`, :data:`SAM_CHECKPOINTS`,
  :class:`OfficialCheckpoint` (``checkpoints``)
- :class:`TeacherError` (``errors``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SamTeacher": "engine",
    "build_teacher": "engine",
    "DecodeResult": "engine",
    "teacher_dtype": "engine",
    "TeacherSpec": "models",
    "SPECS": "models",
    "get_spec": "models",
    "build_sam": "models",
    "build_tiny_sam": "models",
    "tiny_spec": "models",
    "resolve_checkpoint": "checkpoints",
    "sha256_file": "checkpoints",
    "download_checkpoint": "checkpoints",
    "SAM_CHECKPOINTS": "checkpoints",
    "OfficialCheckpoint": "checkpoints",
    "TeacherError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
