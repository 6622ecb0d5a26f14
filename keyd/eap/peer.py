"""The peer's side of an EAP conversation: answers EAP-Identity and EAP-MSCHAPv2 (for the
tests, and keyd's own initiator). `respond` takes the authenticator's packet and returns the
answer, or None when there is nothing to answer (Success, Failure, an MSCHAPv2 Failure)."""

from __future__ import annotations

import os
from collections.abc import Callable

from . import packet as eap
from .errors import RemoteEapError
from .mschapv2 import MschapV2Peer
from .packet import Code, EapPacket, EapType, pull_eap, push_eap


class Peer:
    def __init__(self, identity: str, password: str,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.identity = identity
        self._mschapv2 = MschapV2Peer(identity, password, random)
        self.succeeded = False
        self.failed = False

    @property
    def msk(self) -> bytes:
        return self._mschapv2.msk

    def respond(self, data: bytes) -> bytes | None:
        packet = pull_eap(data)
        if packet.code == Code.SUCCESS:
            if not self._mschapv2.msk:
                raise RemoteEapError("EAP-Success before the method succeeded")
            self.succeeded = True
            return None
        if packet.code == Code.FAILURE:
            self.failed = True
            return None
        if packet.code != Code.REQUEST:
            raise RemoteEapError(f"EAP code {packet.code} from the authenticator")
        if packet.type == EapType.IDENTITY:
            return push_eap(eap.identity_response(packet.identifier, self.identity))
        if packet.type == EapType.MSCHAPV2:
            answer = self._mschapv2.respond(packet)
            if answer is None:
                self.failed = True
                return None
            return push_eap(answer)
        # RFC 3748 §5.3.1: a Nak naming the method we do
        return push_eap(EapPacket(Code.RESPONSE, packet.identifier, EapType.NAK,
                                  bytes([EapType.MSCHAPV2])))
