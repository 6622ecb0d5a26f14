"""IKE SA states and the tables that govern them (as h11's _state.py does).

TRANSITIONS: every state change, keyed by (state, what happened); `advance` is the only way
the core changes an IKE SA's state. REQUEST_HANDLERS: which incoming request each state
accepts; a request whose (state, exchange) pair is not there is dropped and counted.
"""

from __future__ import annotations

from enum import StrEnum

from .constants import ExchangeType
from .errors import IkeUsageError


class IkeState(StrEnum):
    INIT_SENT = "init_sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth_sent"  # initiator: IKE_AUTH request out
    HALF_OPEN = "half_open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    WAIT_ADDRESS = "wait_address"  # responder: IKE_AUTH verified, waiting for assign_address
    EAP = "eap"  # responder: an EAP conversation in IKE_AUTH (§2.16), its request sent
    WAIT_RADIUS = "wait_radius"  # responder: an EAP response relayed, waiting for RADIUS
    EAP_DONE = "eap_done"  # responder: EAP succeeded, waiting for the AUTH made with the MSK
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # superseded by a rekeyed IKE SA, waiting for its DELETE (§2.18)
    DELETED = "deleted"


S = IkeState
TRANSITIONS: dict[tuple[IkeState, str], IkeState] = {
    (S.INIT_SENT, "init_answered"): S.AUTH_SENT,
    (S.AUTH_SENT, "auth_answered"): S.ESTABLISHED,
    (S.HALF_OPEN, "address_requested"): S.WAIT_ADDRESS,
    (S.HALF_OPEN, "authenticated"): S.ESTABLISHED,
    (S.WAIT_ADDRESS, "authenticated"): S.ESTABLISHED,
    (S.HALF_OPEN, "eap_requested"): S.EAP,
    (S.HALF_OPEN, "radius_requested"): S.WAIT_RADIUS,
    (S.EAP, "eap_requested"): S.EAP,
    (S.EAP, "radius_requested"): S.WAIT_RADIUS,
    (S.WAIT_RADIUS, "radius_requested"): S.WAIT_RADIUS,  # the next server
    (S.WAIT_RADIUS, "eap_requested"): S.EAP,
    (S.HALF_OPEN, "eap_succeeded"): S.EAP_DONE,
    (S.EAP, "eap_succeeded"): S.EAP_DONE,
    (S.WAIT_RADIUS, "eap_succeeded"): S.EAP_DONE,
    (S.EAP_DONE, "address_requested"): S.WAIT_ADDRESS,
    (S.EAP_DONE, "authenticated"): S.ESTABLISHED,
    (S.ESTABLISHED, "rekeyed"): S.REKEYED,
    **{(state, "deleted"): S.DELETED for state in S},
}

# (state, exchange of an incoming request) -> name of the handler method
REQUEST_HANDLERS: dict[tuple[IkeState, int], str] = {
    (S.HALF_OPEN, ExchangeType.IKE_AUTH): "_on_auth_request",
    (S.EAP, ExchangeType.IKE_AUTH): "_on_eap_request",
    (S.EAP_DONE, ExchangeType.IKE_AUTH): "_on_eap_auth_request",
    (S.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): "_on_create_child_request",
    (S.ESTABLISHED, ExchangeType.INFORMATIONAL): "_on_informational_request",
    (S.REKEYED, ExchangeType.INFORMATIONAL): "_on_informational_request",
}

# states in which we may start an exchange of our own (DELETE, liveness, rekeys)
CAN_REQUEST = frozenset({S.ESTABLISHED, S.REKEYED})


def advance(state: IkeState, what: str) -> IkeState:
    """The state after `what` happened in `state`; anything not in the table is a bug."""
    try:
        return TRANSITIONS[(state, what)]
    except KeyError:
        raise IkeUsageError(f"no transition from {state.value} on {what}") from None
