"""Structured junk into a live responder: correctly sealed requests whose payloads are random.

Whatever the peer sends, `receive_datagram` returns normally (an answer, or a counted drop)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ikepair import CLIENT, VIP, Clock, psk_pair, run

from keyd.ike import IkeSaEstablished
from keyd.ike.constants import ExchangeType, Flag
from keyd.ike.message import Header, push_message
from keyd.ike.payloads import (
    AuthPayload,
    CertPayload,
    CpPayload,
    DeletePayload,
    IdiPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsiPayload,
    TsrPayload,
)
from keyd.ike.protect import seal

small = st.integers(0, 40)
transform = st.builds(Transform, st.integers(0, 6), st.integers(0, 35),
                      st.one_of(st.none(), st.sampled_from([128, 256, 7])))
proposal = st.builds(Proposal, st.integers(0, 3), st.integers(0, 4),
                     st.sampled_from([b"", b"\1\2\3\4", b"\5" * 8, b"\7"]),
                     st.lists(transform, max_size=6).map(tuple))
selector = st.builds(TrafficSelector, st.sampled_from([7, 8]), st.integers(0, 17),
                     st.integers(0, 65535), st.integers(0, 65535),
                     st.sampled_from([bytes(4), b"\x0a\x14\0\0", b"\xff" * 4, bytes(16)]),
                     st.sampled_from([bytes(4), b"\x0a\x14\xff\xff", b"\xff" * 4, bytes(16)]))
payload = st.one_of(
    st.builds(SaPayload, st.lists(proposal, min_size=1, max_size=3).map(tuple)),
    st.builds(KePayload, st.sampled_from([14, 19, 20, 31, 0, 99]),
              st.binary(max_size=100)),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=40)),
    st.builds(IdiPayload, st.integers(0, 11), st.binary(max_size=20)),
    st.builds(AuthPayload, st.integers(0, 14), st.binary(max_size=40)),
    st.builds(CertPayload, st.integers(0, 5), st.binary(max_size=40)),
    st.builds(NotifyPayload, st.sampled_from([16393, 16384, 16388, 16390, 14, 24, 40000,
                                              # MOBIKE (RFC 4555), redirect (RFC 5685)
                                              16389, 16396, 16400, 16401, 16402, 16406,
                                              16407, 16408]),
              st.binary(max_size=24), st.integers(0, 3), st.sampled_from([b"", b"\1\2\3\4"])),
    st.builds(DeletePayload, st.integers(0, 4),
              st.lists(st.sampled_from([b"\1\2\3\4", b"\0" * 8, b"\1"]), max_size=3)
              .map(tuple)),
    st.builds(TsiPayload, st.lists(selector, max_size=3).map(tuple)),
    st.builds(TsrPayload, st.lists(selector, max_size=3).map(tuple)),
    st.builds(CpPayload, st.integers(0, 4),
              st.lists(st.tuples(st.integers(0, 20), st.binary(max_size=6)), max_size=4)
              .map(tuple)),
)


def _established() -> tuple[object, object, Clock, str]:
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    return client, server, clock, server.of(IkeSaEstablished)[0].ike_sa_id


LIVE: dict[str, object] = {}


def _live_server() -> tuple[object, str]:
    """An established IKE SA (made again when junk deleted the last one)."""
    server, sa_id = LIVE.get("server"), LIVE.get("sa_id")
    if server is None or not server.has_ike_sa(sa_id):  # type: ignore[attr-defined]
        _, side, _, sa_id = _established()
        server = LIVE["server"] = side.endpoint  # type: ignore[attr-defined]
        LIVE["sa_id"] = sa_id
    return server, str(sa_id)


def _half_open_server() -> tuple[object, str]:
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    for d in client.drain():
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    server.drain()
    return server.endpoint, server.endpoint.ike_sa_ids()[0]


CLOCK = Clock()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL,
                        ExchangeType.IKE_AUTH, 99]),
       st.lists(payload, max_size=6), st.booleans())
def test_sealed_junk_requests(exchange: int, payloads: list, half_open: bool) -> None:
    server, sa_id = _half_open_server() if half_open else _live_server()
    sa = server._sas[sa_id]  # type: ignore[attr-defined]
    h = Header(sa.spi_i, sa.spi_r, 0, exchange, Flag.INITIATOR, sa.peer_next_id)
    data = seal(h, payloads, server._keys_in(sa), bytes)  # the client's direction
    server.receive_datagram(b"\0\0\0\0" + data, sa.peer, (sa.local[0], 4500),  # type: ignore
                            CLOCK.now)
    while server.next_event() is not None:  # type: ignore[attr-defined]
        pass
    server.datagrams_to_send()  # type: ignore[attr-defined]
    assert not server.counters.drops["internal_error"]  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(payload, max_size=6), st.integers(1, 2**64 - 1))
def test_junk_ike_sa_init(payloads: list, spi_i: int) -> None:
    server, _ = _live_server()
    h = Header(spi_i, 0, 0, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0)
    server.receive_datagram(push_message(h, payloads), ("192.0.2.50", 500), VIP,  # type: ignore
                            CLOCK.now)
    while server.next_event() is not None:  # type: ignore[attr-defined]
        pass
    server.datagrams_to_send()  # type: ignore[attr-defined]
    assert not server.counters.drops["internal_error"]  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(payload, max_size=6), st.integers(0, 2**64 - 1))
def test_initiator_junk_ike_sa_init_response(payloads: list, spi_r: int) -> None:
    client, _ = psk_pair()
    ep = client.endpoint
    ep.connect(CLIENT, VIP, 0.0)
    sa = ep.sa
    h = Header(sa.spi_i, spi_r, 0, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
    ep.receive_datagram(push_message(h, payloads), VIP, CLIENT, 0.0)
    client.drain()
    assert not ep.counters.drops["internal_error"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["liveness", "rekey_child", "rekey_ike", "delete"]),
       st.lists(payload, max_size=6))
def test_initiator_sealed_junk_responses(request: str, payloads: list) -> None:
    client, _server, clock, _ = _established()
    ep = client.endpoint  # type: ignore[attr-defined]
    if request == "rekey_child":
        ep.rekey_child(next(iter(ep.sa.children)), clock.now)
    else:
        getattr(ep, request)(clock.now)
    client.drain()  # type: ignore[attr-defined]
    sa = ep.sa
    exchange = ExchangeType.INFORMATIONAL if request in ("liveness", "delete") \
        else ExchangeType.CREATE_CHILD_SA
    h = Header(sa.spi_i, sa.spi_r, 0, exchange, Flag.RESPONSE, sa.my_next_id - 1)
    data = seal(h, payloads, ep._keys_in(sa), bytes)
    ep.receive_datagram(b"\0\0\0\0" + data, sa.peer, sa.local, clock.now)
    client.drain()  # type: ignore[attr-defined]
    assert not ep.counters.drops["internal_error"]
