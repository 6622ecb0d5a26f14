"""EAP relayed to RADIUS (RFC 3579 §2, as strongSwan's eap-radius does it): each EAP response
of the peer goes to the RADIUS server in an Access-Request (User-Name, State, NAS attributes,
EAP-Message, Message-Authenticator); an Access-Challenge carries the next EAP request back,
Access-Accept ends with the MSK from MS-MPPE-Recv-Key | MS-MPPE-Send-Key (strongSwan's
radius_socket decrypt_msk: zero-padded to 64 bytes) and an optional Framed-IP-Address,
Access-Reject ends in failure.

The relay builds and checks datagrams; the caller sends them (`SendToRadius`), resends the
same bytes on its retransmissions, and calls `timeout()` when it gave up on a server: the
relay then re-addresses the request to the next server, or fails with "radius timeout".
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import radius
from .errors import LocalEapError, RemoteEapError
from .events import EapAction, EapFailed, EapSucceeded, SendToPeer, SendToRadius
from .packet import Code, failure, pull_eap, push_eap, success
from .radius import Attr, RadiusCode

MSK_LEN = 64


@dataclass(frozen=True, slots=True)
class RadiusServer:
    """One RADIUS server: where it listens and the secret it shares with keyd."""

    host: str
    port: int = 1812
    secret: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class NasInfo:
    """What the Access-Request says about the NAS and the client (RFC 2865 §5; RFC 3579 §3
    for Called/Calling-Station-Id with IKE)."""

    nas_identifier: str = "keyd"
    nas_ip: str | None = None
    called_station: str | None = None  # the gateway's address
    calling_station: str | None = None  # the client's address


class RadiusRelay:
    def __init__(self, servers: Sequence[RadiusServer], nas: NasInfo = NasInfo(),
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if not servers:
            raise LocalEapError("EAP-RADIUS needs at least one RADIUS server")
        self.servers = tuple(servers)
        self.nas = nas
        self._random = random
        self.server = 0
        self.identifier = random(1)[0]
        self.user_name = ""
        self.state: bytes | None = None
        self.eap = b""  # the EAP response in flight
        self.request_authenticator = b""

    # -- inputs
    def start(self, identity: str, eap_response: bytes) -> SendToRadius:
        self.user_name = identity
        return self.forward(eap_response)

    def forward(self, eap_response: bytes) -> SendToRadius:
        self.eap = eap_response
        self.identifier = (self.identifier + 1) & 0xFF
        return self._request()

    def reply(self, datagram: bytes) -> EapAction:
        """The server's answer. Raises `radius.InvalidRadiusPacket` for one that does not
        verify (drop it and keep waiting), RemoteEapError for a verified one that is wrong."""
        secret = self.servers[self.server].secret
        packet = radius.verify_response(datagram, self.identifier, self.request_authenticator,
                                        secret)
        self.state = packet.first(Attr.STATE)
        eap = packet.eap_message()
        if packet.code == RadiusCode.ACCESS_CHALLENGE:
            if eap is None:
                raise RemoteEapError("Access-Challenge without EAP-Message", "radius error")
            request = pull_eap(eap)
            if request.code != Code.REQUEST:
                raise RemoteEapError("Access-Challenge does not carry an EAP request",
                                     "radius error")
            return SendToPeer(eap)
        if packet.code == RadiusCode.ACCESS_REJECT:
            return EapFailed(self._end_packet(eap, Code.FAILURE), self.user_name,
                             "radius reject")
        recv = radius.mppe_key(packet, radius.MS_MPPE_RECV_KEY, self.request_authenticator,
                               secret)
        send = radius.mppe_key(packet, radius.MS_MPPE_SEND_KEY, self.request_authenticator,
                               secret)
        if recv is None or send is None:
            raise RemoteEapError("Access-Accept without MS-MPPE keys", "radius no key")
        msk = recv + send
        msk += bytes(max(0, MSK_LEN - len(msk)))
        user = packet.first(Attr.USER_NAME)
        identity = user.decode("utf-8", "replace") if user else self.user_name
        return EapSucceeded(self._end_packet(eap, Code.SUCCESS), identity, msk,
                            radius.framed_ip(packet))

    def timeout(self) -> EapAction:
        """The current server did not answer: the next one, or the end."""
        if self.server + 1 >= len(self.servers):
            return EapFailed(push_eap(failure(self._eap_identifier())), self.user_name,
                             "radius timeout")
        self.server += 1
        self.state = None  # a State belongs to the server that sent it
        return self._request()

    # -- building
    def _request(self) -> SendToRadius:
        self.request_authenticator = self._random(16)
        attrs: list[tuple[int, bytes]] = [(Attr.USER_NAME, self.user_name.encode())]
        nas = self.nas
        attrs.append((Attr.NAS_IDENTIFIER, nas.nas_identifier.encode()))
        if nas.nas_ip is not None:
            attrs.append((Attr.NAS_IP_ADDRESS, ipaddress.IPv4Address(nas.nas_ip).packed))
        attrs.append((Attr.SERVICE_TYPE, radius.SERVICE_FRAMED.to_bytes(4, "big")))
        attrs.append((Attr.NAS_PORT_TYPE, radius.NAS_PORT_VIRTUAL.to_bytes(4, "big")))
        if nas.called_station:
            attrs.append((Attr.CALLED_STATION_ID, nas.called_station.encode()))
        if nas.calling_station:
            attrs.append((Attr.CALLING_STATION_ID, nas.calling_station.encode()))
        attrs += radius.eap_attributes(self.eap)
        if self.state is not None:
            attrs.append((Attr.STATE, self.state))
        datagram = radius.push_request(self.identifier, self.request_authenticator, attrs,
                                       self.servers[self.server].secret)
        return SendToRadius(datagram, self.server, self.identifier)

    def _end_packet(self, eap: bytes | None, code: int) -> bytes:
        """The EAP-Success/Failure the server sent, or ours if it sent none."""
        if eap is not None and pull_eap(eap).code == code:
            return eap
        ident = self._eap_identifier()
        return push_eap(failure(ident) if code == Code.FAILURE else success(ident))

    def _eap_identifier(self) -> int:
        """RFC 3748 §4.2: a Success/Failure has the Identifier of the Response it answers."""
        return self.eap[1] if len(self.eap) > 1 else 0

    # -- state (the servers and their secrets come from the configuration, not the record)
    def export(self) -> dict[str, Any]:
        return {"server": self.server, "identifier": self.identifier,
                "user_name": self.user_name,
                "state": None if self.state is None else self.state.hex(),
                "eap": self.eap.hex(), "request_authenticator": self.request_authenticator.hex()}

    def restore(self, record: dict[str, Any]) -> RadiusRelay:
        try:
            server = int(record["server"])
            if not 0 <= server < len(self.servers):
                raise LocalEapError(f"RADIUS server {server} is not configured")
            self.server = server
            self.identifier = int(record["identifier"]) & 0xFF
            self.user_name = str(record["user_name"])
            self.state = None if record["state"] is None else bytes.fromhex(record["state"])
            self.eap = bytes.fromhex(record["eap"])
            self.request_authenticator = bytes.fromhex(record["request_authenticator"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalEapError(f"bad EAP-RADIUS state: {exc}") from exc
        return self
