"""The one error the lab raises: something an operator can read in one line."""

from __future__ import annotations


class LabError(Exception):
    """A lab operation failed; the message says what and, where it helps, what to do."""
