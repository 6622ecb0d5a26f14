"""The responder: keyd's side of IKE_SA_INIT, IKE_AUTH and CREATE_CHILD_SA (RFC 7296)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .attributes import (
    AddressAsk,
    address_ask,
    address_attribute,
    dns_attributes,
    subnet_attributes,
)
from .auth import certreq_payload, load_certificate, psk_auth, signed_octets, verify_psk
from .config import EapConfig, ResponderConfig
from .connections import Connection, LocalAuth, RemoteAuth, select_connection
from .constants import (
    NON_ESP_MARKER,
    AuthMethod,
    CertEncoding,
    CfgAttr,
    CfgType,
    ExchangeType,
    Flag,
    IdType,
    Notify,
    ProtocolId,
)
from .cookies import Cookies, cookie_response, peek_init_request
from .datagram import RequestContext, nat_hash, notify_name
from .dh import KeyExchange
from .eap_auth import EapRound, _RadiusWait
from .errors import AuthenticationError, IkeProtocolError, IkeUsageError
from .events import (
    AddressRequested,
    AuthenticationFailed,
    ChildSaEstablished,
    IkeSaEstablished,
    IkeSaUpdated,
)
from .fragments import offers_fragmentation
from .identity import Identity, identity_from_text, identity_text
from .ikesa import Address, IkeSa, ike_sa_id
from .keys import NONCE_LEN, derive_child_keys, derive_ike_keys, skeyseed
from .message import Header, Message, push_message
from .mobike import Mobility
from .payloads import (
    AuthPayload,
    CertPayload,
    CpPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
    find,
    notifies,
)
from .proof import check_proof, hash_algorithms, hash_algorithms_notify, own_proof
from .proposals import select_proposal
from .redirect import Redirection
from .secrets import Secrets
from .selectors import narrow, selector_for, to_cidrs
from .state import IkeState, advance
from .transforms import ChildSuite, IkeSuite


@dataclass(slots=True)
class _PendingAuth:
    """An IKE_AUTH request waiting for `assign_address`."""

    payloads: list[Payload]
    ctx: RequestContext
    cp: CpPayload | None
    initial_contact: bool
    connection: Connection
    psk: bytes | None  # the PSK the peer proved with: keyd's own proof on local_auth = psk
    ask: AddressAsk = field(default_factory=AddressAsk)  # what the CFG_REQUEST asks for
    fixed: str | None = None  # an IPv4 address decided already (RADIUS Framed-IP-Address)


@dataclass(frozen=True, slots=True)
class _Offer:
    """What a connection gives its clients, made once: traffic selectors and the
    configuration attributes of its CFG_REPLY."""

    protected: tuple[TrafficSelector, ...]
    dns: tuple[tuple[int, bytes], ...]
    domains: tuple[tuple[int, bytes], ...]
    subnets: tuple[tuple[int, bytes], ...]
    dns6: tuple[tuple[int, bytes], ...] = ()
    subnets6: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def of(cls, c: Connection) -> _Offer:
        return cls(
            protected=tuple(selector_for(n) for n in c.protected_networks),
            dns=dns_attributes(c.dns, 4),
            # RFC 8598 §4: one domain per attribute, the name without a trailing dot
            domains=tuple((CfgAttr.INTERNAL_DNS_DOMAIN, d.rstrip(".").encode("ascii"))
                          for d in c.dns_domains),
            # RFC 7296 §3.15.1: a /0 says nothing: not sent
            subnets=subnet_attributes(c.protected_networks, 4),
            dns6=dns_attributes(c.dns, 6),
            subnets6=subnet_attributes(c.protected_networks, 6),
        )


class Responder(EapRound, Mobility, Redirection):
    """keyd's IKEv2 responder for any number of IKE SAs.

    `random(n)` gives n random bytes (nonces, IKE SPIs, IVs, cookie secrets);
    `allocate_spi()` gives a cluster-unique inbound ESP SPI (keyd: from etcd).
    """

    def __init__(
        self,
        config: ResponderConfig,
        *,
        random: Callable[[int], bytes] = os.urandom,
        allocate_spi: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            natt_port=config.natt_port, random=random, allocate_spi=allocate_spi,
            child_lifetime_s=config.child_lifetime_s,
            retransmit_timeout_s=config.retransmit_timeout_s,
            retransmit_tries=config.retransmit_tries,
            fragment_mtu=config.fragment_mtu, fragment_limits=config.fragment_limits,
        )
        self.config = config
        self.mobike_enabled = config.mobike
        creds = config.credentials
        self._my_id: Identity = identity_from_text(config.identity, creds.cert)
        self._secrets: Secrets = config.secrets
        self._connections = {c.name: c for c in config.connections}
        self._offers = {c.name: _Offer.of(c) for c in config.connections}
        self._first = config.connections[0]
        self._half_open: set[str] = set()
        # half-open SAs by (SPIi, peer address): retransmitted IKE_SA_INIT requests (§2.1)
        self._init_index: dict[tuple[int, Address], str] = {}
        self._init_key: dict[str, tuple[int, Address]] = {}
        self._pending: dict[str, _PendingAuth] = {}
        self._radius_waiting: dict[str, _RadiusWait] = {}  # EAP responses out at RADIUS
        # what every IKE_SA_INIT and IKE_AUTH answer carries alike, made once
        cas = config.credentials.cas
        self._certreq = certreq_payload(cas) if cas else None
        self._cookies = Cookies(random, config.cookie_secret_lifetime_s)
        #: an error notify (e.g. TEMPORARY_FAILURE) every new IKE_SA_INIT is answered with,
        #: or None: new IKE SAs are negotiated (the shell sets it: keyd while etcd is away)
        self.refuse_new: int | None = None

    # ---- API --------------------------------------------------------------------------

    def use_secrets(self, secrets: Secrets) -> None:
        """New PSKs and EAP passwords (the secrets file was read again): they apply from
        the next IKE_AUTH on; established IKE and Child SAs are not touched."""
        self._secrets = secrets.with_any_psk(self.config.credentials.psk)

    @property
    def secrets(self) -> Secrets:
        """The secrets in use (EAP rounds look their users' passwords up here)."""
        return self._secrets

    def connection_of(self, sa: IkeSa) -> Connection:
        """The connection an IKE SA was accepted on; one that is no longer configured (or
        a half-open SA: none yet) is served by the first connection."""
        return self._connections.get(sa.connection, self._first)

    def assign_address(self, ike_sa_id: str, address: str | None, now: float,
                       address6: str | None = None) -> None:
        """Answer an AddressRequested: the peer's virtual IPv4 and IPv6 addresses, each
        None when none is given (not asked for, no pool, pool empty). A peer that gets
        neither of those it asked for has its IKE SA made without a Child SA and with
        INTERNAL_ADDRESS_FAILURE (§3.15.4); one that gets one family only goes on with it
        (RFC 8983 §4, table 1)."""
        pending = self._pending.pop(ike_sa_id, None)
        sa = self._sas.get(ike_sa_id)
        if pending is None or sa is None or sa.state != IkeState.WAIT_ADDRESS:
            raise IkeUsageError(f"IKE SA {ike_sa_id} is not waiting for an address")
        # a bad decision is the caller's error
        if address is not None and ipaddress.ip_address(address).version != 4:
            raise IkeUsageError(f"not an IPv4 address: {address!r}")
        if address6 is not None and ipaddress.ip_address(address6).version != 6:
            raise IkeUsageError(f"not an IPv6 address: {address6!r}")
        self._respond(sa, pending.ctx,
                      self._finish_auth(sa, pending, pending.fixed or address, now, address6))

    # ---- IKE_SA_INIT (§1.2, §2.6, §2.23) ----------------------------------------------------

    def answer_statelessly(self, data: bytes, src: Address,
                           dst: Address, now: float) -> tuple[str, bytes] | None:
        """Answer a new IKE_SA_INIT request without state, from its header and payload
        chain alone (`cookies.peek_init_request`): with `refuse_new` while that is set, or
        with a COOKIE when one is due (§2.6) and the request shows none that is valid.
        Returns what was answered ("refused", "cookie") and the UDP payload to send back
        from `dst` (framed for its port; not queued in datagrams_to_send), or None: give
        the datagram to `receive_datagram`, which decides the same for requests this
        cannot read. Cheap enough for a flood from spoofed sources: no proposal is parsed,
        no key exchange made, nothing is kept."""
        marker = b""
        if dst[1] == self._natt_port:
            if not data.startswith(NON_ESP_MARKER):
                return None
            marker, data = NON_ESP_MARKER, data[len(NON_ESP_MARKER):]
        request = peek_init_request(data)
        if request is None or (request.spi_i, src) in self._init_index:
            return None   # not one, or a retransmission: the cached answer (§2.1)
        if self.refuse_new is not None:
            self.counters.exchanges["IKE_SA_INIT"] += 1
            self.counters.errors[notify_name(self.refuse_new)] += 1
            h = Header(request.spi_i, 0, 0, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
            return "refused", marker + push_message(h, [NotifyPayload(self.refuse_new)])
        if request.nonce is None or len(self._half_open) < self.config.half_open_cookie_threshold \
                or self._cookies.valid(request.cookie, request.nonce, src, request.spi_i):
            return None
        self.counters.exchanges["IKE_SA_INIT"] += 1
        self.counters.cookies_sent += 1
        cookie = self._cookies.make(request.nonce, src, request.spi_i, now)
        return "cookie", marker + cookie_response(request.spi_i, cookie)

    def _on_init_request(self, msg: Message, src: Address, dst: Address, now: float) -> None:
        h = msg.header
        if h.spi_r != 0 or h.message_id != 0 or not h.from_initiator or h.spi_i == 0:
            self._drop("bad_ike_sa_init")
            return
        known = self._init_index.get((h.spi_i, src))
        if known is not None:
            sa = self._sas.get(known)
            if sa is not None and sa.state == IkeState.HALF_OPEN and sa.init_request == msg.raw:
                self.counters.retransmits_answered += 1
                self._send(sa.init_response, dst, src)
            else:
                self._drop("ike_sa_init_spi_reused")
            return
        self.counters.exchanges["IKE_SA_INIT"] += 1
        if self.refuse_new is not None:
            self._init_error(h, self.refuse_new, b"", src, dst)
            return
        ps = msg.payloads
        sa_p, ke, nonce = find(ps, SaPayload), find(ps, KePayload), find(ps, NoncePayload)
        if not (isinstance(sa_p, SaPayload) and isinstance(ke, KePayload)
                and isinstance(nonce, NoncePayload)):
            self._init_error(h, Notify.INVALID_SYNTAX, b"", src, dst)
            return
        if len(self._half_open) >= self.config.half_open_cookie_threshold:
            expected = self._cookies.make(nonce.data, src, h.spi_i, now)
            first = ps[0]
            got = first.data if isinstance(first, NotifyPayload) and first.type == Notify.COOKIE \
                else b""
            if not self._cookies.valid(got, nonce.data, src, h.spi_i):
                self.counters.cookies_sent += 1
                self._init_reply(h, 0, [NotifyPayload(Notify.COOKIE, expected)], src, dst)
                return
        if self._redirect_new_client(msg, src, dst, self.config.redirect_to):
            return
        try:
            prop, suite = select_proposal(sa_p.proposals, self.config.ike_suites,
                                          ProtocolId.IKE, ke.group)
            assert isinstance(suite, IkeSuite)
            dh = KeyExchange(suite.dh)
            g_ir = dh.shared_secret(ke.data)
        except IkeProtocolError as e:
            assert e.notify is not None
            self._init_error(h, e.notify, e.data, src, dst)
            return
        spi_r = self._new_ike_spi(h.spi_i)
        nr = self._random(NONCE_LEN)
        keys = derive_ike_keys(suite, skeyseed(suite, nonce.data, nr, g_ir), nonce.data, nr,
                               h.spi_i, spi_r)
        nat_src = [n.data for n in notifies(ps, Notify.NAT_DETECTION_SOURCE_IP)]
        nat_dst = [n.data for n in notifies(ps, Notify.NAT_DETECTION_DESTINATION_IP)]
        natt = bool(nat_src and nat_dst)
        peer_nat = natt and nat_hash(h.spi_i, 0, src) not in nat_src
        local_nat = natt and nat_hash(h.spi_i, 0, dst) not in nat_dst
        chosen = Proposal(prop.num, ProtocolId.IKE, b"", suite.to_proposal().transforms)
        reply: list[Payload] = [SaPayload((chosen,)), KePayload(suite.dh, dh.public),
                                NoncePayload(nr)]
        if natt:
            fake = self.config.force_udp_encap and not peer_nat
            seen = (src[0], src[1] ^ 0xFFFF) if fake else src
            reply.append(NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP,
                                       nat_hash(h.spi_i, spi_r, dst)))
            reply.append(NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                                       nat_hash(h.spi_i, spi_r, seen)))
        if self._certreq is not None:
            reply.append(self._certreq)
        peer_hashes = hash_algorithms(ps)
        if peer_hashes:
            reply.append(hash_algorithms_notify())
        fragmentation = self.config.fragmentation and offers_fragmentation(ps)
        if fragmentation:
            reply.append(NotifyPayload(Notify.IKEV2_FRAGMENTATION_SUPPORTED))
        data = self._init_reply(h, spi_r, reply, src, dst, send=False)
        sa = IkeSa(
            spi_i=h.spi_i, spi_r=spi_r, is_initiator=False, suite=suite, keys=keys,
            state=IkeState.HALF_OPEN, peer=src, local=dst, created_at=now, ni=nonce.data,
            nr=nr, init_request=msg.raw, init_response=data, peer_next_id=1,
            last_response=data,
            udp_encap=natt and (peer_nat or local_nat or self.config.force_udp_encap),
            peer_behind_nat=peer_nat, peer_hashes=peer_hashes, fragmentation=fragmentation,
            expires_at=now + self.config.half_open_timeout_s,
        )
        self._note_redirect_support(sa, ps)
        self._sas[sa.id] = sa
        self._index(sa)
        self._schedule(sa)
        self._events.append(IkeSaUpdated(sa.id))
        self._send(data, dst, src)

    def _init_reply(self, h: Header, spi_r: int, payloads: list[Payload], src: Address,
                    dst: Address, send: bool = True) -> bytes:
        reply = Header(h.spi_i, spi_r, 0, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
        data = push_message(reply, payloads)
        if send:
            self._send(data, dst, src)
        return data

    def _init_error(self, h: Header, notify: int, data: bytes, src: Address,
                    dst: Address) -> None:
        self.counters.errors[notify_name(notify)] += 1
        self._init_reply(h, 0, [NotifyPayload(notify, data)], src, dst)

    def _new_ike_spi(self, spi_i: int) -> int:
        while True:
            spi = int.from_bytes(self._random(8), "big")
            if spi and ike_sa_id(spi_i, spi) not in self._sas:
                return spi

    def _index(self, sa: IkeSa) -> None:
        if sa.state == IkeState.HALF_OPEN:
            self._half_open.add(sa.id)
            self._init_index[(sa.spi_i, sa.peer)] = sa.id
            self._init_key[sa.id] = (sa.spi_i, sa.peer)
        self.counters.half_open = len(self._half_open)

    def _leave_half_open(self, sa: IkeSa) -> None:
        self._half_open.discard(sa.id)
        key = self._init_key.pop(sa.id, None)
        if key is not None:
            self._init_index.pop(key, None)
        self.counters.half_open = len(self._half_open)

    def _imported(self, sa: IkeSa) -> None:
        self._index(sa)
        super()._imported(sa)

    def _fakes_nat(self) -> bool:
        return self.config.force_udp_encap

    def _forget(self, sa: IkeSa) -> None:
        self._pending.pop(sa.id, None)
        self._radius_waiting.pop(sa.id, None)
        self._leave_half_open(sa)

    # ---- IKE_AUTH (§1.2, §2.15, §3.15) -----------------------------------------------------

    def _on_auth_request(
        self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext, now: float
    ) -> list[Payload] | None:
        idi, auth = find(payloads, IdiPayload), find(payloads, AuthPayload)
        peer_id = Identity(idi.id_type, idi.data) if isinstance(idi, IdiPayload) else None
        name, conn, psk = "", None, None
        try:
            if peer_id is None:
                raise AuthenticationError("malformed_request", "IKE_AUTH without IDi")
            name = _claimed(peer_id, payloads)
            auth = auth if isinstance(auth, AuthPayload) else None
            chosen = select_connection(self.config.connections, name,
                                       auth.method if auth else None, sa.suite)
            conn = chosen.connection
            if conn is None:
                raise AuthenticationError("no_matching_connection", chosen.reason)
            if auth is None:
                return self._begin_eap(sa, conn, peer_id, payloads, ctx, now)
            identity, psk = self._verify_peer(sa, conn, peer_id, name, auth, payloads)
        except AuthenticationError as e:
            self._refuse(sa, ctx, name, e.cause, str(e), conn)
            return None
        except IkeProtocolError as e:   # e.g. an unreadable certificate
            self._refuse(sa, ctx, name, "certificate_invalid", str(e), conn)
            return None
        sa.connection = conn.name
        return self._authenticated(sa, identity, payloads, ctx, None, now, psk)

    def _authenticated(self, sa: IkeSa, identity: str, payloads: list[Payload],
                       ctx: RequestContext, address: str | None, now: float,
                       psk: bytes | None = None) -> list[Payload] | None:
        """The peer proved `identity` on its connection; `payloads` are those of its (first)
        IKE_AUTH request; `psk` the PSK it proved with. `address`: a virtual IP decided
        already (RADIUS Framed-IP-Address), else the pool is asked if the peer wants one."""
        conn = self.connection_of(sa)
        sa.peer_identity = identity
        cp = find(payloads, CpPayload)
        cp = cp if isinstance(cp, CpPayload) and cp.cfg_type == CfgType.REQUEST else None
        ask = address_ask(cp.attributes) if cp is not None else AddressAsk()
        fixed = address if ask.ipv4 else None
        pending = _PendingAuth(payloads, ctx, cp,
                               bool(notifies(payloads, Notify.INITIAL_CONTACT)), conn, psk,
                               ask, fixed)
        need4 = ask.ipv4 and fixed is None
        need6 = ask.ipv6 and conn.pool6 is not None   # no IPv6 pool: no IPv6 address
        if need4 or need6:
            sa.state = advance(sa.state, "address_requested")
            self._pending[sa.id] = pending
            self._events.append(AddressRequested(
                sa.id, identity, ask.requested4 if need4 else None, pending.initial_contact,
                conn.name, conn.pool, ipv4=need4, ipv6=need6,
                requested6=ask.requested6 if need6 else None, pool6=conn.pool6))
            return None
        return self._finish_auth(sa, pending, fixed, now)

    def _refuse(self, sa: IkeSa, ctx: RequestContext, name: str, cause: str, reason: str,
                conn: Connection | None, answer: list[Payload] | None = None) -> None:
        """AUTHENTICATION_FAILED (after `answer`'s payloads: an EAP-Failure), counted by
        cause; the IKE SA is gone before the answer leaves (§2.21.2)."""
        self.counters.handshakes["failed"] += 1
        self.counters.errors["AUTHENTICATION_FAILED"] += 1
        self.counters.auth_failures[cause] += 1
        self._events.append(AuthenticationFailed(sa.id, name, reason, cause,
                                                 conn.name if conn else ""))
        self._remove_sa(sa, "authentication failed")
        self._respond(sa, ctx, [*(answer or []), NotifyPayload(Notify.AUTHENTICATION_FAILED)])

    def _begin_eap(self, sa: IkeSa, conn: Connection, peer_id: Identity,
                   payloads: list[Payload], ctx: RequestContext,
                   now: float) -> list[Payload] | None:
        """An IKE_AUTH without AUTH asks for EAP (§2.16) on an EAP connection."""
        sa.connection = conn.name
        eap = self.eap_config(sa)
        if eap is None:
            raise AuthenticationError("eap_unavailable",
                                      f"connection {conn.name}: {conn.remote_auth} is not served")
        return self._start_eap(sa, eap, peer_id, payloads, ctx, now)

    def eap_config(self, sa: IkeSa) -> EapConfig | None:
        """The EAP round of the IKE SA's connection: eap-mschapv2 against the secrets file's
        EAP users (as they are now: a SIGHUP applies to the next message), eap-radius and
        eap-tls relayed to the RADIUS servers of [keyd]. None: not an EAP connection, or
        nothing to serve it with."""
        auth = self.connection_of(sa).remote_auth
        base = self.config.eap
        ask = base.ask_identity if base is not None else True
        if auth == RemoteAuth.EAP_MSCHAPV2:
            return EapConfig("eap-mschapv2", password_for=self._eap_password, ask_identity=ask)
        if auth in (RemoteAuth.EAP_RADIUS, RemoteAuth.EAP_TLS) and base is not None \
                and base.radius_servers:
            return EapConfig("eap-radius", radius_servers=base.radius_servers,
                             nas_identifier=base.nas_identifier, ask_identity=ask)
        return None

    def _eap_password(self, identity: str) -> str | None:
        """The secrets file's EAP user first, then [keyd] eap_users_file's."""
        got = self._secrets.eap_password(identity)
        base = self.config.eap
        if got is None and base is not None and base.password_for is not None:
            got = base.password_for(identity)
        return got

    def _verify_peer(self, sa: IkeSa, conn: Connection, peer_id: Identity, name: str,
                     auth: AuthPayload, payloads: list[Payload]) -> tuple[str, bytes | None]:
        """Check the peer's AUTH on `conn`: by the PSK of the identity it claims, or by
        certificate. Returns its identity as text and the PSK it proved with (if any)."""
        octets = signed_octets(sa.init_request, sa.nr, sa.suite.prf, sa.keys.sk_pi, peer_id)
        if auth.method == AuthMethod.PSK:
            psk = self._secrets.psk(name)
            if psk is None:
                raise AuthenticationError("unknown_identity", f"no PSK for {name!r}")
            try:
                verify_psk(sa.suite.prf, psk, octets, auth.data)
            except IkeProtocolError:
                raise AuthenticationError(
                    "psk_mismatch", f"AUTH does not verify with the PSK of {name!r}") from None
            return name, psk
        try:
            return check_proof(self.config.credentials, sa.suite.prf, octets, peer_id, auth,
                               payloads), None
        except IkeProtocolError as e:
            raise AuthenticationError("certificate_invalid", str(e)) from None

    def _own_auth(self, sa: IkeSa, local_auth: LocalAuth, psk: bytes | None) -> list[Payload]:
        """IDr and keyd's proof: by the PSK the peer proved with (`local_auth = psk`), or
        by certificate — with the certificate always sent, CERTREQ or not (Apple clients
        send none)."""
        octets = signed_octets(sa.init_response, sa.ni, sa.suite.prf, sa.keys.sk_pr, self._my_id)
        idr = IdrPayload(self._my_id.id_type, self._my_id.data)
        if local_auth == LocalAuth.PSK:
            assert psk is not None   # local_auth = psk needs remote_auth = psk
            return [idr, AuthPayload(AuthMethod.PSK, psk_auth(sa.suite.prf, psk, octets))]
        return [idr, *own_proof(self.config.credentials, sa.suite.prf, octets, sa.peer_hashes)]

    def _finish_auth(self, sa: IkeSa, pending: _PendingAuth, address: str | None,
                     now: float, address6: str | None = None) -> list[Payload]:
        reply = self._eap_final_proof(sa) if sa.eap is not None \
            else self._own_auth(sa, pending.connection.local_auth, pending.psk)
        sa.eap = None  # the MSK and the conversation are not needed any more
        reply += self._mobike_offer(sa, pending.payloads)
        offer = self._offers[pending.connection.name]
        child_ok = True
        ask = pending.ask
        address = address if ask.ipv4 else None
        address6 = address6 if ask.ipv6 else None
        if pending.cp is not None:
            asked = {t for t, _ in pending.cp.attributes}
            attrs: list[tuple[int, bytes]] = []
            # §3.15.4: a failure when none of the addresses asked for can be given; an
            # address family keyd has no pool for is left out of the answer (RFC 8983)
            child_ok = not ask.any or address is not None or address6 is not None
            attrs += [address_attribute(a) for a in (address, address6) if a is not None]
            if CfgAttr.INTERNAL_IP4_DNS in asked:
                attrs += offer.dns
            if CfgAttr.INTERNAL_IP6_DNS in asked:
                attrs += offer.dns6
            # what the connection configures is sent whether asked for or not, as
            # strongSwan's responder does: a client ignores attributes it does not know
            attrs += offer.domains
            attrs += offer.subnets
            if address6 is not None:
                attrs += offer.subnets6
            if attrs:
                reply.append(CpPayload(CfgType.REPLY, tuple(attrs)))
        sa.virtual_ip = address
        sa.virtual_ip6 = address6
        sa.state = advance(sa.state, "authenticated")
        sa.expires_at = None
        self._leave_half_open(sa)
        self.counters.handshakes["ok"] += 1
        self._events.append(IkeSaEstablished(sa.id, sa.peer_identity, sa.peer[0], sa.peer[1],
                                             address, pending.initial_contact, sa.connection,
                                             address6))
        ps = pending.payloads
        sa_p, tsi, tsr = find(ps, SaPayload), find(ps, TsiPayload), find(ps, TsrPayload)
        if not child_ok:
            self.counters.errors["INTERNAL_ADDRESS_FAILURE"] += 1
            reply.append(NotifyPayload(Notify.INTERNAL_ADDRESS_FAILURE))
        elif isinstance(sa_p, SaPayload) and isinstance(tsi, TsiPayload) \
                and isinstance(tsr, TsrPayload):
            try:
                reply += self._negotiate_child(sa, sa_p, tsi, tsr, sa.ni, sa.nr, None,
                                               None, False, now)
            except IkeProtocolError as e:
                assert e.notify is not None
                self.counters.errors[notify_name(e.notify)] += 1
                reply.append(NotifyPayload(e.notify))
        sa.init_request = sa.init_response = b""  # AUTH is done: RealMessages are not needed
        return reply

    # ---- Child SAs (§1.3, §2.9, §2.17) -------------------------------------------------------

    def _negotiate_child(
        self, sa: IkeSa, sa_p: SaPayload, tsi_p: TsiPayload, tsr_p: TsrPayload, ni: bytes,
        nr: bytes, ke: KePayload | None, replaces: int | None, with_dh: bool, now: float,
    ) -> list[Payload]:
        """Select a suite, narrow the selectors, derive keys; returns SA, [KE], TSi, TSr.
        Suites and selectors are the IKE SA's connection's."""
        conn = self.connection_of(sa)
        prop, suite = select_proposal(sa_p.proposals, conn.esp_suites, ProtocolId.ESP,
                                      ke.group if ke else None, include_dh=with_dh)
        assert isinstance(suite, ChildSuite)
        if len(prop.spi) != 4:
            raise IkeProtocolError("ESP proposal without a 4-byte SPI", Notify.INVALID_SYNTAX)
        # the client's side: its virtual addresses (§2.9), or its own address without any
        vips = [ip for ip in (sa.virtual_ip, sa.virtual_ip6) if ip]
        remote_ok = [_host_selector(ip) for ip in vips or [sa.peer[0]]]
        tsi = narrow(tsi_p.selectors, remote_ok)
        tsr = narrow(tsr_p.selectors, list(self._offers[conn.name].protected))
        if not tsi or not tsr:
            raise IkeProtocolError("no acceptable traffic selectors", Notify.TS_UNACCEPTABLE)
        g_ir = b""
        out_ke: list[Payload] = []
        if with_dh and suite.dh is not None:
            assert ke is not None
            dh = KeyExchange(suite.dh)
            g_ir = dh.shared_secret(ke.data)
            out_ke.append(KePayload(suite.dh, dh.public))
        elif not with_dh:
            suite = ChildSuite(suite.encr, suite.integ, suite.esn, None)
        keys = derive_child_keys(sa.suite.prf, sa.keys.sk_d, suite, ni, nr, g_ir)
        spi_in = self._allocate_spi()
        child = self._make_child(sa, suite, keys, spi_in, int.from_bytes(prop.spi, "big"),
                                 to_cidrs(tsr), to_cidrs(tsi), False, replaces, now,
                                 policy=conn.policy)
        self._events.append(ChildSaEstablished(child))
        chosen = suite.to_proposal(prop.num, spi_in.to_bytes(4, "big"))
        return [SaPayload((chosen,)), *out_ke, TsiPayload(tsi), TsrPayload(tsr)]

    def _on_create_child_request(
        self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext, now: float
    ) -> list[Payload] | None:
        sa_p, nonce, ke = find(payloads, SaPayload), find(payloads, NoncePayload), \
            find(payloads, KePayload)
        if not isinstance(sa_p, SaPayload) or not isinstance(nonce, NoncePayload):
            raise IkeProtocolError("CREATE_CHILD_SA without SA or Ni", Notify.INVALID_SYNTAX)
        ke = ke if isinstance(ke, KePayload) else None
        nr = self._random(NONCE_LEN)
        if any(p.protocol == ProtocolId.IKE for p in sa_p.proposals):
            return self._rekey_ike(sa, sa_p, nonce.data, nr, ke, now)
        tsi, tsr = find(payloads, TsiPayload), find(payloads, TsrPayload)
        if not isinstance(tsi, TsiPayload) or not isinstance(tsr, TsrPayload):
            raise IkeProtocolError("CREATE_CHILD_SA without TSi/TSr", Notify.INVALID_SYNTAX)
        replaces = None
        rekey = notifies(payloads, Notify.REKEY_SA)
        if rekey:
            spi = rekey[0].spi
            old = sa.child_by_spi_out(int.from_bytes(spi, "big")) if len(spi) == 4 else None
            if old is None:
                raise IkeProtocolError("rekey of an unknown Child SA",
                                          Notify.CHILD_SA_NOT_FOUND)
            replaces = old.spi_in
        reply = self._negotiate_child(sa, sa_p, tsi, tsr, nonce.data, nr, ke, replaces, True,
                                      now)
        return [reply[0], NoncePayload(nr), *reply[1:]]

    def _rekey_ike(self, sa: IkeSa, sa_p: SaPayload, ni: bytes, nr: bytes,
                   ke: KePayload | None, now: float) -> list[Payload]:
        """§1.3.2, §2.18: a new IKE SA inherits the Child SAs; the peer deletes the old one."""
        prop, suite = select_proposal(sa_p.proposals, self.connection_of(sa).ike_suites,
                                      ProtocolId.IKE, ke.group if ke else None)
        assert isinstance(suite, IkeSuite) and ke is not None
        if len(prop.spi) != 8:
            raise IkeProtocolError("IKE rekey without an 8-byte SPI", Notify.INVALID_SYNTAX)
        dh = KeyExchange(suite.dh)
        g_ir = dh.shared_secret(ke.data)
        spi_i = int.from_bytes(prop.spi, "big")
        spi_r = self._new_ike_spi(spi_i)
        self._replace_ike_sa(sa, spi_i, spi_r, suite, ni, nr, g_ir, False,
                             self.config.rekeyed_grace_s, now)
        chosen = Proposal(prop.num, ProtocolId.IKE, spi_r.to_bytes(8, "big"),
                          suite.to_proposal().transforms)
        return [SaPayload((chosen,)), NoncePayload(nr), KePayload(suite.dh, dh.public)]


def _host_selector(ip: str) -> TrafficSelector:
    """The selector of one address (/32 or /128)."""
    return selector_for(f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}")


def _claimed(peer_id: Identity, payloads: list[Payload]) -> str:
    """The identity the peer claims, as connections and secrets name it: a DN is spelled
    from the certificate that comes with it (when it is that certificate's subject)."""
    if peer_id.id_type == IdType.DER_ASN1_DN:
        for p in payloads:
            if isinstance(p, CertPayload) and p.encoding == CertEncoding.X509_SIGNATURE:
                try:
                    return identity_text(peer_id, load_certificate(p.data))
                except IkeProtocolError:
                    break
    return identity_text(peer_id)
