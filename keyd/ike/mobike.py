"""MOBIKE (RFC 4555): a client that moves announces its new address in an INFORMATIONAL.

Both roles, as one mixin of the endpoint:

- IKE_AUTH: the initiator sends MOBIKE_SUPPORTED; the responder (if `mobike` is on)
  answers with it, and the IKE SA is a MOBIKE one from then on (`IkeSa.mobike` not None):
  its addresses change only by UPDATE_SA_ADDRESSES, never by where a request came from
  (the §2.23 follow of RFC 7296 is off for it).
- UPDATE_SA_ADDRESSES (§3.5): the request's own source and destination are the new
  addresses. Only an authenticated request counts, and only the most recent one: a request
  whose message ID is not above the last update's changes nothing (a retransmission is
  answered from the cache anyway). NAT detection runs again (§3.5, with the IKE SA's SPIs);
  NO_NATS_ALLOWED with addresses that differ from what arrived is refused with
  UNEXPECTED_NAT_DETECTED (§3.9). COOKIE2 in any INFORMATIONAL request is echoed (§3.7).
- Return routability (§3.6, §5.2.4): the IKE SA answers at once from its new address, but
  the Child SAs (where the nodes send ESP) move only to an address that proved it receives:
  the address the IKE SA was made from, one verified before, or one that answered our
  INFORMATIONAL with a fresh COOKIE2. A COOKIE2 answered wrong closes the IKE SA.

What the check needs survives the instance: the check in flight (its COOKIE2, message ID
and address) is part of the exported IKE SA, and an instance that imports the SA sends it
again with the same message ID (a peer that answered it already answers from its cache).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import constant_time

from .constants import ExchangeType, Flag, Notify
from .core import IkeEndpoint
from .datagram import RequestContext, nat_hash, packed_ip
from .errors import IkeProtocolError, IkeUsageError
from .events import ExchangeFailed, IkeSaMoved, IkeSaUpdated
from .ikesa import Address, IkeSa
from .message import Header
from .payloads import NotifyPayload, Payload, notifies
from .protect import seal

COOKIE2_LEN = 16  # §3.7: 8 to 64 octets, unpredictable
VERIFIED_KEPT = 4  # addresses remembered as verified per IKE SA (a client moves back and forth)


def mobike_state(peer: Address) -> dict[str, Any]:
    """A new MOBIKE IKE SA's state: its first address is verified (the handshake came from
    it and was answered there)."""
    return {"update_id": -1, "verified": [peer[0]], "check": None, "esp_peer": list(peer)}


def no_nats_data(src: Address, dst: Address) -> bytes:
    """§3.9: the addresses and ports the sender sent from and to."""
    return packed_ip(src[0]) + packed_ip(dst[0]) + src[1].to_bytes(2, "big") \
        + dst[1].to_bytes(2, "big")


class Mobility(IkeEndpoint):
    """The MOBIKE exchanges of both roles (see the module docstring)."""

    mobike_enabled: bool = True  # a role's config switches it off

    # ---- initiator: announce a move -------------------------------------------------------

    def update_sa_addresses(self, ike_sa_id: str, local: Address, remote: Address, now: float,
                            no_nats: bool = False) -> None:
        """§3.5, initiator: the IKE SA moves to `local` → `remote`; tell the peer (with NAT
        detection, COOKIE2, and NO_NATS_ALLOWED if `no_nats`)."""
        sa = self._requestable(ike_sa_id)
        if sa.mobike is None:
            raise IkeUsageError(f"IKE SA {ike_sa_id} did not negotiate MOBIKE")
        sa.local, sa.peer = local, remote
        cookie2 = self._random(COOKIE2_LEN)
        payloads: list[Payload] = [
            NotifyPayload(Notify.UPDATE_SA_ADDRESSES),
            NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, sa.spi_r, local)),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                          nat_hash(sa.spi_i, sa.spi_r, remote)),
            NotifyPayload(Notify.COOKIE2, cookie2),
        ]
        if no_nats:
            payloads.append(NotifyPayload(Notify.NO_NATS_ALLOWED, no_nats_data(local, remote)))
        self._start_request(sa, ExchangeType.INFORMATIONAL, payloads, "mobike_update",
                            {"cookie2": cookie2}, now)

    def _on_mobike_update_response(self, sa: IkeSa, payloads: list[Payload],
                                   ctx: dict[str, Any], now: float) -> None:
        if self._cookie2_echoed(sa, payloads, ctx["cookie2"]):
            self._move_children(sa, sa.peer)

    # ---- both: negotiation in IKE_AUTH ----------------------------------------------------

    def _mobike_offer(self, sa: IkeSa, request: list[Payload]) -> list[Payload]:
        """Responder, final IKE_AUTH answer: MOBIKE_SUPPORTED if the peer sent it (§3.3)."""
        if not self.mobike_enabled or not notifies(request, Notify.MOBIKE_SUPPORTED):
            return []
        sa.mobike = mobike_state(sa.peer)
        return [NotifyPayload(Notify.MOBIKE_SUPPORTED)]

    def _mobike_agreed(self, sa: IkeSa, response: list[Payload]) -> None:
        """Initiator, IKE_AUTH answer: MOBIKE is on if the responder said so too."""
        if self.mobike_enabled and notifies(response, Notify.MOBIKE_SUPPORTED):
            sa.mobike = mobike_state(sa.peer)

    # ---- both: INFORMATIONAL requests ----------------------------------------------------

    def _on_informational_request(
        self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext, now: float
    ) -> list[Payload] | None:
        if sa.mobike is not None and not sa.is_initiator \
                and notifies(payloads, Notify.UPDATE_SA_ADDRESSES):
            return self._on_update_sa_addresses(sa, payloads, ctx, now)
        response = super()._on_informational_request(sa, payloads, ctx, now)
        if response is not None:
            if sa.mobike is not None and sa.id in self._sas:
                # §3.10: a MOBIKE initiator checks its NAT mapping with NAT detection in
                # its liveness checks; the answer carries ours
                response += self._nat_detection(sa, payloads, ctx.src, ctx.dst)[1]
            response += notifies(payloads, Notify.COOKIE2)[:1]  # §3.7: copied as is
        return response

    def _nat_detection(self, sa: IkeSa, payloads: list[Payload], src: Address,
                       dst: Address) -> tuple[tuple[bool, bool], list[Payload]]:
        """NAT detection with the IKE SA's SPIs (§3.5): (peer behind a NAT, we behind a
        NAT) and the answer's two notifies (none if the request had none)."""
        nat_src = [n.data for n in notifies(payloads, Notify.NAT_DETECTION_SOURCE_IP)]
        nat_dst = [n.data for n in notifies(payloads, Notify.NAT_DETECTION_DESTINATION_IP)]
        if not (nat_src and nat_dst):
            return (False, False), []
        peer_nat = nat_hash(sa.spi_i, sa.spi_r, src) not in nat_src
        local_nat = nat_hash(sa.spi_i, sa.spi_r, dst) not in nat_dst
        seen = (src[0], src[1] ^ 0xFFFF) if self._fakes_nat() and not peer_nat else src
        return (peer_nat, local_nat), [
            NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, sa.spi_r, dst)),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                          nat_hash(sa.spi_i, sa.spi_r, seen))]

    def _on_update_sa_addresses(self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext,
                                now: float) -> list[Payload] | None:
        """§3.5, responder."""
        state = sa.mobike
        assert state is not None
        src, dst, mid = ctx.src, ctx.dst, ctx.header.message_id
        cookie2 = notifies(payloads, Notify.COOKIE2)[:1]
        if mid <= state["update_id"]:
            self._drop("mobike_update_not_latest")
            return [*cookie2]
        (peer_nat, local_nat), reply = self._nat_detection(sa, payloads, src, dst)
        no_nats = notifies(payloads, Notify.NO_NATS_ALLOWED)
        if no_nats and no_nats[0].data != no_nats_data(src, dst):
            raise IkeProtocolError("addresses changed on the way (NO_NATS_ALLOWED)",
                                      Notify.UNEXPECTED_NAT_DETECTED)
        state["update_id"] = mid
        sa.peer, sa.local = src, dst
        sa.peer_behind_nat = peer_nat
        # ESP stays in UDP once it was (the data plane steers ESP-in-UDP by SPI), and starts
        # if a NAT appeared on the new path
        sa.udp_encap = sa.udp_encap or peer_nat or local_nat
        self.counters.exchanges["UPDATE_SA_ADDRESSES"] += 1
        self._respond(sa, ctx, [*reply, *cookie2])
        if src[0] in state["verified"]:
            state["check"] = None
            self._move_children(sa, src)
        else:
            self._start_check(sa, now)
        return None

    def _fakes_nat(self) -> bool:
        """Whether this endpoint fakes a NAT so that ESP stays in UDP (keyd's
        `force_udp_encap`)."""
        return False

    # ---- return routability (§3.6) --------------------------------------------------------

    def _start_check(self, sa: IkeSa, now: float) -> None:
        """Ask the new address for a fresh COOKIE2 before ESP goes there; one in flight
        already is replaced (only the latest address counts)."""
        state = sa.mobike
        assert state is not None
        cookie2 = self._random(COOKIE2_LEN)
        state["check"] = {"cookie2": cookie2.hex(), "peer": list(sa.peer),
                          "local": list(sa.local), "message_id": None}
        if sa.outstanding:
            return  # sent when our exchange in flight ends (`_after_exchange`)
        self._send_check(sa, now)

    def _send_check(self, sa: IkeSa, now: float) -> None:
        check = sa.mobike["check"] if sa.mobike else None
        assert check is not None
        check["message_id"] = sa.my_next_id
        self.counters.exchanges["RETURN_ROUTABILITY_CHECK"] += 1
        self._start_request(sa, ExchangeType.INFORMATIONAL,
                            [NotifyPayload(Notify.COOKIE2, bytes.fromhex(check["cookie2"]))],
                            "mobike_check", dict(check), now)

    def _after_exchange(self, sa: IkeSa, now: float) -> None:
        """Our request's exchange ended: send a check that waited for the window."""
        check = sa.mobike["check"] if sa.mobike else None
        if check is not None and check["message_id"] is None and sa.id in self._sas \
                and not sa.outstanding:
            self._send_check(sa, now)

    def _on_mobike_check_response(self, sa: IkeSa, payloads: list[Payload],
                                  ctx: dict[str, Any], now: float) -> None:
        """The answer to the check `ctx` describes (its COOKIE2, address, message ID). If
        the client moved again meanwhile, this address is verified all the same, and the
        newer move's check (if any) goes out next."""
        state = sa.mobike
        if state is None or not self._cookie2_echoed(sa, payloads,
                                                     bytes.fromhex(ctx["cookie2"])):
            return
        peer = (str(ctx["peer"][0]), int(ctx["peer"][1]))
        state["verified"] = [peer[0], *(a for a in state["verified"] if a != peer[0])]
        del state["verified"][VERIFIED_KEPT:]
        self.counters.exchanges["RETURN_ROUTABILITY_PASSED"] += 1
        check = state["check"]
        if check is not None and check["message_id"] == ctx["message_id"]:
            state["check"] = None
        if sa.peer == peer:
            state["check"] = None
            self._move_children(sa, peer)
        else:
            self._events.append(IkeSaUpdated(sa.id))

    def _cookie2_echoed(self, sa: IkeSa, payloads: list[Payload], sent: bytes) -> bool:
        """§3.7: the answer must carry our COOKIE2 unchanged, or the IKE SA is closed."""
        got = notifies(payloads, Notify.COOKIE2)
        if got and constant_time.bytes_eq(got[0].data, sent):
            return True
        self.counters.errors["cookie2_mismatch"] += 1
        self._events.append(ExchangeFailed(sa.id, ExchangeType.INFORMATIONAL, None,
                                           "COOKIE2 answered wrong: IKE SA closed"))
        self._remove_sa(sa, "COOKIE2 mismatch")
        return False

    def _esp_peer(self, sa: IkeSa) -> Address:
        """A Child SA made while a move is being checked (the client rekeys, say) sends to
        the address verified last, and moves with the others once the check passes."""
        esp = sa.mobike.get("esp_peer") if sa.mobike else None
        return (str(esp[0]), int(esp[1])) if esp else sa.peer

    def _move_children(self, sa: IkeSa, peer: Address) -> None:
        """The Child SAs follow the IKE SA to `peer`; the shell writes both in one step."""
        if sa.mobike is not None:
            sa.mobike["esp_peer"] = list(peer)
        sa.children = {spi: replace(c, peer_addr=peer[0], peer_port=peer[1],
                                    udp_encap=sa.udp_encap)
                       for spi, c in sa.children.items()}
        self._events.append(IkeSaUpdated(sa.id))
        self._events.append(IkeSaMoved(sa.id, peer[0], peer[1], tuple(sa.children.values())))

    # ---- continuing on another instance ---------------------------------------------------

    def _imported(self, sa: IkeSa) -> None:
        """A check the writing instance started is sent again from here: the same request
        (same message ID, same COOKIE2) if it was sent, else a new one; due at once."""
        super()._imported(sa)
        check = sa.mobike["check"] if sa.mobike else None
        if check is None or sa.outstanding:
            return
        if check["message_id"] is None:
            check["message_id"] = sa.my_next_id
            sa.my_next_id += 1
        h = Header(sa.spi_i, sa.spi_r, 0, ExchangeType.INFORMATIONAL,
                   Flag.INITIATOR if sa.is_initiator else 0, int(check["message_id"]))
        sa.outstanding = seal(h, [NotifyPayload(Notify.COOKIE2, bytes.fromhex(check["cookie2"]))],
                              self._keys_out(sa), self._random)
        sa.outstanding_kind, sa.outstanding_ctx = "mobike_check", dict(check)
        sa.retransmit_at, sa.retransmits = 0.0, 0
        self._schedule(sa)
