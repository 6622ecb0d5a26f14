"""IKE SA states and the one table of which request each state accepts (as h11's _state.py).

A request whose (state, exchange) pair is not in REQUEST_HANDLERS is dropped and counted.
"""

from __future__ import annotations

from enum import StrEnum

from .constants import ExchangeType


class IkeState(StrEnum):
    INIT_SENT = "init_sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth_sent"  # initiator: IKE_AUTH request out
    HALF_OPEN = "half_open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    WAIT_ADDRESS = "wait_address"  # responder: IKE_AUTH verified, waiting for assign_address
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # superseded by a rekeyed IKE SA, waiting for its DELETE (§2.18)
    DELETED = "deleted"


# (state, exchange of an incoming request) -> name of the handler method
REQUEST_HANDLERS: dict[tuple[IkeState, int], str] = {
    (IkeState.HALF_OPEN, ExchangeType.IKE_AUTH): "_on_auth_request",
    (IkeState.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): "_on_create_child_request",
    (IkeState.ESTABLISHED, ExchangeType.INFORMATIONAL): "_on_informational_request",
    (IkeState.REKEYED, ExchangeType.INFORMATIONAL): "_on_informational_request",
}

# states in which we may start an exchange of our own (DELETE, liveness, rekeys)
CAN_REQUEST = frozenset({IkeState.ESTABLISHED, IkeState.REKEYED})
