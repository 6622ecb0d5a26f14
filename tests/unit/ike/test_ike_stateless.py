"""IKE_SA_INIT answered without state (RFC 7296 §2.6): the COOKIE a flood gets, read from the
header and payload chain alone, is the one the full path would send and the initiator then
shows; `refuse_new` answers every new IKE_SA_INIT with its error notify, which the initiator
takes as a failure naming it; retransmissions of answered requests keep their answer."""

from __future__ import annotations

from ikepair import CLIENT, VIP, Clock, psk_pair, run, transfer

from keyd.ike import ExchangeFailed, IkeSaEstablished
from keyd.ike.constants import ExchangeType, Flag, Notify
from keyd.ike.cookies import cookie_response, peek_init_request
from keyd.ike.message import Header, pull_message, push_message
from keyd.ike.payloads import NotifyPayload


def _init_request(address: tuple[str, int] = CLIENT) -> bytes:
    client, _ = psk_pair()
    client.endpoint.connect(address, VIP, 1000.0)
    return client.drain()[0].data


def test_peek_reads_spi_nonce_and_cookie_of_an_init_request() -> None:
    data = _init_request()
    msg, _ = pull_message(data)
    peek = peek_init_request(data)
    assert peek is not None and peek.spi_i == msg.header.spi_i and peek.cookie == b""
    assert peek.nonce is not None and len(peek.nonce) >= 16
    # anything else is left to the full path: a response, a short or overlong message, a
    # payload chain that does not add up, another version
    assert peek_init_request(data[:20]) is None
    assert peek_init_request(data + b"\x00") is None
    assert peek_init_request(data[:19] + bytes([data[19] | Flag.RESPONSE]) + data[20:]) is None
    assert peek_init_request(data[:17] + b"\x30" + data[18:]) is None
    broken = bytearray(data)
    broken[28 + 2:28 + 4] = (0xFFFF).to_bytes(2, "big")   # first payload's length
    assert peek_init_request(bytes(broken)) is None


def test_cookie_response_is_what_push_message_makes() -> None:
    cookie = bytes(range(17))
    header = Header(0x0102030405060708, 0, 0, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
    assert cookie_response(0x0102030405060708, cookie) == \
        push_message(header, [NotifyPayload(Notify.COOKIE, cookie)])


def test_stateless_cookie_is_accepted_and_leaves_no_state() -> None:
    client, server = psk_pair(half_open_cookie_threshold=0)
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    [request] = client.drain()
    answered = server.endpoint.answer_statelessly(request.data, request.src, request.dst,
                                                  clock.now)
    assert answered is not None and answered[0] == "cookie"
    assert server.endpoint.ike_sa_ids() == [] and server.drain() == []
    assert server.endpoint.counters.cookies_sent == 1
    client.endpoint.receive_datagram(answered[1], VIP, CLIENT, clock.now)
    [with_cookie] = client.drain()
    peek = peek_init_request(with_cookie.data)
    assert peek is not None and peek.cookie
    # the retry shows a valid cookie: not answered here, the full path makes the IKE SA
    assert server.endpoint.answer_statelessly(with_cookie.data, with_cookie.src,
                                              with_cookie.dst, clock.now) is None
    server.endpoint.receive_datagram(with_cookie.data, with_cookie.src, with_cookie.dst,
                                     clock.now)
    run(client, server, clock)
    assert client.of(IkeSaEstablished)
    # the same cookie from another address is no cookie
    other = server.endpoint.answer_statelessly(with_cookie.data, ("192.0.2.99", 500),
                                               with_cookie.dst, clock.now)
    assert other is not None and other[0] == "cookie"


def test_below_the_threshold_nothing_is_answered_statelessly() -> None:
    client, server = psk_pair()
    client.endpoint.connect(CLIENT, VIP, 1000.0)
    [request] = client.drain()
    assert server.endpoint.answer_statelessly(request.data, request.src, request.dst,
                                              1000.0) is None


def test_refuse_new_answers_temporary_failure_and_the_initiator_fails() -> None:
    client, server = psk_pair()
    clock = Clock()
    server.endpoint.refuse_new = Notify.TEMPORARY_FAILURE
    client.endpoint.connect(CLIENT, VIP, clock.now)
    [request] = client.drain()
    answered = server.endpoint.answer_statelessly(request.data, request.src, request.dst,
                                                  clock.now)
    assert answered is not None and answered[0] == "refused"
    msg, _ = pull_message(answered[1])
    assert msg.header.is_response and msg.header.spi_i == peek_init_request(request.data).spi_i  # type: ignore[union-attr]
    assert [p.type for p in msg.payloads if isinstance(p, NotifyPayload)] == \
        [Notify.TEMPORARY_FAILURE]
    assert server.endpoint.counters.errors["TEMPORARY_FAILURE"] == 1
    client.endpoint.receive_datagram(answered[1], VIP, CLIENT, clock.now)
    client.drain()
    [failed] = client.of(ExchangeFailed)
    assert failed.notify == Notify.TEMPORARY_FAILURE and "TEMPORARY_FAILURE" in failed.reason
    assert client.drain() == []   # no retry of its own: the caller decides
    # the full path refuses the same way (requests the peek cannot read land there)
    second, _ = psk_pair()
    second.endpoint.connect(("192.0.2.11", 500), VIP, clock.now)
    transfer(second, server, clock.now)
    [answer] = server.drain()
    msg, _ = pull_message(answer.data)
    assert [p.type for p in msg.payloads if isinstance(p, NotifyPayload)] == \
        [Notify.TEMPORARY_FAILURE]
    assert server.endpoint.ike_sa_ids() == []
    # once lifted, new clients are served again
    server.endpoint.refuse_new = None
    third, _ = psk_pair()
    third.endpoint.connect(("192.0.2.12", 500), VIP, clock.now)
    run(third, server, clock)
    assert third.of(IkeSaEstablished)


def test_a_half_open_retransmission_keeps_its_answer_while_refusing() -> None:
    """An IKE_SA_INIT answered before the refusal began is a negotiation under way: its
    retransmission gets the same answer (§2.1), not the refusal."""
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    [request] = client.drain()
    server.endpoint.receive_datagram(request.data, request.src, request.dst, clock.now)
    [first] = server.drain()
    server.endpoint.refuse_new = Notify.TEMPORARY_FAILURE
    assert server.endpoint.answer_statelessly(request.data, request.src, request.dst,
                                              clock.now) is None
    server.endpoint.receive_datagram(request.data, request.src, request.dst, clock.now)
    [again] = server.drain()
    assert again.data == first.data
