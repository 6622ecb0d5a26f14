"""The two error directions of the EAP core (as in keyd/ike).

`RemoteEapError`: the peer (or a RADIUS server) sent something wrong; the conversation fails
with `reason`, which is what the counters and the log say. `LocalEapError`: the caller misused
the API (a message in the wrong state, a state record that does not restore).
"""

from __future__ import annotations


class EapError(Exception):
    """Base class of every error the EAP core raises."""


class RemoteEapError(EapError):
    """The peer misbehaved; `reason` is the failure's counter name."""

    def __init__(self, message: str, reason: str = "bad message") -> None:
        super().__init__(message)
        self.reason = reason


class LocalEapError(EapError):
    """The caller misused the core (wrong state, bad state record, bad configuration)."""
