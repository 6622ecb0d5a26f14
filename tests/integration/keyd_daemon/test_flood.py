"""keyd under an IKE_SA_INIT flood from spoofed sources (raw IPv4/UDP on loopback, a fresh
source address and initiator SPI per datagram, as fast as one sender goes, bounded in count
and time): legitimate clients (the project's initiator, PSK) connecting one after the other
meanwhile all establish, while the flood is still being sent — before, an IKE_AUTH's write
waited for the sockets to be empty, i.e. for the flood to end — and the flood gets cookies,
not IKE SAs."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import threading
import time

import pytest

from keyd.client import IkeClient
from keyd.ike import Credentials, Initiator, InitiatorConfig

from .conftest import GATEWAY_ID, PSK, KeydSetup

SPOOFED = ipaddress.ip_network("127.41.0.0/16")
FLOOD_PPS = 10_000        # datagrams a second at most (about what keyd answers on a core)
FLOOD_MAX = 150_000       # datagrams at most (the clients usually need far fewer)
FLOOD_MAX_S = 15.0        # and seconds at most
CLIENTS = 5


def _template() -> bytes:
    """A real IKE_SA_INIT request (its SPI is replaced per datagram)."""
    init = Initiator(InitiatorConfig(identity="flood@flood.test", credentials=Credentials(
        psk=b"not the psk"), ike_proposals=["aes128gcm16-prfsha256-x25519"]))
    init.connect(("127.41.0.1", 500), ("127.0.0.1", 500), time.time())
    while init.next_event() is not None:
        pass
    return init.datagrams_to_send()[0].data


class Flood(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = 0
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def run(self) -> None:
        template, rng = _template(), random.Random(os.urandom(8))
        base, dst = int(SPOOFED.network_address), socket.inet_aton("127.0.0.1")
        start = time.monotonic()
        while not self.stop.is_set() and self.sent < FLOOD_MAX \
                and (now := time.monotonic()) - start < FLOOD_MAX_S:
            if self.sent > (now - start) * FLOOD_PPS:
                time.sleep(0.002)
                continue
            msg = rng.randbytes(8) + template[8:]
            udp = struct.pack("!HHHH", 500, self.port, 8 + len(msg), 0) + msg
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                             (base + rng.randrange(1, SPOOFED.num_addresses - 1)).to_bytes(4),
                             dst)
            try:
                self.sock.sendto(ip + udp, ("127.0.0.1", 0))
                self.sent += 1
            except OSError:
                time.sleep(0.001)
        self.sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a raw socket")
def test_clients_establish_through_an_ike_sa_init_flood(keyd_setup: KeydSetup) -> None:
    k = keyd_setup.start("keyd-1")
    flood = Flood(k.ike_port)
    flood.start()
    established: list[str] = []
    try:
        while flood.sent < 2_000 and flood.is_alive():
            time.sleep(0.01)   # the flood is under way (past the cookie threshold)
        for i in range(CLIENTS):
            with IkeClient.psk(PSK, f"legit{i}@clients.test", GATEWAY_ID, f"127.0.0.{20 + i}",
                               ("127.0.0.1", k.ike_port), k.natt_port) as c:
                est = c.connect(timeout_s=20)
                established.append(est.ike_sa_id)
                assert c.children()
        still_flooding = flood.is_alive()
    finally:
        flood.stop.set()
        flood.join()
    assert len(established) == CLIENTS
    # each was established while the flood went on (not once it had ended)
    assert still_flooding
    assert k.metric("keyd_cookies_sent_total") > 0
    assert k.metric("keyd_handshakes_total", result="established") == CLIENTS
    # the flood made no IKE SA beyond those it had before cookies were due
    assert k.metric("keyd_half_open_ike_sas") <= 100
    assert "Traceback" not in k.log.read_text()
