"""The project's own IKEv2 initiator: enough of a client for tests and the benchmark.

One Initiator drives one IKE SA (and its successor after an IKE rekey): IKE_SA_INIT (with
COOKIE and INVALID_KE_PAYLOAD retries, NAT detection and the float to 4500), IKE_AUTH (PSK
or certificate, CP request for a virtual IP), Child SA rekey with or without PFS, IKE SA
rekey, DELETE and liveness. It answers the responder's INFORMATIONAL requests.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

from keyd.eap import EapError
from keyd.eap import Peer as EapPeer

from .attributes import pull_ip6_address
from .auth import certreq_payload, psk_auth, signed_octets, verify_psk
from .config import InitiatorConfig
from .constants import (
    AuthMethod,
    CfgAttr,
    CfgType,
    ExchangeType,
    Flag,
    Notify,
    ProtocolId,
)
from .datagram import nat_hash, notify_name
from .dh import KeyExchange
from .errors import IkeProtocolError, IkeUsageError
from .events import (
    ChildSaEstablished,
    ExchangeFailed,
    IkeSaEstablished,
    IkeSaUpdated,
)
from .fragments import offers_fragmentation
from .identity import Identity, identity_from_text
from .ikesa import Address, IkeSa, ike_sa_id
from .keys import (
    NONCE_LEN,
    IkeKeys,
    derive_child_keys,
    derive_ike_keys,
    skeyseed,
)
from .message import Header, Message, push_message
from .mobike import Mobility
from .payloads import (
    AuthPayload,
    CpPayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TsiPayload,
    TsrPayload,
    find,
    notifies,
)
from .proof import check_proof, hash_algorithms, hash_algorithms_notify, own_proof
from .redirect import Redirection
from .selectors import selector_for, to_cidrs
from .state import IkeState, advance
from .transforms import ChildSuite, IkeSuite, suite_from_proposal

_NO_KEYS = IkeKeys(b"", b"", b"", b"", b"", b"", b"")


class Initiator(Mobility, Redirection):
    """Client side of one IKE SA. `ike_sa_id` names the current IKE SA (None before/after)."""

    def __init__(
        self,
        config: InitiatorConfig,
        *,
        random: Callable[[int], bytes] = os.urandom,
        allocate_spi: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            natt_port=config.natt_port, random=random, allocate_spi=allocate_spi,
            child_lifetime_s=config.child_lifetime_s,
            retransmit_timeout_s=config.retransmit_timeout_s,
            retransmit_tries=config.retransmit_tries, fragment_mtu=config.fragment_mtu,
        )
        self.config = config
        self.mobike_enabled = config.mobike
        self.redirect_supported = config.redirect
        self._redirected_from: str | None = None
        self._my_id: Identity = identity_from_text(config.identity, config.credentials.cert)
        self.ike_sa_id: str | None = None
        self.virtual_ip: str | None = None
        self.virtual_ip6: str | None = None
        self._eap_peer = EapPeer("", "")  # replaced when an EAP round starts

    @property
    def sa(self) -> IkeSa:
        if self.ike_sa_id is None or self.ike_sa_id not in self._sas:
            raise IkeUsageError("no IKE SA")
        return self._sas[self.ike_sa_id]

    # ---- IKE_SA_INIT -------------------------------------------------------------------

    def connect(self, local: Address, remote: Address, now: float,
                redirected_from: str | None = None) -> None:
        """Start IKE_SA_INIT from `local` to `remote`; `redirected_from`: the gateway that
        sent us here (RFC 5685 §4.1, REDIRECTED_FROM)."""
        self._redirected_from = redirected_from
        first = self.config.ike_suites[0]
        suite = first.first_suite()  # a placeholder until the responder chooses
        sa = IkeSa(spi_i=self._new_spi(), spi_r=0, is_initiator=True, suite=suite,
                   keys=_NO_KEYS, state=IkeState.INIT_SENT, peer=remote, local=local,
                   created_at=now, ni=self._random(NONCE_LEN))
        self._sas[sa.id] = sa
        self.ike_sa_id = sa.id
        self._send_init(sa, KeyExchange(suite.dh), b"", now)

    def _new_spi(self) -> int:
        return int.from_bytes(self._random(8), "big") or 1

    def _send_init(self, sa: IkeSa, dh: KeyExchange, cookie: bytes, now: float) -> None:
        props = tuple(s.to_proposal(i + 1) for i, s in enumerate(self.config.ike_suites))
        payloads: list[Payload] = [NotifyPayload(Notify.COOKIE, cookie)] if cookie else []
        payloads += [
            SaPayload(props), KePayload(dh.group, dh.public), NoncePayload(sa.ni),
            NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, 0, sa.local)),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP, nat_hash(sa.spi_i, 0, sa.peer)),
        ]
        if self.config.rfc7427:
            payloads.append(hash_algorithms_notify())
        if self.config.fragmentation:
            payloads.append(NotifyPayload(Notify.IKEV2_FRAGMENTATION_SUPPORTED))
        payloads += self._redirect_init_payloads(self._redirected_from)
        data = push_message(Header(sa.spi_i, 0, 0, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0),
                            payloads)
        sa.init_request = data
        sa.outstanding, sa.outstanding_kind, sa.outstanding_ctx = data, "init", {"dh": dh}
        sa.retransmit_at, sa.retransmits = now + self._retransmit_timeout_s, 0
        self._schedule(sa)
        sa.my_next_id = 1
        self._send(data, sa.local, sa.peer)

    def _on_init_response(self, msg: Message, src: Address, dst: Address, now: float) -> None:
        h = msg.header
        sa = self._sas.get(ike_sa_id(h.spi_i, 0))
        if sa is None or sa.state != IkeState.INIT_SENT or h.message_id != 0 \
                or h.from_initiator:
            self._drop("unexpected_response")
            return
        ps = msg.payloads
        if self._redirected_in_init(sa, msg):
            return
        cookie = notifies(ps, Notify.COOKIE)
        if cookie:  # §2.6: repeat the request with the cookie first
            self._send_init(sa, sa.outstanding_ctx["dh"], cookie[0].data, now)
            return
        invalid_ke = notifies(ps, Notify.INVALID_KE_PAYLOAD)
        groups = {g for p in self.config.ike_suites for g in p.dhs}
        if invalid_ke and len(invalid_ke[0].data) == 2 \
                and int.from_bytes(invalid_ke[0].data, "big") in groups \
                and not sa.outstanding_ctx.get("ke_retried"):
            self._send_init(sa, KeyExchange(int.from_bytes(invalid_ke[0].data, "big")), b"", now)
            sa.outstanding_ctx["ke_retried"] = True
            return
        try:
            errors = [n for n in ps if isinstance(n, NotifyPayload) and n.type < 16384]
            if errors:
                raise IkeProtocolError(f"IKE_SA_INIT refused: {notify_name(errors[0].type)}",
                                       errors[0].type)
            sa_p, ke, nonce = find(ps, SaPayload), find(ps, KePayload), find(ps, NoncePayload)
            if not (isinstance(sa_p, SaPayload) and isinstance(ke, KePayload)
                    and isinstance(nonce, NoncePayload) and len(sa_p.proposals) == 1):
                raise IkeProtocolError("incomplete IKE_SA_INIT response", Notify.INVALID_SYNTAX)
            suite = suite_from_proposal(sa_p.proposals[0], ProtocolId.IKE)
            dh: KeyExchange = sa.outstanding_ctx["dh"]
            if not isinstance(suite, IkeSuite) \
                    or not any(p.accepts(suite) for p in self.config.ike_suites) \
                    or suite.dh != dh.group or ke.group != dh.group:
                raise IkeProtocolError("responder chose what we did not offer",
                                          Notify.NO_PROPOSAL_CHOSEN)
            g_ir = dh.shared_secret(ke.data)
        except IkeProtocolError as e:
            self._events.append(ExchangeFailed(sa.id, h.exchange, e.notify, str(e)))
            self._remove_sa(sa, "IKE_SA_INIT failed")
            return
        del self._sas[sa.id]
        sa.spi_r, sa.suite, sa.nr, sa.init_response = h.spi_r, suite, nonce.data, msg.raw
        sa.keys = derive_ike_keys(suite, skeyseed(suite, sa.ni, sa.nr, g_ir), sa.ni, sa.nr,
                                  sa.spi_i, sa.spi_r)
        self._sas[sa.id] = sa
        self.ike_sa_id = sa.id
        nat_src = [n.data for n in notifies(ps, Notify.NAT_DETECTION_SOURCE_IP)]
        nat_dst = [n.data for n in notifies(ps, Notify.NAT_DETECTION_DESTINATION_IP)]
        if nat_src and nat_dst:
            me_nat = nat_hash(sa.spi_i, sa.spi_r, sa.local) not in nat_dst
            sa.peer_behind_nat = nat_hash(sa.spi_i, sa.spi_r, sa.peer) not in nat_src
            if me_nat or sa.peer_behind_nat:  # §2.23: float to port 4500
                sa.udp_encap = True
                sa.local = (sa.local[0], self._natt_port)
                sa.peer = (sa.peer[0], self._natt_port)
        sa.peer_hashes = hash_algorithms(ps)
        sa.fragmentation = self.config.fragmentation and offers_fragmentation(ps)
        sa.outstanding = b""
        sa.state = advance(sa.state, "init_answered")
        self._send_auth(sa, now)

    # ---- IKE_AUTH ------------------------------------------------------------------------

    def _selectors(self, cidrs: tuple[str, ...] | list[str]) -> tuple[Any, ...]:
        return tuple(selector_for(c) for c in cidrs)

    def _send_auth(self, sa: IkeSa, now: float) -> None:
        cfg = self.config
        octets = signed_octets(sa.init_request, sa.nr, sa.suite.prf, sa.keys.sk_pi, self._my_id)
        payloads: list[Payload] = [IdiPayload(self._my_id.id_type, self._my_id.data)]
        eap = cfg.eap_password is not None  # §2.16: no AUTH asks the responder for EAP
        proof = [] if eap else own_proof(cfg.credentials, sa.suite.prf, octets, sa.peer_hashes)
        payloads += proof[:-1]
        if cfg.remote_identity:
            rid = identity_from_text(cfg.remote_identity)
            payloads.append(IdrPayload(rid.id_type, rid.data))
        payloads += proof[-1:]
        asked: list[tuple[int, bytes]] = []
        if cfg.request_address:
            asked += [(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP4_DNS, b"")]
        if cfg.request_address6:
            asked += [(CfgAttr.INTERNAL_IP6_ADDRESS, b""), (CfgAttr.INTERNAL_IP6_DNS, b"")]
        if asked:
            payloads.append(CpPayload(CfgType.REQUEST, tuple(asked)))
        if cfg.initial_contact:
            payloads.append(NotifyPayload(Notify.INITIAL_CONTACT))
        if cfg.mobike:
            payloads.append(NotifyPayload(Notify.MOBIKE_SUPPORTED))
        if cfg.credentials.cas:
            # §3.7: ask for the responder's certificate (a responder may leave it out
            # unless asked), naming the CAs we trust
            payloads.append(certreq_payload(cfg.credentials.cas))
        spi_in = self._allocate_spi()
        props = tuple(s.to_proposal(i + 1, spi_in.to_bytes(4, "big"), with_dh=False)
                      for i, s in enumerate(cfg.esp_suites))
        payloads += [SaPayload(props), TsiPayload(self._selectors(list(cfg.ts_local))),
                     TsrPayload(self._selectors(list(cfg.ts_remote)))]
        self._start_request(sa, ExchangeType.IKE_AUTH, payloads, "auth",
                            {"spi_in": spi_in, "eap": eap}, now)

    def _check_responder(self, sa: IkeSa, payloads: list[Payload]) -> Identity:
        idr, auth = find(payloads, IdrPayload), find(payloads, AuthPayload)
        if not isinstance(idr, IdrPayload) or auth is None:
            raise IkeProtocolError("IKE_AUTH response without IDr or AUTH",
                                      Notify.AUTHENTICATION_FAILED)
        peer_id = Identity(idr.id_type, idr.data)
        octets = signed_octets(sa.init_response, sa.ni, sa.suite.prf, sa.keys.sk_pr, peer_id)
        assert isinstance(auth, AuthPayload)
        sa.peer_identity = check_proof(self.config.credentials, sa.suite.prf, octets, peer_id,
                                       auth, payloads)
        return peer_id

    def _on_auth_response(self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any],
                          now: float) -> None:
        if not ctx.get("eap"):
            self._check_responder(sa, payloads)
        elif self._eap_round(sa, payloads, ctx, now):
            return
        cp = find(payloads, CpPayload)
        if isinstance(cp, CpPayload):
            for t, v in cp.attributes:
                if t == CfgAttr.INTERNAL_IP4_ADDRESS and len(v) == 4:
                    sa.virtual_ip = str(ipaddress.IPv4Address(v))
                elif t == CfgAttr.INTERNAL_IP6_ADDRESS and (got := pull_ip6_address(v)):
                    sa.virtual_ip6 = got[0]
        self.virtual_ip, self.virtual_ip6 = sa.virtual_ip, sa.virtual_ip6
        self._mobike_agreed(sa, payloads)
        sa.state = advance(sa.state, "auth_answered")
        sa.peer_next_id = 0
        self._events.append(IkeSaEstablished(sa.id, sa.peer_identity, sa.peer[0], sa.peer[1],
                                             sa.virtual_ip, False, virtual_ip6=sa.virtual_ip6))
        sa_p, tsi, tsr = find(payloads, SaPayload), find(payloads, TsiPayload), \
            find(payloads, TsrPayload)
        if isinstance(sa_p, SaPayload) and isinstance(tsi, TsiPayload) \
                and isinstance(tsr, TsrPayload):
            self._child_from_reply(sa, sa_p, tsi, tsr, ctx["spi_in"], sa.ni, sa.nr, b"", None,
                                   now)
        else:
            errors = [p.type for p in payloads if isinstance(p, NotifyPayload) and p.type < 16384]
            self._events.append(ExchangeFailed(sa.id, ExchangeType.IKE_AUTH,
                                               errors[0] if errors else None,
                                               "IKE SA made without a Child SA"))
        sa.init_request = sa.init_response = b""
        self._events.append(IkeSaUpdated(sa.id))

    def _eap_round(self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any],
                   now: float) -> bool:
        """§2.16, client side: True while the EAP conversation goes on (our next IKE_AUTH
        request is out); False once the final answer's AUTH(MSK) checked."""
        if "peer_id" not in ctx:  # the first answer: the responder's own proof
            peer_id = self._check_responder(sa, payloads)
            ctx["peer_id"] = (peer_id.id_type, peer_id.data)
            cfg = self.config
            assert cfg.eap_password is not None
            self._eap_peer = EapPeer(cfg.eap_identity or cfg.identity, cfg.eap_password,
                                     self._random)
        eap = find(payloads, EapPayload)
        if eap is not None:
            try:
                answer = self._eap_peer.respond(eap.data)
            except EapError as exc:
                raise IkeProtocolError(f"EAP: {exc}", Notify.AUTHENTICATION_FAILED) from exc
            if answer is not None:
                next_payloads: list[Payload] = [EapPayload(answer)]
            elif self._eap_peer.succeeded:
                octets = signed_octets(sa.init_request, sa.nr, sa.suite.prf, sa.keys.sk_pi,
                                       self._my_id)
                next_payloads = [AuthPayload(AuthMethod.PSK, psk_auth(
                    sa.suite.prf, self._eap_peer.msk, octets))]
            else:
                raise IkeProtocolError("EAP failed", Notify.AUTHENTICATION_FAILED)
            self._start_request(sa, ExchangeType.IKE_AUTH, next_payloads, "auth", ctx, now)
            return True
        auth = find(payloads, AuthPayload)
        if not isinstance(auth, AuthPayload) or not self._eap_peer.succeeded:
            raise IkeProtocolError("IKE_AUTH answer without EAP or AUTH",
                                      Notify.AUTHENTICATION_FAILED)
        peer_id = Identity(*ctx["peer_id"])
        octets = signed_octets(sa.init_response, sa.ni, sa.suite.prf, sa.keys.sk_pr, peer_id)
        verify_psk(sa.suite.prf, self._eap_peer.msk, octets, auth.data)
        return False

    def _child_from_reply(self, sa: IkeSa, sa_p: SaPayload, tsi: TsiPayload, tsr: TsrPayload,
                          spi_in: int, ni: bytes, nr: bytes, g_ir: bytes,
                          replaces: int | None, now: float) -> None:
        if len(sa_p.proposals) != 1 or len(sa_p.proposals[0].spi) != 4:
            raise IkeProtocolError("bad Child SA proposal in reply", Notify.INVALID_SYNTAX)
        suite = suite_from_proposal(sa_p.proposals[0], ProtocolId.ESP)
        assert isinstance(suite, ChildSuite)
        keys = derive_child_keys(sa.suite.prf, sa.keys.sk_d, suite, ni, nr, g_ir)
        child = self._make_child(sa, suite, keys, spi_in,
                                 int.from_bytes(sa_p.proposals[0].spi, "big"),
                                 to_cidrs(tsi.selectors), to_cidrs(tsr.selectors), True,
                                 replaces, now)
        self._events.append(ChildSaEstablished(child))

    # ---- CREATE_CHILD_SA ---------------------------------------------------------------

    def rekey_child(self, spi_in: int, now: float, pfs: bool = False) -> None:
        """Rekey a Child SA (§1.3.3); with `pfs`, the first ESP proposal with a DH group is
        used and a KE payload sent. The old SA is deleted once the new one exists."""
        sa = self._requestable(self.sa.id)
        old = sa.children.get(spi_in)
        if old is None:
            raise IkeUsageError(f"no Child SA {spi_in:08x}")
        suites = [s for s in self.config.esp_suites if bool(s.dhs) == pfs]
        if not suites:
            raise IkeUsageError("no ESP proposal fits (PFS needs a DH group in one)")
        new_spi, ni = self._allocate_spi(), self._random(NONCE_LEN)
        props = tuple(s.to_proposal(i + 1, new_spi.to_bytes(4, "big"))
                      for i, s in enumerate(suites))
        payloads: list[Payload] = [
            NotifyPayload(Notify.REKEY_SA, b"", ProtocolId.ESP, spi_in.to_bytes(4, "big")),
            SaPayload(props), NoncePayload(ni)]
        ctx: dict[str, Any] = {"spi_in": new_spi, "ni": ni, "old": spi_in}
        if pfs:
            group = suites[0].dhs[0]
            ctx["dh"] = dh = KeyExchange(group)
            payloads.append(KePayload(group, dh.public))
        payloads += [TsiPayload(self._selectors(old.ts_local)),
                     TsrPayload(self._selectors(old.ts_remote))]
        self._start_request(sa, ExchangeType.CREATE_CHILD_SA, payloads, "rekey_child", ctx, now)

    def _on_rekey_child_response(self, sa: IkeSa, payloads: list[Payload],
                                 ctx: dict[str, Any], now: float) -> None:
        sa_p, nonce, ke = find(payloads, SaPayload), find(payloads, NoncePayload), \
            find(payloads, KePayload)
        tsi, tsr = find(payloads, TsiPayload), find(payloads, TsrPayload)
        if not (isinstance(sa_p, SaPayload) and isinstance(nonce, NoncePayload)
                and isinstance(tsi, TsiPayload) and isinstance(tsr, TsrPayload)):
            raise IkeProtocolError("incomplete CREATE_CHILD_SA response", Notify.INVALID_SYNTAX)
        g_ir = b""
        if "dh" in ctx:
            if not isinstance(ke, KePayload):
                raise IkeProtocolError("PFS rekey answered without KE", Notify.INVALID_SYNTAX)
            g_ir = ctx["dh"].shared_secret(ke.data)
        self._child_from_reply(sa, sa_p, tsi, tsr, ctx["spi_in"], ctx["ni"], nonce.data, g_ir,
                               ctx["old"], now)
        self.delete_child_sa(sa.id, ctx["old"], now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA (§1.3.2); the old one is deleted once the new one exists."""
        sa = self._requestable(self.sa.id)
        suite = sa.suite
        spi, ni, dh = self._new_spi(), self._random(NONCE_LEN), KeyExchange(suite.dh)
        prop = Proposal(1, ProtocolId.IKE, spi.to_bytes(8, "big"), suite.to_proposal().transforms)
        payloads: list[Payload] = [SaPayload((prop,)), NoncePayload(ni),
                                   KePayload(dh.group, dh.public)]
        self._start_request(sa, ExchangeType.CREATE_CHILD_SA, payloads, "rekey_ike",
                            {"spi_i": spi, "ni": ni, "dh": dh}, now)

    def _on_rekey_ike_response(self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any],
                               now: float) -> None:
        sa_p, nonce, ke = find(payloads, SaPayload), find(payloads, NoncePayload), \
            find(payloads, KePayload)
        if not (isinstance(sa_p, SaPayload) and isinstance(nonce, NoncePayload)
                and isinstance(ke, KePayload) and len(sa_p.proposals) == 1
                and len(sa_p.proposals[0].spi) == 8):
            raise IkeProtocolError("incomplete IKE rekey response", Notify.INVALID_SYNTAX)
        suite = suite_from_proposal(sa_p.proposals[0], ProtocolId.IKE)
        assert isinstance(suite, IkeSuite)
        g_ir = ctx["dh"].shared_secret(ke.data)
        spi_i, spi_r = ctx["spi_i"], int.from_bytes(sa_p.proposals[0].spi, "big")
        new = self._replace_ike_sa(sa, spi_i, spi_r, suite, ctx["ni"], nonce.data, g_ir, True,
                                   None, now)
        self.ike_sa_id = new.id
        self.delete_ike_sa(sa.id, now)

    def delete(self, now: float) -> None:
        """Delete the current IKE SA."""
        self.delete_ike_sa(self.sa.id, now)

    def liveness(self, now: float) -> None:
        self.check_liveness(self.sa.id, now)



