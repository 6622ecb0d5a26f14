"""EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2-02, the framing strongSwan and Windows use)
on top of RFC 2759: the authenticator's method and the peer's.

Inside the EAP type data: OpCode, MS-CHAPv2-ID, MS-Length (the type data's length), then
  Challenge (1): Value-Size 16, Challenge, Name
  Response  (2): Value-Size 49, Peer-Challenge(16) Reserved(8) NT-Response(24) Flags(1), Name
  Success   (3): request "S=<auth string> M=<message>"; the peer's response is the OpCode alone
  Failure   (4): request "E=691 R=0 C=<challenge> V=3 M=<message>"; response the OpCode alone
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives import constant_time

from . import mschap
from .errors import LocalEapError, RemoteEapError
from .packet import Code, EapPacket, EapType

_HEAD = struct.Struct("!BBH")  # OpCode, MS-CHAPv2-ID, MS-Length
_RESPONSE_VALUE_LEN = 49
SERVER_NAME = b"keyd"
SUCCESS_MESSAGE = "Welcome"


class OpCode(IntEnum):
    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


def _frame(code: int, identifier: int, opcode: int, ms_id: int, body: bytes) -> EapPacket:
    data = _HEAD.pack(opcode, ms_id, _HEAD.size + len(body)) + body
    return EapPacket(code, identifier, EapType.MSCHAPV2, data)


def _opcode(packet: EapPacket) -> int:
    if packet.type != EapType.MSCHAPV2 or not packet.data:
        raise RemoteEapError(f"expected EAP-MSCHAPv2, got EAP type {packet.type}",
                             "method refused" if packet.type == EapType.NAK else "bad message")
    return packet.data[0]


def _body(packet: EapPacket) -> tuple[int, bytes]:
    """MS-CHAPv2-ID and the body after the 4-byte head; MS-Length must match."""
    if len(packet.data) < _HEAD.size:
        raise RemoteEapError("EAP-MSCHAPv2 packet is truncated")
    _op, ms_id, ms_len = _HEAD.unpack_from(packet.data)
    if ms_len != len(packet.data):
        raise RemoteEapError(f"EAP-MSCHAPv2 MS-Length {ms_len} but {len(packet.data)} bytes")
    return ms_id, packet.data[_HEAD.size:]


def _text_name(raw: bytes) -> str:
    try:
        name = raw.decode()
    except UnicodeDecodeError as exc:
        raise RemoteEapError("EAP-MSCHAPv2 name is not UTF-8", "unknown user") from exc
    if not name or len(raw) > 253:
        raise RemoteEapError(f"EAP-MSCHAPv2 name of {len(raw)} bytes", "unknown user")
    return name


@dataclass(frozen=True, slots=True)
class Verified:
    """The peer proved its password: send `packet` (the Success request) next."""

    packet: EapPacket
    identity: str


@dataclass(slots=True)
class MschapV2Server:
    """The authenticator's EAP-MSCHAPv2. `challenge` / `ms_id` are fixed by `challenge_request`;
    after `check_response` it holds the identity and MSK until the peer acknowledges."""

    challenge: bytes = b""
    ms_id: int = 0
    identity: str | None = None
    msk: bytes = b""

    def challenge_request(self, identifier: int,
                          random: Callable[[int], bytes] = os.urandom) -> EapPacket:
        self.challenge = random(mschap.CHALLENGE_LEN)
        self.ms_id = identifier
        return _frame(Code.REQUEST, identifier, OpCode.CHALLENGE, self.ms_id,
                      bytes([mschap.CHALLENGE_LEN]) + self.challenge + SERVER_NAME)

    def check_response(self, packet: EapPacket, next_identifier: int,
                       password_for: Callable[[str], str | None]) -> Verified:
        """RFC 2759 §4-5: the Response to our Challenge. Raises RemoteEapError with reason
        "unknown user" or "bad password"."""
        if _opcode(packet) != OpCode.RESPONSE:
            raise RemoteEapError(f"EAP-MSCHAPv2 OpCode {packet.data[0]}, expected Response")
        ms_id, body = _body(packet)
        if ms_id != self.ms_id:
            raise RemoteEapError(f"EAP-MSCHAPv2-ID {ms_id}, expected {self.ms_id}")
        if len(body) < 1 + _RESPONSE_VALUE_LEN or body[0] != _RESPONSE_VALUE_LEN:
            raise RemoteEapError("EAP-MSCHAPv2 Response value is not 49 bytes")
        peer_challenge, nt_response = body[1:17], body[25:49]
        identity = _text_name(body[1 + _RESPONSE_VALUE_LEN:])
        password = password_for(identity)
        if password is None:
            raise RemoteEapError(f"no EAP user {identity!r}", "unknown user")
        password_hash = mschap.nt_password_hash(password)
        username = mschap.username_of(identity)
        expected = mschap.generate_nt_response(self.challenge, peer_challenge, username,
                                               password_hash)
        if not constant_time.bytes_eq(expected, nt_response):
            raise RemoteEapError(f"EAP-MSCHAPv2 wrong password for {identity!r}",
                                 "bad password")
        self.identity = identity
        self.msk = mschap.msk(password_hash, nt_response)
        auth = mschap.authenticator_response(password_hash, nt_response, peer_challenge,
                                             self.challenge, username)
        message = f"{auth} M={SUCCESS_MESSAGE}".encode()
        return Verified(_frame(Code.REQUEST, next_identifier, OpCode.SUCCESS, self.ms_id,
                               message), identity)

    def check_acknowledged(self, packet: EapPacket) -> None:
        """The peer's Success response (the OpCode alone) to our Success request."""
        if _opcode(packet) != OpCode.SUCCESS or not self.msk:
            raise RemoteEapError("expected the EAP-MSCHAPv2 Success response")

    def export(self) -> dict[str, Any]:
        return {"challenge": self.challenge.hex(), "ms_id": self.ms_id,
                "identity": self.identity, "msk": self.msk.hex()}

    @classmethod
    def restore(cls, record: dict[str, Any]) -> MschapV2Server:
        try:
            return cls(bytes.fromhex(record["challenge"]), int(record["ms_id"]),
                       record["identity"], bytes.fromhex(record["msk"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalEapError(f"bad EAP-MSCHAPv2 state: {exc}") from exc


class MschapV2Peer:
    """The peer's EAP-MSCHAPv2 (for tests and keyd's own initiator): answers a Challenge, checks
    the authenticator's Success string, acknowledges it. `msk` once it checked."""

    def __init__(self, identity: str, password: str,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.identity = identity
        self._password_hash = mschap.nt_password_hash(password)
        self._random = random
        self._expected_auth = ""
        self._nt_response = b""
        self.msk = b""
        self.failed = False

    def respond(self, packet: EapPacket) -> EapPacket | None:
        """The response to a Request of type MSCHAPv2, or None after a Failure request (as
        strongSwan and Windows, which do not answer it)."""
        op = _opcode(packet)
        ms_id, body = _body(packet)
        if op == OpCode.CHALLENGE:
            if len(body) < 1 + mschap.CHALLENGE_LEN or body[0] != mschap.CHALLENGE_LEN:
                raise RemoteEapError("EAP-MSCHAPv2 Challenge value is not 16 bytes")
            challenge = body[1:1 + mschap.CHALLENGE_LEN]
            peer_challenge = self._random(mschap.CHALLENGE_LEN)
            username = mschap.username_of(self.identity)
            self._nt_response = mschap.generate_nt_response(challenge, peer_challenge, username,
                                                            self._password_hash)
            self._expected_auth = mschap.authenticator_response(
                self._password_hash, self._nt_response, peer_challenge, challenge, username)
            value = peer_challenge + bytes(8) + self._nt_response + b"\x00"
            return _frame(Code.RESPONSE, packet.identifier, OpCode.RESPONSE, ms_id,
                          bytes([_RESPONSE_VALUE_LEN]) + value + self.identity.encode())
        if op == OpCode.SUCCESS:
            text = body.decode("ascii", "replace")
            auth = text.split(" ", 1)[0]
            if not self._expected_auth or not constant_time.bytes_eq(
                    auth.encode(), self._expected_auth.encode()):
                raise RemoteEapError("the authenticator's MSCHAPv2 Success string is wrong")
            self.msk = mschap.msk(self._password_hash, self._nt_response)
            return EapPacket(Code.RESPONSE, packet.identifier, EapType.MSCHAPV2,
                             bytes([OpCode.SUCCESS]))
        if op == OpCode.FAILURE:
            self.failed = True
            return None
        raise RemoteEapError(f"EAP-MSCHAPv2 OpCode {op} in a request")
