"""What both roles share: datagram framing, request/response dispatch, message IDs and the
retransmission cache, sealing, our own requests with retransmission, INFORMATIONAL, timers,
export/import. `Responder` and `Initiator` add their exchanges on top."""

from __future__ import annotations

import heapq
import os
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .constants import (
    NON_ESP_MARKER,
    ExchangeType,
    Flag,
    Notify,
    ProtocolId,
)
from .datagram import (
    Datagram,
    RequestContext,
    exchange_name,
    notify_name,
    random_spi,
)
from .errors import IkeProtocolError, IkeUsageError
from .events import (
    ChildSa,
    ChildSaDeleted,
    ExchangeFailed,
    IkeCounters,
    IkeEvent,
    IkeSaDeleted,
    IkeSaRekeyed,
    IkeSaUpdated,
)
from .fragments import (
    FragmentError,
    FragmentLimits,
    Reassembler,
    fragment_budget,
    seal_message,
    split_datagrams,
)
from .ikesa import Address, IkeSa, export_sa, ike_sa_id, import_sa
from .keys import ChildKeys, derive_ike_keys, rekey_skeyseed
from .message import Header, Message, pull_message, push_message
from .payloads import (
    AuthPayload,
    DeletePayload,
    NotifyPayload,
    Payload,
    SkfPayload,
    SkPayload,
    find,
)
from .protect import SkKeys, open_plain, open_sk
from .state import CAN_REQUEST, REQUEST_HANDLERS, IkeState, advance
from .transforms import ChildSuite, IkeSuite

NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3


class IkeEndpoint:
    """The sans-I/O machinery of one IKE endpoint holding any number of IKE SAs."""

    def __init__(
        self,
        *,
        natt_port: int = 4500,
        random: Callable[[int], bytes] = os.urandom,
        allocate_spi: Callable[[], int] | None = None,
        child_lifetime_s: int = 3600,
        retransmit_timeout_s: float = 2.0,
        retransmit_tries: int = 5,
        fragment_mtu: int = 1280,
        fragment_limits: FragmentLimits | None = None,
    ) -> None:
        self.counters = IkeCounters()
        self._natt_port = natt_port
        self._random = random
        self._allocate_spi = allocate_spi or (lambda: random_spi(random))
        self._child_lifetime_s = child_lifetime_s
        self._retransmit_timeout_s = retransmit_timeout_s
        self._retransmit_tries = retransmit_tries
        self._sas: dict[str, IkeSa] = {}
        self._events: deque[IkeEvent] = deque()
        self._out: deque[Datagram] = deque()
        self._timers: list[tuple[float, str]] = []  # heap of (due, ike_sa_id), lazily pruned
        self._fragment_mtu = fragment_mtu  # RFC 7383: keyd/ike/fragments.py
        self.fragments = Reassembler(fragment_limits or FragmentLimits(), self._drop)

    # ---- the API the shell drives ---------------------------------------------------------

    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        """Feed one UDP payload received on `dst` from `src`. Never raises for peer input."""
        if dst[1] == self._natt_port:
            if data == NAT_KEEPALIVE:
                self._drop("natt_keepalive")
                return
            if not data.startswith(NON_ESP_MARKER):
                self._drop("esp_on_ike_port")
                return
            data = data[len(NON_ESP_MARKER) :]
        try:
            msg, sk = pull_message(data)
        except IkeProtocolError as e:
            if e.notify == Notify.INVALID_MAJOR_VERSION:
                self._refuse_version(data, src, dst)
            else:
                self._drop("malformed")
            return
        try:
            if msg.header.is_response:
                self._on_response(msg, sk, src, dst, now)
            else:
                self._on_request(msg, sk, src, dst, now)
        except IkeProtocolError as e:
            self._drop(notify_name(e.notify) if e.notify is not None else "silent")
        except IkeUsageError:
            # a state the tables do not allow: a defect, counted; the daemon keeps serving
            self._drop("internal_error")

    def handle_timer(self, now: float) -> None:
        """Retransmit our requests, give up on silent peers, expire half-open / rekeyed SAs."""
        self.fragments.expire(now)
        self.counters.fragments_incomplete = self.fragments.incomplete
        while self._timers and self._timers[0][0] <= now:
            due, sa_id = heapq.heappop(self._timers)
            sa = self._sas.get(sa_id)
            if sa is None or _due(sa) != due:
                continue  # stale entry: the SA is gone or was rescheduled
            if sa.outstanding and sa.retransmit_at is not None and now >= sa.retransmit_at:
                if sa.retransmits >= self._retransmit_tries:
                    self._events.append(ExchangeFailed(sa.id, 0, None, "peer does not answer"))
                    self._remove_sa(sa, "peer does not answer")
                    continue
                sa.retransmits += 1
                sa.retransmit_at = now + self._retransmit_timeout_s * (2**sa.retransmits)
                self.counters.retransmits_sent += 1
                self._send(sa.outstanding, sa.local, sa.peer)
            if sa.expires_at is not None and now >= sa.expires_at:
                self._remove_sa(sa, f"{sa.state.value} timed out")
                continue
            self._schedule(sa)

    def get_timer(self) -> float | None:
        """When `handle_timer` should next run (None: nothing scheduled)."""
        while self._timers:
            due, sa_id = self._timers[0]
            sa = self._sas.get(sa_id)
            if sa is not None and _due(sa) == due:
                return due
            heapq.heappop(self._timers)
        return None

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[Datagram]:
        """Datagrams to send now. Pull every event first: they must be persisted before."""
        if self._events:
            raise IkeUsageError("pull (and persist) all events before sending datagrams")
        out = list(self._out)
        self._out.clear()
        return out

    def ike_sa_ids(self) -> list[str]:
        return list(self._sas)

    def has_ike_sa(self, ike_sa_id: str) -> bool:
        return ike_sa_id in self._sas

    def forget_ike_sa(self, ike_sa_id: str) -> None:
        """Drop an IKE SA from memory silently (no events, nothing sent): the shell undoes a
        step it could not persist, or lets another instance continue the SA."""
        sa = self._sas.pop(ike_sa_id, None)
        if sa is not None:
            self._forget(sa)

    def busy(self, ike_sa_id: str) -> bool:
        """True while a request of ours on that IKE SA waits for its answer."""
        return bool(self._get(ike_sa_id).outstanding)

    def export_ike_sa(self, ike_sa_id: str) -> dict[str, Any]:
        """The IKE SA's state as a JSON-able dict (contains keys: seal it at rest)."""
        return export_sa(self._get(ike_sa_id))

    def import_ike_sa(self, record: dict[str, Any]) -> str:
        """Take over an IKE SA exported by another instance; returns its id."""
        sa = import_sa(record)
        self._sas[sa.id] = sa
        self._schedule(sa)
        self._imported(sa)
        return sa.id

    def delete_ike_sa(self, ike_sa_id: str, now: float) -> None:
        """Start an INFORMATIONAL DELETE of the IKE SA (its Child SAs go with it)."""
        sa = self._requestable(ike_sa_id)
        self._start_request(sa, ExchangeType.INFORMATIONAL,
                            [DeletePayload(ProtocolId.IKE, ())], "delete_ike", {}, now)

    def delete_child_sa(self, ike_sa_id: str, spi_in: int, now: float) -> None:
        """Start an INFORMATIONAL DELETE of one Child SA (named by our spi_in)."""
        sa = self._requestable(ike_sa_id)
        if spi_in not in sa.children:
            raise IkeUsageError(f"no Child SA {spi_in:08x} in {ike_sa_id}")
        payload = DeletePayload(ProtocolId.ESP, (spi_in.to_bytes(4, "big"),))
        self._start_request(sa, ExchangeType.INFORMATIONAL, [payload], "delete_child",
                            {"spi_in": spi_in}, now)

    def check_liveness(self, ike_sa_id: str, now: float) -> None:
        """Send an empty INFORMATIONAL (§1.4); no answer within the retransmissions → deleted."""
        sa = self._requestable(ike_sa_id)
        self._start_request(sa, ExchangeType.INFORMATIONAL, [], "liveness", {}, now)

    # ---- helpers for subclasses -----------------------------------------------------------

    def _get(self, ike_sa_id: str) -> IkeSa:
        sa = self._sas.get(ike_sa_id)
        if sa is None:
            raise IkeUsageError(f"unknown IKE SA {ike_sa_id}")
        return sa

    def _requestable(self, ike_sa_id: str) -> IkeSa:
        sa = self._get(ike_sa_id)
        if sa.state not in CAN_REQUEST:
            raise IkeUsageError(f"IKE SA {ike_sa_id} is {sa.state.value}")
        if sa.outstanding:
            raise IkeUsageError(f"IKE SA {ike_sa_id} has an exchange in flight")
        return sa

    def _imported(self, sa: IkeSa) -> None:
        """Hook for subclasses to index an imported SA."""

    def _esp_peer(self, sa: IkeSa) -> Address:
        """Hook: where a new Child SA of the IKE SA sends ESP (MOBIKE: a verified address)."""
        return sa.peer

    def _schedule(self, sa: IkeSa) -> None:
        """Call after changing `retransmit_at` or `expires_at` (stale heap entries are skipped)."""
        due = _due(sa)
        if due is not None:
            heapq.heappush(self._timers, (due, sa.id))

    def _drop(self, reason: str) -> None:
        self.counters.drops[reason] += 1

    def _refuse_version(self, data: bytes, src: Address, dst: Address) -> None:
        """§1.5: an IKE_SA_INIT request of a higher major version gets an unauthenticated
        INVALID_MAJOR_VERSION carrying ours; anything else of another version is dropped."""
        self._drop("version")
        if len(data) < 28 or data[18] != ExchangeType.IKE_SA_INIT or data[19] & Flag.RESPONSE:
            return
        h = Header(int.from_bytes(data[:8], "big"), 0, 0, ExchangeType.IKE_SA_INIT,
                   Flag.RESPONSE, 0)
        reply = push_message(h, [NotifyPayload(Notify.INVALID_MAJOR_VERSION, bytes([0x20]))])
        self.counters.errors["INVALID_MAJOR_VERSION"] += 1
        self._send(reply, dst, src)

    def _send(self, data: bytes, src: Address, dst: Address) -> None:
        """Send one message, or each of the fragments `_seal` made of it."""
        marker = NON_ESP_MARKER if src[1] == self._natt_port else b""
        for part in split_datagrams(data):
            self._out.append(Datagram(marker + part, src, dst))

    def _seal(self, sa: IkeSa, header: Header, payloads: list[Payload]) -> bytes:
        """A sealed message, fragmented (RFC 7383) if the peer takes fragments and it is
        larger than the fragment MTU."""
        limit = fragment_budget(self._fragment_mtu, sa.local, self._natt_port) \
            if sa.fragmentation else None
        return seal_message(header, payloads, self._keys_out(sa), self._random, limit)

    def _open(self, sa: IkeSa, msg: Message, sk: SkPayload, now: float) -> list[Payload] | None:
        """The payloads of an SK message, or of a fragmented one once complete (else None)."""
        if isinstance(sk, SkfPayload):
            try:
                return self.fragments.open(sa.id, msg, sk, self._keys_in(sa), now)
            finally:
                self.counters.fragments_incomplete = self.fragments.incomplete
        return open_sk(msg, sk, self._keys_in(sa))

    def _keys_in(self, sa: IkeSa) -> SkKeys:
        k = sa.keys
        if sa.is_initiator:
            return SkKeys(sa.suite.encr, sa.suite.integ, k.sk_er, k.sk_ar)
        return SkKeys(sa.suite.encr, sa.suite.integ, k.sk_ei, k.sk_ai)

    def _keys_out(self, sa: IkeSa) -> SkKeys:
        k = sa.keys
        if sa.is_initiator:
            return SkKeys(sa.suite.encr, sa.suite.integ, k.sk_ei, k.sk_ai)
        return SkKeys(sa.suite.encr, sa.suite.integ, k.sk_er, k.sk_ar)

    def _remove_sa(self, sa: IkeSa, reason: str) -> None:
        for child in sa.children.values():
            self._events.append(ChildSaDeleted(sa.id, child.spi_in))
        sa.children = {}
        sa.state = advance(sa.state, "deleted")
        self._sas.pop(sa.id, None)
        self._forget(sa)
        self.fragments.forget(sa.id)
        self._events.append(IkeSaDeleted(sa.id, reason))

    def _forget(self, sa: IkeSa) -> None:
        """Hook for subclasses to drop their indexes of a removed SA."""

    def _replace_ike_sa(
        self, sa: IkeSa, spi_i: int, spi_r: int, suite: IkeSuite, ni: bytes, nr: bytes,
        g_ir: bytes, we_initiated: bool, grace_s: float | None, now: float,
    ) -> IkeSa:
        """§2.18: the rekeyed IKE SA inherits the old one's peer, identity, virtual IP and
        Child SAs; its initiator is whoever started the rekey. The old SA waits (up to
        `grace_s`) for its DELETE."""
        seed = rekey_skeyseed(sa.suite.prf, sa.keys.sk_d, g_ir, ni, nr)
        new = IkeSa(
            spi_i=spi_i, spi_r=spi_r, is_initiator=we_initiated, suite=suite,
            keys=derive_ike_keys(suite, seed, ni, nr, spi_i, spi_r),
            state=IkeState.ESTABLISHED, peer=sa.peer, local=sa.local, created_at=now,
            udp_encap=sa.udp_encap, peer_behind_nat=sa.peer_behind_nat,
            peer_identity=sa.peer_identity, connection=sa.connection,
            virtual_ip=sa.virtual_ip, virtual_ip6=sa.virtual_ip6,
            peer_hashes=sa.peer_hashes, fragmentation=sa.fragmentation, mobike=sa.mobike,
            redirect_supported=sa.redirect_supported,
        )
        if new.id in self._sas:
            raise IkeProtocolError("IKE SPI collision", Notify.INVALID_SYNTAX)
        new.children = {spi: replace(c, ike_sa_id=new.id) for spi, c in sa.children.items()}
        sa.children = {}
        sa.state = advance(sa.state, "rekeyed")
        sa.rekeyed_to = new.id
        if grace_s is not None:
            sa.expires_at = now + grace_s
            self._schedule(sa)
        self._sas[new.id] = new
        self._events.append(IkeSaUpdated(new.id))
        self._events.append(IkeSaRekeyed(sa.id, new.id, tuple(new.children.values())))
        return new

    def _make_child(
        self, sa: IkeSa, suite: ChildSuite, keys: ChildKeys, spi_in: int, spi_out: int,
        ts_local: tuple[str, ...], ts_remote: tuple[str, ...], we_initiated: bool,
        replaces: int | None, now: float, policy: str | None = None,
    ) -> ChildSa:
        """A Child SA; §2.17 keys come i→r first, where i is the exchange's initiator."""
        esp_peer = self._esp_peer(sa)
        if we_initiated:
            e_in, a_in, e_out, a_out = keys.encr_ri, keys.integ_ri, keys.encr_ir, keys.integ_ir
        else:
            e_in, a_in, e_out, a_out = keys.encr_ir, keys.integ_ir, keys.encr_ri, keys.integ_ri
        child = ChildSa(
            spi_in=spi_in, spi_out=spi_out, ike_sa_id=sa.id, encr=suite.encr.name,
            integ=suite.integ.name if suite.integ else None, esn=suite.esn,
            enc_key_in=e_in, integ_key_in=a_in, enc_key_out=e_out, integ_key_out=a_out,
            ts_local=ts_local, ts_remote=ts_remote, peer_addr=esp_peer[0], peer_port=esp_peer[1],
            udp_encap=sa.udp_encap, virtual_ip=sa.virtual_ip, identity=sa.peer_identity,
            created_at=now, soft_lifetime_s=self._child_lifetime_s,
            hard_lifetime_s=self._child_lifetime_s + self._child_lifetime_s // 10,
            replaces=replaces, policy=policy, mobike=sa.mobike is not None,
            virtual_ip6=sa.virtual_ip6,
        )
        sa.children[spi_in] = child
        return child

    # ---- requests from the peer -----------------------------------------------------------

    def _on_init_request(self, msg: Message, src: Address, dst: Address, now: float) -> None:
        self._drop("unexpected_ike_sa_init")

    def _on_request(
        self, msg: Message, sk: SkPayload | None, src: Address, dst: Address, now: float
    ) -> None:
        h = msg.header
        if h.exchange == ExchangeType.IKE_SA_INIT:
            self._on_init_request(msg, src, dst, now)
            return
        sa = self._sas.get(ike_sa_id(h.spi_i, h.spi_r))
        if sa is None:
            self._drop("unknown_ike_sa")  # §2.21.4: no answer to an unknown SPI pair
            return
        if h.from_initiator == sa.is_initiator:
            self._drop("initiator_flag")
            return
        if h.message_id == sa.peer_next_id - 1 and sa.last_response:
            if sa.state != IkeState.WAIT_ADDRESS and self._authentic(msg, sk, sa):
                self.counters.retransmits_answered += 1
                self._send(sa.last_response, dst, src)  # §2.1: resend, do not reprocess
            return
        if h.message_id != sa.peer_next_id:
            self._drop("message_id_outside_window")
            return
        if sa.state == IkeState.WAIT_ADDRESS:
            self._drop("waiting_for_address")
            return
        if sa.state == IkeState.WAIT_RADIUS:
            self._drop("waiting_for_radius")
            return
        if sk is None:
            self._drop("unprotected_request")
            return
        try:
            opened = self._open(sa, msg, sk, now)
        except IkeProtocolError as e:
            if e.notify is None:
                self._drop(e.reason if isinstance(e, FragmentError) else "integrity")
                return
            # authentic but unreadable inside (§2.21.2): answer with the error notify
            self.counters.exchanges[exchange_name(h.exchange)] += 1
            self.counters.errors[notify_name(e.notify)] += 1
            self._respond(sa, RequestContext(h, src, dst), [NotifyPayload(e.notify, e.data)])
            return
        if opened is None:
            return  # a fragment of a message not yet complete
        payloads = opened
        handler = REQUEST_HANDLERS.get((sa.state, h.exchange))
        self.counters.exchanges[exchange_name(h.exchange)] += 1
        if handler is None:
            self._drop("unexpected_exchange")
            return
        if sa.udp_encap and sa.mobike is None and (src, dst) != (sa.peer, sa.local):
            # §2.23: follow the peer behind a NAT (a MOBIKE peer moves by UPDATE_SA_ADDRESSES)
            sa.peer, sa.local = src, dst
        ctx = RequestContext(h, src, dst)
        try:
            response = getattr(self, handler)(sa, payloads, ctx, now)
        except IkeProtocolError as e:
            if e.notify is None:
                self._drop("silent")
                return
            self.counters.errors[notify_name(e.notify)] += 1
            response = [NotifyPayload(e.notify, e.data)]
        if response is not None:
            self._respond(sa, ctx, response)

    def _authentic(self, msg: Message, sk: SkPayload | None, sa: IkeSa) -> bool:
        """A retransmission is answered only if it passes the integrity check (no reflection
        of cached answers for forged datagrams); IKE_SA_INIT has no SK to check."""
        if msg.header.exchange == ExchangeType.IKE_SA_INIT:
            return msg.raw == sa.init_request
        if sk is None:
            return False
        if isinstance(sk, SkfPayload) and sk.fragment_number != 1:
            return False  # RFC 7383 §2.6.1: answer a fragmented retransmission once
        try:
            open_plain(msg, sk, self._keys_in(sa))
        except IkeProtocolError:
            self._drop("integrity")
            return False
        return True

    def _respond(self, sa: IkeSa, ctx: RequestContext, payloads: list[Payload]) -> None:
        flags = Flag.RESPONSE | (Flag.INITIATOR if sa.is_initiator else 0)
        h = Header(sa.spi_i, sa.spi_r, 0, ctx.header.exchange, flags, ctx.header.message_id)
        data = self._seal(sa, h, payloads)
        sa.last_response = data
        sa.peer_next_id = ctx.header.message_id + 1
        if sa.state != IkeState.DELETED:
            self._events.append(IkeSaUpdated(sa.id))
        self._send(data, ctx.dst, ctx.src)

    def _on_create_child_request(
        self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext, now: float
    ) -> list[Payload] | None:
        raise IkeProtocolError("this endpoint makes no Child SAs on request",
                                  Notify.NO_ADDITIONAL_SAS)

    def _on_informational_request(
        self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext, now: float
    ) -> list[Payload] | None:
        """DELETE of the IKE SA or of Child SAs (§1.4.1), or an empty liveness check."""
        response: list[Payload] = []
        for p in payloads:
            if not isinstance(p, DeletePayload):
                continue  # unknown status notifies are ignored (§3.10.1)
            if p.protocol == ProtocolId.IKE:
                self._remove_sa(sa, "deleted by peer")
                return []
            if p.protocol != ProtocolId.ESP:
                continue
            ours = []
            for spi in p.spis:
                child = sa.child_by_spi_out(int.from_bytes(spi, "big")) if len(spi) == 4 else None
                if child is not None:
                    del sa.children[child.spi_in]
                    self._events.append(ChildSaDeleted(sa.id, child.spi_in))
                    ours.append(child.spi_in.to_bytes(4, "big"))
            if ours:
                response.append(DeletePayload(ProtocolId.ESP, tuple(ours)))
        return response

    # ---- our own requests -----------------------------------------------------------------

    def _start_request(
        self, sa: IkeSa, exchange: int, payloads: list[Payload], kind: str,
        ctx: dict[str, Any], now: float,
    ) -> None:
        flags = Flag.INITIATOR if sa.is_initiator else 0
        h = Header(sa.spi_i, sa.spi_r, 0, exchange, flags, sa.my_next_id)
        data = self._seal(sa, h, payloads)
        sa.my_next_id += 1
        sa.outstanding, sa.outstanding_kind, sa.outstanding_ctx = data, kind, ctx
        sa.retransmit_at = now + self._retransmit_timeout_s
        sa.retransmits = 0
        self._schedule(sa)
        self._events.append(IkeSaUpdated(sa.id))
        self._send(data, sa.local, sa.peer)

    def _on_init_response(self, msg: Message, src: Address, dst: Address, now: float) -> None:
        self._drop("unexpected_response")

    def _on_response(
        self, msg: Message, sk: SkPayload | None, src: Address, dst: Address, now: float
    ) -> None:
        h = msg.header
        if h.exchange == ExchangeType.IKE_SA_INIT:
            self._on_init_response(msg, src, dst, now)
            return
        sa = self._sas.get(ike_sa_id(h.spi_i, h.spi_r))
        if sa is None:
            self._drop("unknown_ike_sa")
            return
        if h.from_initiator == sa.is_initiator or sk is None:
            self._drop("initiator_flag" if sk else "unprotected_response")
            return
        if not sa.outstanding or h.message_id != sa.my_next_id - 1:
            self._drop("unexpected_response")
            return
        try:
            opened = self._open(sa, msg, sk, now)
        except IkeProtocolError as e:
            if isinstance(e, FragmentError):
                self._drop(e.reason)
            else:
                self._drop("integrity" if e.notify is None else "malformed")
            return
        if opened is None:
            return  # a fragment of an answer not yet complete
        payloads = opened
        kind, ctx = sa.outstanding_kind, sa.outstanding_ctx
        sa.outstanding, sa.outstanding_kind, sa.outstanding_ctx = b"", "", {}
        sa.retransmit_at, sa.retransmits = None, 0
        errors = [p for p in payloads if isinstance(p, NotifyPayload) and p.type < 16384]
        # an IKE_AUTH answer with AUTH made the IKE SA even if its Child SA failed (§1.2)
        ike_sa_made = kind == "auth" and find(payloads, AuthPayload) is not None
        if errors and kind != "delete_ike" and not ike_sa_made:
            n = errors[0].type
            self.counters.errors["received_" + notify_name(n)] += 1
            self._events.append(ExchangeFailed(sa.id, h.exchange, n, "peer answered with an error"))
            self._on_request_failed(sa, kind, ctx, n, now)
            self._after_exchange(sa, now)
            return
        try:
            getattr(self, f"_on_{kind}_response")(sa, payloads, ctx, now)
        except IkeProtocolError as e:
            reason = str(e)
            self.counters.errors["bad_response"] += 1
            self._events.append(ExchangeFailed(sa.id, h.exchange, e.notify, reason))
            self._on_request_failed(sa, kind, ctx, e.notify, now)
        self._after_exchange(sa, now)

    def _after_exchange(self, sa: IkeSa, now: float) -> None:
        """Hook: our request's exchange ended (its window is free again)."""

    def _on_request_failed(
        self, sa: IkeSa, kind: str, ctx: dict[str, Any], notify: int | None, now: float
    ) -> None:
        """A request of ours got an error. IKE SA establishment failures end the SA."""
        if kind in ("init", "auth"):
            self._remove_sa(sa, "establishment failed")
        else:
            self._events.append(IkeSaUpdated(sa.id))

    def _on_delete_ike_response(
        self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any], now: float
    ) -> None:
        self._remove_sa(sa, "deleted")

    def _on_delete_child_response(
        self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any], now: float
    ) -> None:
        child = sa.children.pop(ctx["spi_in"], None)
        if child is not None:
            self._events.append(ChildSaDeleted(sa.id, child.spi_in))
        self._events.append(IkeSaUpdated(sa.id))

    def _on_liveness_response(
        self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any], now: float
    ) -> None:
        self._events.append(IkeSaUpdated(sa.id))


def _due(sa: IkeSa) -> float | None:
    times = [t for t in (sa.retransmit_at if sa.outstanding else None, sa.expires_at)
             if t is not None]
    return min(times) if times else None

