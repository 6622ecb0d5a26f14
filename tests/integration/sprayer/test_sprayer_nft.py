"""The nftables driver in a router namespace: IKE to keyd, ESP by SPI, unknown SPIs hashed."""

from __future__ import annotations

import struct
import subprocess
from typing import Any

import pytest

from cluster.host import DriverError
from sprayer.backends import Backend, MarkAllocator, keyd_backends
from sprayer.libnft import Nft
from sprayer.nft import NftDriver
from sprayer.routes import RouteDriver

VIP = "203.0.113.10"


def setup(lab: Any) -> tuple[MarkAllocator, NftDriver, RouteDriver]:
    marks = MarkAllocator()
    keyd = keyd_backends([lab.addresses["keyd"]])
    nodes = [Backend(n, lab.addresses[n]) for n in ("node-1", "node-2")]
    backends = {marks.mark(b.name): b for b in [*keyd, *nodes]}
    routes = RouteDriver(VIP, netns=lab.ns("router"))
    routes.sync_backends(backends)
    nft = NftDriver(VIP, netns=lab.ns("router"))
    nft.install([marks.mark(keyd[0].name)], [marks.mark(n.name) for n in nodes])
    return marks, nft, routes


def listeners(lab: Any, port: int) -> dict[str, Any]:
    return {role: lab.udp(role, port) for role in ("keyd", "node-1", "node-2")}


def send(lab: Any, port: int, payload: bytes, sport: int = 0) -> None:
    s = lab.udp("sender", sport, addr="0.0.0.0")
    try:
        s.sendto(payload, (VIP, port))
    finally:
        s.close()


def esp(spi: int, seq: int = 1) -> bytes:
    # RFC 4303 §2: SPI, sequence number, then (here: junk) payload
    return struct.pack("!II", spi, seq) + b"\xab" * 40


def test_ike_and_zero_marker_go_to_keyd_esp_by_spi(lab: Any) -> None:
    marks, nft, _routes = setup(lab)
    ike, natt = listeners(lab, 500), listeners(lab, 4500)
    n1, n2 = marks.mark("node-1"), marks.mark("node-2")
    nft.sync_spis({0x1001: n1, 0x2002: n2})

    send(lab, 500, b"\x00" * 28)
    assert lab.receive_any(ike).keys() == {"keyd"}
    # RFC 3948 §2.2: four zero bytes, then an IKE message
    send(lab, 4500, b"\x00\x00\x00\x00" + b"\x11" * 28)
    assert lab.receive_any(natt).keys() == {"keyd"}

    send(lab, 4500, esp(0x1001))
    assert lab.receive_any(natt) == {"node-1": esp(0x1001)}
    send(lab, 4500, esp(0x2002))
    assert lab.receive_any(natt) == {"node-2": esp(0x2002)}

    # the map flips: the same SPI now reaches node-2, atomically, nothing else changes
    nft.sync_spis({0x1001: n2, 0x2002: n2})
    send(lab, 4500, esp(0x1001, 2))
    assert lab.receive_any(natt) == {"node-2": esp(0x1001, 2)}
    assert nft.read_spis() == {0x1001: n2, 0x2002: n2}
    for s in (*ike.values(), *natt.values()):
        s.close()


def test_unknown_spi_is_hashed_over_nodes_consistently(lab: Any) -> None:
    _, nft, _ = setup(lab)
    natt = listeners(lab, 4500)
    nft.sync_spis({})
    seen = set()
    for sport in (40001, 40002, 40003, 40004, 40005, 40006, 40007, 40008):
        first = set()
        for seq in (1, 2):
            send(lab, 4500, esp(0x7777, seq), sport=sport)
            got = lab.receive_any(natt)
            assert len(got) == 1 and "keyd" not in got
            first |= got.keys()
        assert len(first) == 1  # one client address:port always lands on the same node
        seen |= first
    assert seen == {"node-1", "node-2"}  # 8 source ports: both nodes get some (p = 1/128 miss)
    for s in natt.values():
        s.close()


def test_hundred_thousand_spis_and_client_routes(lab: Any) -> None:
    marks, nft, routes = setup(lab)
    natt = listeners(lab, 4500)
    n1, n2 = marks.mark("node-1"), marks.mark("node-2")
    big = {0x10000000 + i: (n1 if i % 2 else n2) for i in range(100_000)}
    assert nft.sync_spis(big) == 100_000
    # a whole listing holds exactly what was applied (a torn one is read again: nft.py)
    assert nft.read_spis() == big
    check = nft.check()
    assert check is not None and check.current()
    assert check.run().total == 0
    send(lab, 4500, esp(0x10000000 + 77))
    assert lab.receive_any(natt).keys() == {"node-1"}
    # an incremental change touches only what changed
    big[0x10000000 + 77] = n2
    del big[0x10000000 + 78]
    assert nft.sync_spis(big) == 2
    send(lab, 4500, esp(0x10000000 + 77))
    assert lab.receive_any(natt).keys() == {"node-2"}

    assert routes.sync_clients({"10.99.0.7": lab.addresses["node-1"],
                                "10.99.0.8": lab.addresses["node-2"]}) == 2
    route = socket_route(lab, "10.99.0.7")
    assert f"via {lab.addresses['node-1']}" in route
    routes.sync_clients({"10.99.0.8": lab.addresses["node-1"]})
    assert "via" not in socket_route(lab, "10.99.0.7")
    assert f"via {lab.addresses['node-1']}" in socket_route(lab, "10.99.0.8")
    routes.remove()
    nft.remove()
    for s in natt.values():
        s.close()


def socket_route(lab: Any, ip: str) -> str:
    r = subprocess.run(["ip", "-n", lab.ns("router"), "route", "get", ip],
                       capture_output=True, text=True)
    return r.stdout + r.stderr



def test_the_nft_command_path_behaves_like_the_library(lab: Any) -> None:
    marks = MarkAllocator()
    r = lab.ns("router")
    by_library = NftDriver(VIP, netns=r)
    by_command = NftDriver(VIP, netns=r, nft=Nft(r, use_library=False))
    assert by_library.nft.in_process and not by_command.nft.in_process
    by_command.install([marks.mark("keyd:x")], [marks.mark("node-1")])
    by_command.sync_spis({0x1001: marks.mark("node-1")})
    assert by_library.read_spis() == by_command.read_spis() == {0x1001: marks.mark("node-1")}
    natt = listeners(lab, 4500)
    RouteDriver(VIP, netns=r).sync_backends(
        {marks.mark("keyd:x"): Backend("keyd:x", lab.addresses["keyd"]),
         marks.mark("node-1"): Backend("node-1", lab.addresses["node-1"])})
    send(lab, 4500, esp(0x1001))
    assert lab.receive_any(natt).keys() == {"node-1"}
    by_library.remove()
    with pytest.raises(DriverError):
        by_command.read_spis()
    for s in natt.values():
        s.close()
