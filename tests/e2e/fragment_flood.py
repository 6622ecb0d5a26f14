"""A flood of IKE fragments that never complete, for tests/e2e/test_ike_fragmentation.py.

Run in a lab client's namespace: over and over, it makes an IKE SA with the VIP (a real
IKE_SA_INIT, so its fragments are authentic: keyd checks each fragment's integrity before it
stores it) and then sends every fragment but the last of a large IKE_AUTH that never comes.
It prints one JSON line when it is done: how many IKE SAs and fragments it sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time

from keyd.ike import Credentials, Initiator, InitiatorConfig
from keyd.ike.constants import NON_ESP_MARKER, ExchangeType, Flag, PayloadType
from keyd.ike.message import Header
from keyd.ike.protect import seal_plain


def _ike_sa(local_ip: str, vip: str, socks: dict[int, socket.socket],
            timeout_s: float) -> Initiator | None:
    """An Initiator whose IKE_SA_INIT is answered (its IKE_AUTH is left unsent)."""
    ini = Initiator(InitiatorConfig(identity="flood.clients.lab.example",
                                    credentials=Credentials(psk=b"not the lab's psk"),
                                    fragmentation=True))
    ini.connect((local_ip, socks[0].getsockname()[1]), (vip, 500), time.time())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        while ini.next_event() is not None:
            pass
        for d in ini.datagrams_to_send():
            if d.dst[1] == 500:  # IKE_SA_INIT (again, with a cookie); not the IKE_AUTH
                socks[0].sendto(d.data, d.dst)
        if ini.ike_sa_id is not None and ini.sa.spi_r:
            return ini
        socks[0].settimeout(max(0.01, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            data, src = socks[0].recvfrom(65535)
            ini.receive_datagram(data, (src[0], src[1]), ini.sa.local, time.time())
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--local", required=True)
    p.add_argument("--vip", required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--fragments", type=int, default=16, help="Total Fragments announced")
    p.add_argument("--size", type=int, default=480, help="bytes of content per fragment")
    a = p.parse_args()
    ike = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ike.bind((a.local, 0))
    natt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    natt.bind((a.local, 4500))
    socks = {0: ike}
    counts = [0, 0]  # IKE SAs, fragments
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # then the summary below
    deadline = time.monotonic() + a.seconds
    try:
        _flood(a, socks, natt, deadline, counts)
    finally:
        print(json.dumps({"ike_sas": counts[0], "fragments": counts[1]}), flush=True)


def _flood(a: argparse.Namespace, socks: dict[int, socket.socket], natt: socket.socket,
           deadline: float, counts: list[int]) -> None:
    while time.monotonic() < deadline:
        ini = _ike_sa(a.local, a.vip, socks, 2.0)
        if ini is None:
            continue
        sa = ini.sa
        keys = ini._keys_out(sa)
        h = Header(sa.spi_i, sa.spi_r, 0, ExchangeType.IKE_AUTH, Flag.INITIATOR, 1)
        for n in range(1, a.fragments):  # never the last one
            data = seal_plain(h, PayloadType.SKF, PayloadType.IDI if n == 1 else 0,
                              n.to_bytes(2, "big") + a.fragments.to_bytes(2, "big"),
                              os.urandom(a.size), keys, os.urandom)
            natt.sendto(NON_ESP_MARKER + data, (a.vip, 4500))
            counts[1] += 1
        counts[0] += 1


if __name__ == "__main__":
    main()
