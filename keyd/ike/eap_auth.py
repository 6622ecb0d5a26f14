"""The EAP round of IKE_AUTH (RFC 7296 §2.16), responder side: a mixin of `Responder`.

  client: HDR, SK {IDi, [CERTREQ,] [IDr,] SAi2, TSi, TSr, [CP]}     (no AUTH: EAP wanted)
  keyd:   HDR, SK {IDr, [CERT,] AUTH, EAP(request)}                 state EAP
  client: HDR, SK {EAP(response)}      keyd: HDR, SK {EAP(request)}  … as often as needed
  keyd:   HDR, SK {EAP(success)}                                    state EAP_DONE
  client: HDR, SK {AUTH(MSK)}          keyd: HDR, SK {AUTH(MSK), [CP,] SAr2, TSi, TSr}

The conversation itself is keyd.eap's `Authenticator`. Its state, the payloads of the first
request that the last one is answered from (IDi, SAi2, TSi, TSr, CP, INITIAL_CONTACT) and the
MSK live in `IkeSa.eap` (exported with the IKE SA, sealed at rest), as of the last answer, so
another keyd continues the conversation. An EAP response relayed to RADIUS leaves the IKE SA
in WAIT_RADIUS and emits `RadiusRequested`; the shell does the I/O and calls `radius_answer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keyd.eap import (
    Authenticator,
    EapAction,
    EapFailed,
    EapSucceeded,
    LocalEapError,
    NasInfo,
    RadiusRelay,
    SendToPeer,
    SendToRadius,
)

from .auth import psk_auth, signed_octets, verify_psk
from .buffer import Buffer
from .config import EapConfig, ResponderConfig
from .connections import Connection, LocalAuth
from .constants import AuthMethod, Notify
from .core import IkeEndpoint
from .datagram import RequestContext
from .errors import IkeProtocolError, IkeUsageError
from .events import RadiusRequested
from .identity import Identity, identity_text
from .ikesa import IkeSa
from .message import pull_payloads, push_payloads
from .payloads import (
    AuthPayload,
    CpPayload,
    EapPayload,
    IdiPayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
    find,
)
from .state import IkeState, advance

_KEPT = (IdiPayload, SaPayload, TsiPayload, TsrPayload, CpPayload)
_METHOD = {"eap-mschapv2": "mschapv2", "eap-radius": "radius"}


@dataclass(slots=True)
class _RadiusWait:
    """An EAP response out at RADIUS: the conversation in flight and where to answer."""

    auth: Authenticator
    ctx: RequestContext
    first: bool  # the answer is the first IKE_AUTH response (IDr, CERT, AUTH go with it)


def _pack(payloads: Sequence[Payload]) -> str:
    buf = Buffer()
    push_payloads(buf, payloads)
    first = payloads[0].payload_type if payloads else 0
    return f"{first:02x}" + buf.data().hex()


def _unpack(text: str) -> list[Payload]:
    raw = bytes.fromhex(text)
    payloads, _sk = pull_payloads(Buffer(raw[1:]), raw[0])
    return payloads


class EapRound(IkeEndpoint):
    """The EAP round of the responder; `Responder` derives from it and provides its own
    proof, the refusal and what follows a successful authentication."""

    config: ResponderConfig
    _my_id: Identity
    _radius_waiting: dict[str, _RadiusWait]

    def _own_auth(self, sa: IkeSa, local_auth: LocalAuth, psk: bytes | None) -> list[Payload]:
        raise NotImplementedError

    def _refuse(self, sa: IkeSa, ctx: RequestContext, name: str, cause: str, reason: str,
                conn: Connection | None, answer: list[Payload] | None = None) -> None:
        raise NotImplementedError

    def _authenticated(self, sa: IkeSa, identity: str, payloads: list[Payload],
                       ctx: RequestContext, address: str | None, now: float,
                       psk: bytes | None = None) -> list[Payload] | None:
        raise NotImplementedError

    def eap_config(self, sa: IkeSa) -> EapConfig | None:
        """The EAP round the IKE SA's connection asks of its client (None: none)."""
        raise NotImplementedError

    # -- API --------------------------------------------------------------------------------
    def radius_answer(self, ike_sa_id: str, datagram: bytes | None,
                      now: float) -> bool:
        """Answer a RadiusRequested: the server's reply, or None when every try of it timed
        out. False: the datagram did not verify (not from the server, or not the answer to
        this request) and was dropped: the IKE SA still waits."""
        wait = self._radius_waiting.get(ike_sa_id)
        sa = self._sas.get(ike_sa_id)
        if wait is None or sa is None or sa.state != IkeState.WAIT_RADIUS:
            raise IkeUsageError(f"IKE SA {ike_sa_id} is not waiting for RADIUS")
        action = wait.auth.radius_timeout() if datagram is None \
            else wait.auth.radius_reply(datagram)
        if action is None:
            return False
        del self._radius_waiting[ike_sa_id]
        reply = self._eap_step(sa, wait.auth, action, wait.ctx, wait.first, now)
        if reply is not None:
            self._respond(sa, wait.ctx, reply)
        return True

    # -- the rounds ---------------------------------------------------------------------------
    def _start_eap(self, sa: IkeSa, eap: EapConfig, peer_id: Identity,
                   payloads: list[Payload], ctx: RequestContext,
                   now: float) -> list[Payload] | None:
        kept = [p for p in payloads if isinstance(p, _KEPT) or (
            isinstance(p, NotifyPayload) and p.type == Notify.INITIAL_CONTACT)]
        sa.eap = {"request": _pack(kept), "auth": None, "msk": "", "identity": None,
                  "virtual_ip": None}
        identity = None if eap.ask_identity else identity_text(peer_id)
        auth = self._authenticator(sa, eap, identity)
        return self._eap_step(sa, auth, auth.start(), ctx, True, now)

    def _on_eap_request(self, sa: IkeSa, payloads: list[Payload],
                        ctx: RequestContext, now: float) -> list[Payload] | None:
        eap_config = self.eap_config(sa)
        assert sa.eap is not None
        eap = find(payloads, EapPayload)
        try:
            if eap_config is None:
                raise IkeUsageError("EAP is not configured here")
            auth = self._authenticator(sa, eap_config, None, sa.eap["auth"])
        except IkeUsageError as exc:  # a record this keyd cannot continue
            self._eap_refused(sa, ctx, sa.eap.get("identity"), f"bad state: {exc}")
            return None
        if eap is None:
            self._eap_refused(sa, ctx, auth.identity, "no EAP payload")
            return None
        return self._eap_step(sa, auth, auth.receive(eap.data), ctx, False, now)

    def _on_eap_auth_request(self, sa: IkeSa, payloads: list[Payload],
                             ctx: RequestContext, now: float) -> list[Payload] | None:
        """§2.16: the client's AUTH, made with the MSK as the shared key."""
        assert sa.eap is not None
        kept = _unpack(sa.eap["request"])
        idi = find(kept, IdiPayload)
        auth = find(payloads, AuthPayload)
        identity = str(sa.eap["identity"])
        assert idi is not None
        peer_id = Identity(idi.id_type, idi.data)
        try:
            if not isinstance(auth, AuthPayload) or auth.method != AuthMethod.PSK:
                raise IkeProtocolError("no AUTH made with the MSK",
                                          Notify.AUTHENTICATION_FAILED)
            octets = signed_octets(sa.init_request, sa.nr, sa.suite.prf, sa.keys.sk_pi,
                                   peer_id)
            verify_psk(sa.suite.prf, bytes.fromhex(sa.eap["msk"]), octets, auth.data)
        except IkeProtocolError as e:
            self._eap_refused(sa, ctx, identity, f"bad auth: {e}", eap_packet=None)
            return None
        framed = sa.eap.get("virtual_ip")
        return self._authenticated(sa, identity, kept, ctx, framed, now)

    def _eap_step(self, sa: IkeSa, auth: Authenticator, action: EapAction,
                  ctx: RequestContext, first: bool, now: float) -> list[Payload] | None:
        """Carry out what the conversation asks for: the IKE_AUTH answer, or None (waiting
        for RADIUS, or refused and answered already). Each round gives the client another
        `half_open_timeout_s` for its next message (an IKE SA not yet authenticated expires
        like a half-open one)."""
        assert sa.eap is not None
        sa.expires_at = now + self.config.half_open_timeout_s
        self._schedule(sa)
        if isinstance(action, SendToRadius):
            sa.state = advance(sa.state, "radius_requested")
            self._radius_waiting[sa.id] = _RadiusWait(auth, ctx, first)
            self._events.append(RadiusRequested(sa.id, action.datagram, action.server,
                                                action.identifier))
            return None
        if isinstance(action, SendToPeer | EapSucceeded):
            # EAP connections prove keyd by certificate (connections.py: local psk needs
            # remote psk)
            reply = self._own_auth(sa, LocalAuth.PUBKEY, None) if first else []
            sa.eap["auth"] = auth.export()
            if isinstance(action, EapSucceeded):
                sa.state = advance(sa.state, "eap_succeeded")
                sa.eap.update(msk=action.msk.hex(), identity=action.identity,
                              virtual_ip=action.virtual_ip)
            else:
                sa.state = advance(sa.state, "eap_requested")
            return [*reply, EapPayload(action.packet)]
        assert isinstance(action, EapFailed)
        self._eap_refused(sa, ctx, action.identity, action.reason, action.packet)
        return None

    def _eap_refused(self, sa: IkeSa, ctx: RequestContext, identity: str | None,
                     reason: str, eap_packet: bytes | None = b"") -> None:
        """EAP-Failure (when there is one to send) and AUTHENTICATION_FAILED; the IKE SA is
        gone before the answer leaves. Counted by reason."""
        kind = reason.split(":", 1)[0]
        self.counters.eap_failures[kind] += 1
        answer: list[Payload] = [EapPayload(eap_packet)] if eap_packet else []
        self._refuse(sa, ctx, identity or "", "eap_" + kind.replace(" ", "_"), f"EAP: {reason}",
                     None, answer)

    # -- helpers ------------------------------------------------------------------------------
    def _authenticator(self, sa: IkeSa, eap: EapConfig, identity: str | None,
                       record: dict[str, Any] | None = None) -> Authenticator:
        relay = None
        if eap.method == "eap-radius":
            relay = RadiusRelay(eap.radius_servers, NasInfo(
                nas_identifier=eap.nas_identifier, called_station=sa.local[0],
                calling_station=f"{sa.peer[0]}[{sa.peer[1]}]"), self._random)
        try:
            if record is not None:
                return Authenticator.restore(record, password_for=eap.password_for,
                                             relay=relay, random=self._random)
            return Authenticator(_METHOD[eap.method], identity=identity,
                                 password_for=eap.password_for, relay=relay,
                                 random=self._random)
        except LocalEapError as exc:
            raise IkeUsageError(f"EAP state of {sa.id}: {exc}") from exc

    def _eap_final_proof(self, sa: IkeSa) -> list[Payload]:
        """§2.16: after EAP, our AUTH is made with the MSK as the shared key (IDr and CERT
        went with the first answer)."""
        assert sa.eap is not None
        octets = signed_octets(sa.init_response, sa.ni, sa.suite.prf, sa.keys.sk_pr,
                               self._my_id)
        return [AuthPayload(AuthMethod.PSK,
                            psk_auth(sa.suite.prf, bytes.fromhex(sa.eap["msk"]), octets))]

