"""The data layer's error type."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or a bad data request.

    The message names the file (or config field), the line or column when known, and the
    offending value. Raised before any output is written.
    """
