"""The two error directions of the IKE core (h11's RemoteProtocolError and LocalProtocolError).

`IkeProtocolError`: the peer sent something wrong; it carries the notify type the core
answers with (or None where the RFC says to stay silent). It is caught at the edge of the
core and becomes a protocol answer plus a counter.

`IkeUsageError`: the caller misused the API (unknown IKE SA, wrong state, bad config).
"""

from __future__ import annotations


class IkeError(Exception):
    """Base class of every error the IKE core raises."""


class IkeProtocolError(IkeError):
    """The peer misbehaved. `notify` is the IKE notify type to answer with, or None (silence)."""

    def __init__(self, message: str, notify: int | None = None, data: bytes = b"") -> None:
        super().__init__(message)
        self.notify = notify
        self.data = data  # Notification Data of the answer (§3.10.1)


class InvalidKePayload(IkeProtocolError):
    """A proposal matched with another DH group than the KE payload's (RFC 7296 §1.3, §3.10.1):
    answer INVALID_KE_PAYLOAD naming `group`, the one we want."""

    def __init__(self, group: int) -> None:
        super().__init__(f"KE payload is not of the selected group {group}", 17,
                         group.to_bytes(2, "big"))
        self.group = group


class AuthenticationError(IkeProtocolError):
    """IKE_AUTH refused (answered with AUTHENTICATION_FAILED). `cause` says which way, for
    the counter: `no_matching_connection`, `unknown_identity`, `psk_mismatch`,
    `certificate_invalid`, `eap_unavailable`, `malformed_request`."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message, 24)   # AUTHENTICATION_FAILED
        self.cause = cause


class IkeUsageError(IkeError):
    """The caller misused the core (unknown IKE SA, bad configuration, wrong state)."""
