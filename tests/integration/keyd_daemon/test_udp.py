"""keyd's UDP endpoints on loopback: IKE behind the non-ESP marker on 4500 passes, ESP, NAT
keepalives and runts are dropped and counted, and replies go out as framed."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from keyd.udp import IkeEndpoints, Inbound

IKE = bytes(range(8)) + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4) + (28).to_bytes(4, "big")


async def _exercise() -> tuple[list[Inbound], list[str], bytes, bytes]:
    got: list[Inbound] = []
    drops: list[str] = []
    ep = IkeEndpoints("127.0.0.1", 0, 0, got.append, drops.append)
    await ep.open()
    ike_port, natt_port = ep.ports
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        client.sendto(IKE, ("127.0.0.1", ike_port))
        client.sendto(b"\x00\x00\x00\x00" + IKE, ("127.0.0.1", natt_port))
        client.sendto(b"\x12\x34\x56\x78" + bytes(40), ("127.0.0.1", natt_port))  # ESP
        client.sendto(b"\xff", ("127.0.0.1", natt_port))  # NAT keepalive
        client.sendto(b"\x00\x00\x00\x00" + IKE[:10], ("127.0.0.1", natt_port))  # runt
        client.sendto(IKE[:20], ("127.0.0.1", ike_port))  # runt
        for _ in range(100):
            if len(got) + len(drops) >= 6:
                break
            await asyncio.sleep(0.02)
        me = client.getsockname()
        loop = asyncio.get_running_loop()
        ep.send(b"reply-on-500", ike_port, me)
        on_500 = await asyncio.wait_for(loop.sock_recv(client, 2048), 5)
        ep.send(b"\x00\x00\x00\x00reply-on-4500", natt_port, me)
        on_4500 = await asyncio.wait_for(loop.sock_recv(client, 2048), 5)
        assert all(i.src == me for i in got)
        assert [i.dst[1] for i in got] == [ike_port, natt_port]
        return got, drops, on_500, on_4500
    finally:
        client.close()
        ep.close()


def test_marker_stripped_added_and_non_ike_dropped() -> None:
    got, drops, on_500, on_4500 = asyncio.run(_exercise())
    assert [i.ike_message for i in got] == [IKE, IKE]
    assert [i.data for i in got] == [IKE, b"\x00\x00\x00\x00" + IKE]
    assert sorted(drops) == ["esp_on_natt_port", "natt_keepalive", "short", "short"]
    assert on_500 == b"reply-on-500"
    assert on_4500 == b"\x00\x00\x00\x00reply-on-4500"


def test_bind_failure_is_a_clear_error() -> None:
    async def run() -> str:
        first = IkeEndpoints("127.0.0.1", 0, 0, lambda _: None, lambda _: None)
        await first.open()
        try:
            ike_port, _ = first.ports
            # SO_REUSEADDR does not let two UDP sockets share a port unless both ask; a
            # foreign address cannot be bound at all
            second = IkeEndpoints("192.0.2.254", ike_port, 0, lambda _: None, lambda _: None)
            try:
                await second.open()
            except OSError as exc:
                return str(exc)
            return ""
        finally:
            first.close()

    message = asyncio.run(run())
    assert "cannot bind 192.0.2.254" in message


# an IKE_AUTH header: a message of an IKE SA
AUTH = bytes(range(8)) + bytes(range(8, 16)) + bytes([46, 0x20, 35, 0x08]) \
    + (1).to_bytes(4, "big") + (28).to_bytes(4, "big")


def _init(spi: int, cookie: bool = False) -> bytes:
    """An IKE_SA_INIT request header (SPIi `spi`), opening with a COOKIE notify if asked."""
    notify = bytes([0, 0]) + (8).to_bytes(2, "big") + bytes([0, 0]) + (16390).to_bytes(2, "big")
    body = notify if cookie else b""
    return spi.to_bytes(8, "big") + bytes(8) + bytes([41 if cookie else 0, 0x20, 34, 0x08]) \
        + bytes(4) + (28 + len(body)).to_bytes(4, "big") + body


async def _burst() -> tuple[list[Inbound], list[tuple[str, int]], list[bytes]]:
    """A burst of several batches waits in the socket before the loop reads it: 1,120 new
    IKE_SA_INITs (12 of them from another /24) with, among them, 40 messages of an IKE SA
    and 40 requests with a cookie.
    The first 5 new ones get a stateless answer from `on_new_init`."""
    got: list[Inbound] = []
    drops: list[tuple[str, int]] = []
    answered: list[bytes] = []

    def new_init(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes | None:
        if len(answered) < 5 and data[16] == 0:   # new, no cookie
            answered.append(data)
            return b"answer"
        return None

    ep = IkeEndpoints("127.0.0.1", 0, 0, got.append,
                      lambda reason, count=1: drops.append((reason, count)),
                      on_new_init=new_init)
    await ep.open()
    ike_port, _ = ep.ports
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    quiet.bind(("127.0.1.1", 0))
    try:
        for i in range(1200):
            if i % 30 == 7:
                client.sendto(AUTH, ("127.0.0.1", ike_port))
            elif i % 30 == 17:
                client.sendto(_init(10_000 + i, cookie=True), ("127.0.0.1", ike_port))
            elif i % 100 == 50:
                quiet.sendto(_init(1 + i), ("127.0.0.1", ike_port))   # another /24
            else:
                client.sendto(_init(1 + i), ("127.0.0.1", ike_port))
        for _ in range(200):
            if len(got) + len(answered) + sum(n for _, n in drops) >= 1200:
                break
            await asyncio.sleep(0.01)
        client.setblocking(False)
        replies = []
        with contextlib.suppress(BlockingIOError):
            while True:
                replies.append(client.recv(2048))
        return got, drops, replies
    finally:
        client.close()
        quiet.close()
        ep.close()


def test_a_burst_keeps_ike_sa_messages_and_cookies_and_sheds_new_inits() -> None:
    got, drops, replies = asyncio.run(_burst())
    ike_sa = [i for i in got if i.data == AUTH]
    with_cookie = [i for i in got if i.data[16] == 41]
    new = [i for i in got if i.data[16] == 0]
    shed = sum(n for reason, n in drops if reason == "overload")
    assert len(ike_sa) == 40 and len(with_cookie) == 40      # none of them shed
    # new ones from a quiet source prefix are kept over the flood's (12 sent)
    assert len([i for i in new if i.src[0] == "127.0.1.1"]) == 12
    assert replies == [b"answer"] * 5                          # stateless answers went out
    assert shed > 0 and len(new) + shed + 5 == 1120            # every new one counted
    assert {reason for reason, _ in drops} == {"overload"}


def test_source_prefix() -> None:
    from keyd.udp import source_prefix
    assert source_prefix("10.41.128.7") == source_prefix("10.41.128.200") == "10.41.128"
    assert source_prefix("10.41.129.7") != source_prefix("10.41.128.7")
    assert source_prefix("2001:db8:1:2::1") == source_prefix("2001:db8:1:ffff::9")
    assert source_prefix("2001:db8:2::1") != source_prefix("2001:db8:1::1")
