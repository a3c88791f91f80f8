"""The one error type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used as it is: a missing, unreadable or inconsistent file, or a bad id list.

    Every message names the file (or the id-list file and its key, or the config key) and states the problem,
    so that the user can fix the data without reading the code.
    """
