"""EAP relayed to a real FreeRADIUS (Debian's freeradius, started here on a loopback port):
the relay of keyd/eap with keyd's UDP glue, and the peer side of keyd/eap as the client."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.freeradius import FreeRadiusServer, RadiusUser, free_udp_port
from keyd.eap import (
    Authenticator,
    EapAction,
    EapFailed,
    EapSucceeded,
    NasInfo,
    Peer,
    RadiusRelay,
    RadiusServer,
    SendToPeer,
    SendToRadius,
)
from keyd.radius import RadiusTiming, relay_round

SECRET = "radius-test-secret"
FAST = RadiusTiming(timeout_s=0.4, tries=4)  # FreeRADIUS delays a Reject by 1 s


@pytest.fixture(scope="module")
def freeradius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadiusServer]:
    if shutil.which("freeradius") is None:
        pytest.fail("freeradius is not installed: run `make bootstrap`")
    server = FreeRadiusServer(tmp_path_factory.mktemp("freeradius"), [
        RadiusUser("carol", "s3cret", {"Framed-IP-Address": "10.9.0.7"}),
        RadiusUser("dave", "pässwörd"),
    ], SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def servers_of(radius: FreeRadiusServer, dead_first: bool = False) -> list[RadiusServer]:
    live = RadiusServer(radius.host, radius.port, SECRET.encode())
    if not dead_first:
        return [live]
    return [RadiusServer("127.0.0.1", free_udp_port(), SECRET.encode()), live]


async def converse(servers: list[RadiusServer], peer: Peer,
                   identity: str | None = None) -> tuple[EapAction, int]:
    relay = RadiusRelay(servers, NasInfo(calling_station="198.51.100.7[4500]"))
    auth = Authenticator("radius", identity=identity, relay=relay)
    action = auth.start()
    rounds = 0
    while True:
        if isinstance(action, SendToRadius):
            action = await relay_round(auth, action, servers, FAST)
            rounds += 1
        if not isinstance(action, SendToPeer):
            return action, rounds
        answer = peer.respond(action.packet)
        assert answer is not None
        action = auth.receive(answer)


def test_mschapv2_through_freeradius_accept_msk_and_framed_ip(
        freeradius: FreeRadiusServer) -> None:
    peer = Peer("carol", "s3cret")
    end, rounds = asyncio.run(converse(servers_of(freeradius), peer))
    assert isinstance(end, EapSucceeded), end
    assert end.identity == "carol"
    assert end.virtual_ip == "10.9.0.7"
    assert peer.respond(end.packet) is None and peer.succeeded
    assert end.msk == peer.msk and len(end.msk) == 64
    assert rounds >= 3  # identity → (Nak of MD5) → challenge → success


def test_known_identity_and_utf8_password(freeradius: FreeRadiusServer) -> None:
    peer = Peer("dave", "pässwörd")
    end, _ = asyncio.run(converse(servers_of(freeradius), peer, identity="dave"))
    assert isinstance(end, EapSucceeded), end
    assert end.virtual_ip is None and end.msk == peer.msk


@pytest.mark.parametrize("user", ["carol", "nobody"])
def test_wrong_password_and_unknown_user_are_rejected(freeradius: FreeRadiusServer,
                                                      user: str) -> None:
    peer = Peer(user, "wrong")
    end, _ = asyncio.run(converse(servers_of(freeradius), peer))
    assert isinstance(end, EapFailed), end
    assert end.reason == "radius reject"


def test_dead_server_fails_over_then_all_dead_times_out(freeradius: FreeRadiusServer) -> None:
    peer = Peer("carol", "s3cret")
    end, _ = asyncio.run(converse(servers_of(freeradius, dead_first=True), peer))
    assert isinstance(end, EapSucceeded), end
    dead = [RadiusServer("127.0.0.1", free_udp_port(), SECRET.encode())]
    end, _ = asyncio.run(converse(dead, Peer("carol", "s3cret")))
    assert isinstance(end, EapFailed) and end.reason == "radius timeout"


def test_wrong_shared_secret_is_never_accepted(freeradius: FreeRadiusServer,
                                               tmp_path: Path) -> None:
    """FreeRADIUS drops a request whose Message-Authenticator does not verify: no answer."""
    bad = [RadiusServer(freeradius.host, freeradius.port, b"not-the-secret")]
    end, _ = asyncio.run(converse(bad, Peer("carol", "s3cret")))
    assert isinstance(end, EapFailed) and end.reason == "radius timeout"
