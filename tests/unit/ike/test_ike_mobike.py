"""MOBIKE (RFC 4555) driven with the project's initiator and a virtual clock."""

from __future__ import annotations

from typing import Any

import pytest
from ikepair import CLIENT, VIP, Clock, Side, psk_pair, run, transfer

from keyd.ike import IkeSaEstablished, IkeUsageError, Responder
from keyd.ike.constants import Notify
from keyd.ike.datagram import RequestContext, nat_hash
from keyd.ike.events import ChildSaEstablished, ExchangeFailed, IkeSaDeleted, IkeSaMoved
from keyd.ike.ikesa import IkeSa
from keyd.ike.initiator import Initiator
from keyd.ike.message import pull_message
from keyd.ike.payloads import NotifyPayload, Payload
from keyd.ike.protect import open_sk

NATT_VIP = (VIP[0], 4500)
MOVED = ("198.51.100.20", 4500)   # the client's second address (LTE after Wi-Fi)


def established(**server_kw: Any) -> tuple[Side, Side, Clock, str]:
    client, server = psk_pair(**server_kw)
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert client.of(IkeSaEstablished) and server.of(IkeSaEstablished)
    return client, server, clock, server.of(IkeSaEstablished)[0].ike_sa_id


def move(client: Side, server: Side, clock: Clock, ike_sa_id: str,
         to: tuple[str, int] = MOVED) -> None:
    client.endpoint.update_sa_addresses(ike_sa_id, to, NATT_VIP, clock.now)


def test_mobike_is_negotiated_in_ike_auth_and_marks_the_child_sas() -> None:
    client, server, _, sa_id = established()
    assert server.endpoint._sas[sa_id].mobike is not None
    assert client.endpoint.sa.mobike is not None
    assert all(e.child.mobike for e in server.of(ChildSaEstablished))


def test_no_mobike_when_the_responder_has_it_off() -> None:
    client, server, clock, sa_id = established(mobike=False)
    assert server.endpoint._sas[sa_id].mobike is None
    assert client.endpoint.sa.mobike is None
    with pytest.raises(IkeUsageError):
        move(client, server, clock, sa_id)


def test_a_move_to_a_new_address_is_checked_before_the_child_sas_follow() -> None:
    client, server, clock, sa_id = established()
    spis = {c.child.spi_in for c in server.of(ChildSaEstablished)}
    move(client, server, clock, sa_id)
    [update] = client.drain()
    assert update.src == MOVED
    server.endpoint.receive_datagram(update.data, update.src, update.dst, clock.now)
    out = server.drain()
    # the answer goes to the new address at once; then the return routability check
    assert [d.dst for d in out] == [MOVED, MOVED]
    assert server.endpoint.export_ike_sa(sa_id)["peer"] == list(MOVED)
    assert not server.of(IkeSaMoved)  # the nodes keep sending to the verified address
    assert server.endpoint.counters.exchanges["RETURN_ROUTABILITY_CHECK"] == 1
    for d in out:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    client.pull_events()
    assert client.of(IkeSaMoved)   # its own update answered
    transfer(client, server, clock.now)   # the check's answer, COOKIE2 echoed
    server.pull_events()
    [moved] = server.of(IkeSaMoved)
    assert (moved.peer_addr, moved.peer_port) == MOVED
    assert {c.spi_in for c in moved.children} == spis   # same Child SAs, same SPIs
    assert all((c.peer_addr, c.peer_port) == MOVED for c in moved.children)
    assert server.endpoint._sas[sa_id].mobike["verified"][0] == MOVED[0]
    assert server.endpoint.has_ike_sa(sa_id) and client.endpoint.sa.id == sa_id


def test_moving_back_to_a_verified_address_needs_no_check() -> None:
    client, server, clock, sa_id = established()
    move(client, server, clock, sa_id)
    run(client, server, clock)
    assert len(server.of(IkeSaMoved)) == 1
    move(client, server, clock, sa_id, to=(CLIENT[0], 4500))
    transfer(client, server, clock.now)
    server.pull_events()
    assert len(server.of(IkeSaMoved)) == 2   # in the step that answers the update
    assert server.endpoint.counters.exchanges["RETURN_ROUTABILITY_CHECK"] == 1


def test_without_mobike_a_request_from_elsewhere_does_not_move_a_mobike_sa() -> None:
    """§3.5: only UPDATE_SA_ADDRESSES moves a MOBIKE IKE SA (no §2.23 follow)."""
    client, server, clock, sa_id = established()
    client.endpoint.liveness(clock.now)
    for d in client.drain():
        server.endpoint.receive_datagram(d.data, ("192.0.2.99", 31000), d.dst, clock.now)
    out = server.drain()
    assert out[0].dst == ("192.0.2.99", 31000)   # answered where it came from
    assert server.endpoint.export_ike_sa(sa_id)["peer"] != ["192.0.2.99", 31000]


def test_a_retransmitted_older_update_from_another_address_changes_nothing() -> None:
    client, server, clock, sa_id = established()
    move(client, server, clock, sa_id)
    [update] = client.drain()
    server.endpoint.receive_datagram(update.data, update.src, update.dst, clock.now)
    server.drain()
    # the same (authentic) request again, from an address the client left: the cached
    # answer goes there, the IKE SA stays where the latest update put it
    server.endpoint.receive_datagram(update.data, ("192.0.2.77", 4500), update.dst, clock.now)
    again = server.drain()
    assert [d.dst for d in again] == [("192.0.2.77", 4500)]
    assert server.endpoint.export_ike_sa(sa_id)["peer"] == list(MOVED)


def test_no_nats_allowed_refuses_an_update_that_crossed_a_nat() -> None:
    client, server, clock, sa_id = established()
    client.endpoint.update_sa_addresses(sa_id, MOVED, NATT_VIP, clock.now, no_nats=True)
    [update] = client.drain()
    natted = ("203.0.113.77", 61000)   # a NAT rewrote the source on the way
    server.endpoint.receive_datagram(update.data, natted, update.dst, clock.now)
    [answer] = server.drain()
    assert server.endpoint.counters.errors["UNEXPECTED_NAT_DETECTED"] == 1
    assert server.endpoint.export_ike_sa(sa_id)["peer"] != list(natted)
    client.endpoint.receive_datagram(answer.data, answer.src, MOVED, clock.now)  # NAT back
    client.pull_events()
    [failed] = client.of(ExchangeFailed)
    assert failed.notify == Notify.UNEXPECTED_NAT_DETECTED
    assert not client.of(IkeSaMoved)


def test_nat_detection_in_the_update_answer() -> None:
    client, server, clock, sa_id = established(force_udp_encap=False)
    move(client, server, clock, sa_id)
    [update] = client.drain()
    server.endpoint.receive_datagram(update.data, ("203.0.113.200", 40000), update.dst,
                                     clock.now)
    sa = server.endpoint._sas[sa_id]
    assert sa.peer_behind_nat and sa.udp_encap


class _WrongCookie2(Initiator):
    """A peer that answers a return routability check with another COOKIE2."""

    def _on_informational_request(self, sa: IkeSa, payloads: list[Payload],
                                  ctx: RequestContext, now: float) -> list[Payload] | None:
        got = super()._on_informational_request(sa, payloads, ctx, now)
        return [NotifyPayload(Notify.COOKIE2, b"\x00" * 16) if isinstance(p, NotifyPayload)
                and p.type == Notify.COOKIE2 else p for p in (got or [])]


def test_a_wrong_cookie2_closes_the_ike_sa() -> None:
    client, server, clock, sa_id = established()
    client.endpoint.__class__ = _WrongCookie2
    move(client, server, clock, sa_id)
    run(client, server, clock)
    assert server.endpoint.counters.errors["cookie2_mismatch"] == 1
    assert not server.endpoint.has_ike_sa(sa_id)
    assert [e.reason for e in server.of(IkeSaDeleted)] == ["COOKIE2 mismatch"]
    assert not server.of(IkeSaMoved)


def _other_instance(server: Side, sa_id: str) -> Side:
    """A second keyd with the same configuration that continues the exported IKE SA."""
    other = Side(Responder(server.endpoint.config))
    other.endpoint.import_ike_sa(server.endpoint.export_ike_sa(sa_id))
    return other


def test_another_instance_continues_a_check_in_flight() -> None:
    """The instance that answered the update dies before the check is answered: the one
    that imports the IKE SA sends the same check again (same message ID, same COOKIE2)."""
    client, server, clock, sa_id = established()
    move(client, server, clock, sa_id)
    transfer(client, server, clock.now)
    out = server.drain()   # the answer and the check; the instance dies now
    other = _other_instance(server, sa_id)
    for d in out[:1]:   # the check is lost with the instance
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    other.endpoint.handle_timer(clock.advance(0.1))
    [check] = other.drain()
    assert check.dst == MOVED
    client.endpoint.receive_datagram(check.data, check.src, check.dst, clock.now)
    transfer(client, other, clock.now)
    other.pull_events()
    [moved] = other.of(IkeSaMoved)
    assert (moved.peer_addr, moved.peer_port) == MOVED


def test_another_instance_gets_the_cached_answer_to_a_check_already_answered() -> None:
    client, server, clock, sa_id = established()
    move(client, server, clock, sa_id)
    transfer(client, server, clock.now)
    transfer(server, client, clock.now)   # answer and check reach the client
    client.drain()                        # its answer to the check is lost
    other = _other_instance(server, sa_id)
    other.endpoint.handle_timer(clock.advance(0.1))
    transfer(other, client, clock.now)    # the check again: a retransmission for it
    assert client.endpoint.counters.retransmits_answered == 1
    transfer(client, other, clock.now)
    other.pull_events()
    assert len(other.of(IkeSaMoved)) == 1


def test_the_mobike_state_survives_export_and_import() -> None:
    client, server, clock, sa_id = established()
    move(client, server, clock, sa_id)
    run(client, server, clock)
    other = _other_instance(server, sa_id)
    assert other.endpoint._sas[sa_id].mobike == server.endpoint._sas[sa_id].mobike
    move(client, other, clock, sa_id, to=(CLIENT[0], 4500))   # back: verified already
    transfer(client, other, clock.now)
    other.pull_events()
    assert len(other.of(IkeSaMoved)) == 1


def test_a_liveness_check_with_nat_detection_is_answered_with_ours() -> None:
    """§3.10: the initiator checks its NAT mapping in a liveness check (strongSwan does);
    keyd's answer carries NAT detection, with the NAT it fakes for ESP in UDP."""
    client, server, clock, sa_id = established()
    sa = client.endpoint.sa
    client.endpoint._start_request(sa, 37, [
        NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, sa.spi_r, sa.local)),
        NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                      nat_hash(sa.spi_i, sa.spi_r, sa.peer))], "liveness", {}, clock.now)
    [request] = client.drain()
    server.endpoint.receive_datagram(request.data, request.src, request.dst, clock.now)
    [answer] = server.drain()
    ssa = server.endpoint._sas[sa_id]
    msg, sk = pull_message(answer.data[4:])
    got = open_sk(msg, sk, client.endpoint._keys_in(sa))
    types = [p.type for p in got if isinstance(p, NotifyPayload)]
    assert types == [Notify.NAT_DETECTION_SOURCE_IP, Notify.NAT_DETECTION_DESTINATION_IP]
    assert got[0].data == nat_hash(ssa.spi_i, ssa.spi_r, request.dst)
    assert got[1].data != nat_hash(ssa.spi_i, ssa.spi_r, request.src)   # force_udp_encap


def test_a_child_sa_made_during_the_check_sends_to_the_verified_address() -> None:
    """A client that rekeys its Child SA right after the move (strongSwan with
    kernel-libipsec does): the new Child SA waits at the verified address, then moves."""
    client, server, clock, sa_id = established()
    old_spi = server.of(ChildSaEstablished)[0].child.spi_in
    move(client, server, clock, sa_id)
    transfer(client, server, clock.now)
    out = server.drain()
    client.endpoint.receive_datagram(out[0].data, out[0].src, out[0].dst, clock.now)  # answer
    client_spi = next(c.spi_in for c in client.endpoint.sa.children.values())
    client.drain()
    client.endpoint.rekey_child(client_spi, clock.now)
    transfer(client, server, clock.now)
    server.pull_events()
    [_, rekeyed] = server.of(ChildSaEstablished)
    assert (rekeyed.child.peer_addr, rekeyed.child.peer_port) == (CLIENT[0], 4500)
    transfer(server, client, clock.now)
    client.endpoint.receive_datagram(out[1].data, out[1].src, out[1].dst, clock.now)  # check
    run(client, server, clock)
    moved = server.of(IkeSaMoved)[-1]
    assert {c.spi_in for c in moved.children} >= {rekeyed.child.spi_in}
    assert all((c.peer_addr, c.peer_port) == MOVED for c in moved.children)
    assert old_spi not in server.endpoint._sas[sa_id].children


def test_mobike_survives_an_ike_sa_rekey() -> None:
    client, server, clock, sa_id = established()
    client.endpoint.rekey_ike(clock.now)
    run(client, server, clock)
    new_id = client.endpoint.sa.id
    assert new_id != sa_id and server.endpoint._sas[new_id].mobike is not None
    move(client, server, clock, new_id)
    run(client, server, clock)
    [moved] = server.of(IkeSaMoved)
    assert moved.ike_sa_id == new_id and (moved.peer_addr, moved.peer_port) == MOVED


def test_a_second_move_while_the_first_is_checked() -> None:
    """The client moves again before answering the first check: the first answer verifies
    its own address only, the second move's check follows, and the Child SAs end up at the
    latest address."""
    client, server, clock, sa_id = established()
    move(client, server, clock, sa_id)
    transfer(client, server, clock.now)
    first = server.drain()            # answer + check to MOVED; held back for now
    client.endpoint.receive_datagram(first[0].data, first[0].src, first[0].dst, clock.now)
    later = ("198.51.100.30", 4500)
    move(client, server, clock, sa_id, to=later)
    transfer(client, server, clock.now)   # the second update: answered, its check queued
    second = server.drain()
    assert [d.dst for d in second] == [later]
    client.endpoint.receive_datagram(second[0].data, second[0].src, second[0].dst, clock.now)
    client.endpoint.receive_datagram(first[1].data, first[1].src, first[1].dst, clock.now)
    run(client, server, clock)            # first check answered, then the second one
    assert server.endpoint.counters.exchanges["RETURN_ROUTABILITY_PASSED"] == 2
    assert server.endpoint.has_ike_sa(sa_id)
    moved = server.of(IkeSaMoved)[-1]
    assert (moved.peer_addr, moved.peer_port) == later
    assert server.endpoint._sas[sa_id].mobike["verified"][:2] == [later[0], MOVED[0]]
