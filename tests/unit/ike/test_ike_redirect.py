"""Redirect (RFC 5685) driven with the project's initiator and a virtual clock."""

from __future__ import annotations

from typing import Any

import pytest
from ikepair import CLIENT, VIP, Clock, Side, psk_pair, run, transfer

from keyd.ike import IkeSaEstablished, IkeUsageError
from keyd.ike.buffer import Buffer
from keyd.ike.constants import Notify
from keyd.ike.errors import IkeProtocolError
from keyd.ike.events import Redirected
from keyd.ike.payloads import NotifyPayload
from keyd.ike.redirect import gateway_identity, parse_redirect, pull_gateway, redirect_payload

OTHER = ("198.51.100.50", 500)   # the gateway clients are sent to


def established(**kw: Any) -> tuple[Side, Side, Clock, str]:
    client, server = psk_pair(**kw)
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    return client, server, clock, server.of(IkeSaEstablished)[0].ike_sa_id


def test_gateway_identities_round_trip() -> None:
    for gw in ("198.51.100.50", "2001:db8::5", "vpn2.example.net"):
        assert pull_gateway(Buffer(gateway_identity(gw))) == gw
    assert parse_redirect(redirect_payload("198.51.100.50", b"nonce").data) == \
        ("198.51.100.50", b"nonce")
    for bad in (b"\x01\x03abc", b"\x02\x04abcd", b"\x03\x00", b"\x07\x01a", b"\x01"):
        with pytest.raises(IkeProtocolError):
            pull_gateway(Buffer(bad))
    with pytest.raises(IkeUsageError):
        gateway_identity("")


def test_a_new_client_is_redirected_in_ike_sa_init_and_connects_there() -> None:
    client, server = psk_pair(redirect_to=OTHER[0])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    [redirected] = client.of(Redirected)
    assert (redirected.gateway, redirected.during) == (OTHER[0], "ike_sa_init")
    assert not server.endpoint.ike_sa_ids()   # no state for a redirected client
    assert server.endpoint.counters.exchanges["REDIRECT"] == 1
    assert client.endpoint.ike_sa_ids() == []
    # the client goes to the other gateway, saying where it comes from
    again, other = psk_pair()
    again.endpoint.connect(CLIENT, OTHER, clock.now, redirected_from=VIP[0])
    run(again, other, clock)
    assert other.of(IkeSaEstablished)
    sa_id = other.of(IkeSaEstablished)[0].ike_sa_id
    assert other.endpoint.export_ike_sa(sa_id)["redirect_supported"]


def test_a_client_without_redirect_support_is_served() -> None:
    client, server = psk_pair(redirect_to=OTHER[0], client_kw={"redirect": False})
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert client.of(IkeSaEstablished) and not client.of(Redirected)


def test_a_redirect_without_the_clients_nonce_is_ignored() -> None:
    client, server = psk_pair(redirect_to=OTHER[0])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    [answer] = server.drain()
    ni = client.endpoint.sa.ni
    forged = answer.data.replace(ni, bytes(len(ni)))   # an off-path guess of the answer
    client.endpoint.receive_datagram(forged, answer.src, answer.dst, clock.now)
    assert client.endpoint.counters.drops["redirect_nonce_mismatch"] == 1
    assert not client.pull_events() and client.endpoint.ike_sa_ids()   # still waiting


def test_an_established_client_is_asked_to_move() -> None:
    client, server, clock, sa_id = established()
    server.endpoint.redirect(sa_id, "vpn2.example.net", clock.now)
    run(client, server, clock)
    [told] = client.of(Redirected)
    assert (told.ike_sa_id, told.gateway, told.during) == (sa_id, "vpn2.example.net",
                                                           "informational")
    [done] = server.of(Redirected)
    assert done.during == "informational"
    assert server.endpoint.has_ike_sa(sa_id)   # until the client deletes it


def test_a_client_that_cannot_follow_is_not_asked() -> None:
    _, server, clock, sa_id = established(client_kw={"redirect": False})
    with pytest.raises(IkeUsageError):
        server.endpoint.redirect(sa_id, OTHER[0], clock.now)


def test_a_malformed_redirect_from_the_gateway_is_counted() -> None:
    client, server, clock, sa_id = established()
    sa = server.endpoint._sas[sa_id]
    server.endpoint._start_request(sa, 37, [NotifyPayload(Notify.REDIRECT, b"\x01\x09")],
                                   "redirect", {"gateway": "x"}, clock.now)
    run(client, server, clock)
    assert client.endpoint.counters.drops["malformed_redirect"] == 1
    assert not client.of(Redirected)
