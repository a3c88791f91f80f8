"""The teacher's error type, at the bottom of the teacher layer so that every teacher module can raise it."""

from __future__ import annotations


class TeacherError(RuntimeError):
    """The teacher cannot be built or used as configured; the message says what to do about it."""
