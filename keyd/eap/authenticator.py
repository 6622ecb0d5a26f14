"""The authenticator's side of one EAP conversation (RFC 3748 §2): an optional EAP-Identity
round, then the method — EAP-MSCHAPv2 against `password_for`, or everything relayed to RADIUS.

Inputs: `start()`, `receive(packet)` (the peer's EAP response), `radius_reply(datagram)` and
`radius_timeout()`; each returns the one `EapAction` to carry out. Errors of the peer or the
RADIUS server end the conversation with `EapFailed(reason)`; they never escape. The whole state
is `export()`-able to JSON-able data and `restore()`s in another process mid-conversation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import packet as eap
from .errors import LocalEapError, RemoteEapError
from .events import EapAction, EapFailed, EapSucceeded, SendToPeer, SendToRadius
from .mschapv2 import MschapV2Server
from .packet import Code, EapPacket, pull_eap, push_eap
from .radius import InvalidRadiusPacket
from .relay import RadiusRelay

METHODS = ("mschapv2", "radius")
PasswordLookup = Callable[[str], "str | None"]

# phase: what the authenticator waits for
_NEW, _IDENTITY, _CHALLENGE, _ACK, _RADIUS_PEER, _RADIUS_SERVER, _DONE = (
    "new", "identity", "challenge", "ack", "radius-peer", "radius-server", "done")


class Authenticator:
    """One EAP conversation. `identity`: the EAP identity when it is already known (the IKE
    IDi); None asks the peer with EAP-Identity first (strongSwan's `eap_id = %any`)."""

    def __init__(self, method: str, *, identity: str | None = None,
                 password_for: PasswordLookup | None = None,
                 relay: RadiusRelay | None = None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if method not in METHODS:
            raise LocalEapError(f"unknown EAP method {method!r}")
        if method == "mschapv2" and password_for is None:
            raise LocalEapError("EAP-MSCHAPv2 needs a password lookup")
        if method == "radius" and relay is None:
            raise LocalEapError("EAP-RADIUS needs a relay")
        self.method = method
        self.identity = identity
        self.phase = _NEW
        self.identifier = random(1)[0]
        self._password_for = password_for
        self._relay = relay
        self._random = random
        self._mschapv2 = MschapV2Server()

    # -- inputs
    def start(self) -> EapAction:
        if self.phase != _NEW:
            raise LocalEapError(f"EAP conversation already started ({self.phase})")
        if self.identity is None:
            self.phase = _IDENTITY
            return self._request(eap.identity_request(self.identifier))
        return self._begin_method()

    def receive(self, data: bytes) -> EapAction:
        """The peer's EAP packet (the EAP payload of its IKE_AUTH request)."""
        try:
            return self._receive(pull_eap(data))
        except RemoteEapError as exc:
            return self._fail(exc.reason)

    def radius_reply(self, datagram: bytes) -> EapAction | None:
        """The RADIUS server's answer; None when it does not verify (a stray or forged
        datagram: dropped, keep waiting for the real one)."""
        if self.phase != _RADIUS_SERVER:
            raise LocalEapError(f"no RADIUS request outstanding ({self.phase})")
        try:
            action = self._relay_().reply(datagram)
        except InvalidRadiusPacket:
            return None
        except RemoteEapError as exc:
            return self._fail(exc.reason)
        return self._after_relay(action)

    def radius_timeout(self) -> EapAction:
        if self.phase != _RADIUS_SERVER:
            raise LocalEapError(f"no RADIUS request outstanding ({self.phase})")
        return self._after_relay(self._relay_().timeout())

    @property
    def done(self) -> bool:
        return self.phase == _DONE

    # -- steps
    def _receive(self, packet: EapPacket) -> EapAction:
        if self.phase in (_NEW, _DONE, _RADIUS_SERVER):
            raise LocalEapError(f"EAP response while {self.phase}")
        if packet.code != Code.RESPONSE:
            raise RemoteEapError(f"EAP code {packet.code} from the peer")
        if packet.identifier != self.identifier:
            raise RemoteEapError(f"EAP identifier {packet.identifier}, expected "
                                 f"{self.identifier}")
        if self.phase == _IDENTITY:
            self.identity = eap.read_identity(packet)
            self._next_identifier()
            return self._begin_method(first_response=push_eap(packet))
        if self.phase == _RADIUS_PEER:
            self.phase = _RADIUS_SERVER
            return self._relay_().forward(push_eap(packet))
        if self.phase == _CHALLENGE:
            verified = self._mschapv2.check_response(packet, self._next_identifier(),
                                                     self._password_for)  # type: ignore[arg-type]
            self.identity = verified.identity
            self.phase = _ACK
            return SendToPeer(push_eap(verified.packet))
        # _ACK
        self._mschapv2.check_acknowledged(packet)
        self.phase = _DONE
        # RFC 3748 §4.2: Success and Failure carry the Identifier of the Response they answer
        return EapSucceeded(push_eap(eap.success(self.identifier)),
                            self._mschapv2.identity or "", self._mschapv2.msk)

    def _begin_method(self, first_response: bytes | None = None) -> EapAction:
        assert self.identity is not None
        if self.method == "mschapv2":
            self.phase = _CHALLENGE
            return self._request(self._mschapv2.challenge_request(self.identifier,
                                                                  self._random))
        self.phase = _RADIUS_SERVER
        if first_response is None:  # identity known: the Response/Identity the peer skipped
            first_response = push_eap(eap.identity_response(self.identifier, self.identity))
        return self._relay_().start(self.identity, first_response)

    def _after_relay(self, action: EapAction) -> EapAction:
        """What the relay made of the server's answer: a request for the peer (a Challenge),
        or the end."""
        if isinstance(action, SendToPeer):
            self.identifier = pull_eap(action.packet).identifier
            self.phase = _RADIUS_PEER
        elif isinstance(action, EapSucceeded | EapFailed):
            self.phase = _DONE
        elif not isinstance(action, SendToRadius):
            raise LocalEapError(f"relay action {action!r}")
        return action

    def _relay_(self) -> RadiusRelay:
        assert self._relay is not None  # the constructor checked
        return self._relay

    def _request(self, packet: EapPacket) -> SendToPeer:
        return SendToPeer(push_eap(packet))

    def _next_identifier(self) -> int:
        self.identifier = (self.identifier + 1) & 0xFF
        return self.identifier

    def _fail(self, reason: str) -> EapFailed:
        self.phase = _DONE
        return EapFailed(push_eap(eap.failure(self.identifier)), self.identity,
                         reason)

    # -- state
    def export(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.method, "identity": self.identity,
                                  "phase": self.phase, "identifier": self.identifier}
        if self.method == "mschapv2":
            record["mschapv2"] = self._mschapv2.export()
        else:
            record["relay"] = self._relay_().export()
        return record

    @classmethod
    def restore(cls, record: dict[str, Any], *, password_for: PasswordLookup | None = None,
                relay: RadiusRelay | None = None,
                random: Callable[[int], bytes] = os.urandom) -> Authenticator:
        """Continue a conversation `export()` wrote (in this process or another one).
        `relay`: a new relay built from the configuration (servers, secrets) for an
        EAP-RADIUS record; it takes the rest from the record."""
        try:
            method = record["method"]
            if method == "radius":
                if relay is None:
                    raise LocalEapError("EAP-RADIUS state without a relay")
                relay.restore(record["relay"])
            self = cls(method, identity=record["identity"], password_for=password_for,
                       relay=relay, random=random)
            phase = record["phase"]
            if phase not in (_NEW, _IDENTITY, _CHALLENGE, _ACK, _RADIUS_PEER, _RADIUS_SERVER,
                             _DONE):
                raise LocalEapError(f"unknown EAP phase {phase!r}")
            self.phase = phase
            self.identifier = int(record["identifier"]) & 0xFF
            if method == "mschapv2":
                self._mschapv2 = MschapV2Server.restore(record["mschapv2"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalEapError(f"bad EAP state record: {exc}") from exc
        return self
