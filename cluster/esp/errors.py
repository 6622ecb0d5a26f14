"""Why an ESP packet was dropped, and the two error directions of the ESP core.

As in h11: `EspProtocolError` means the peer (or the network) sent something we must not
accept; it carries a `DropReason` and is turned into a counted drop at the edge of the core
(`ChildSa.open`, `SaTable.receive`) — never a traceback. `EspUsageError` means the caller
asked for something the SA cannot do (send past the sequence space, install bad keys).
"""

from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    """Every reason the data plane drops a packet; the metric label of its counter."""

    REPLAY = "replay"  # RFC 4303 §3.4.3: sequence number already seen inside the window
    TOO_OLD = "too_old"  # RFC 4303 §3.4.3: sequence number left of the window
    INTEGRITY = "integrity"  # ICV / AEAD tag did not verify
    MALFORMED = "malformed"  # truncated, misaligned, bad next header, bad inner packet
    BAD_PADDING = "bad_padding"  # RFC 4303 §2.4: padding bytes are not 1, 2, 3, ...
    UNKNOWN_SPI = "unknown_spi"  # no SA for this SPI
    SELECTOR = "selector"  # inner source outside the SA's traffic selectors (spoofing)
    DUMMY = "dummy"  # RFC 4303 §2.6: next header 59, discarded silently (counted)
    NOT_OWNER = "not_owner"  # outbound: this node does not own the client (fenced)
    CHECKPOINT_LAG = "checkpoint_lag"  # outbound: the send limit waits for a checkpoint
    EXHAUSTED = "exhausted"  # outbound: sequence or IV space used up; the SA needs a rekey


class EspProtocolError(Exception):
    """The peer sent something unacceptable; `reason` says what, for the drop counter."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


class EspUsageError(Exception):
    """The caller misused the ESP core (bad keys, sending past the sequence space, ...)."""
