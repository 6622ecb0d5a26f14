"""Relay of stray IKE to keyd, unchanged, as if it had been routed there.

IKE (UDP 500, or UDP 4500 behind the non-ESP marker) normally never reaches a node: the
sprayer steers it to keyd. When it does (a stale steering entry, a client that moved), the
node hands the datagram on to keyd as the client sent it: source address and port are the
client's, destination the VIP — keyd's NAT detection and its replies (sent from the VIP
straight to the client) need exactly that. The VIP is local on the node, so the kernel would
deliver such a packet back to us; it is therefore framed by hand (IPv4 + UDP) and sent on a
packet socket to the link-layer address of the next hop towards `keyd_address`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import queue
import socket
import struct
import subprocess
import threading
import time

log = logging.getLogger("cluster.node.relay")

ETH_P_IP = 0x0800
Address = tuple[str, int]


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones'-complement checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src: Address, dst: Address, payload: bytes) -> bytes:
    """An IPv4/UDP datagram from src to dst carrying payload, both checksums set."""
    s, d = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    csum = internet_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64,
                         socket.IPPROTO_UDP, 0, s, d)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + udp


def _ip_json(*args: str) -> list[dict[str, object]]:
    r = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return []
    try:
        value = json.loads(r.stdout or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


class IkeRelay:
    """Queue-fed worker that forwards stray IKE datagrams to keyd (never blocks the caller)."""

    def __init__(self, keyd_address: str, vip: str) -> None:
        ipaddress.IPv4Address(keyd_address)
        self.keyd_address = keyd_address
        self.vip = vip
        self.relayed = 0
        self.failed = 0
        self._queue: queue.Queue[tuple[bytes, Address, int] | None] = queue.Queue(1024)
        self._hop: tuple[str, bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="ike-relay", daemon=True)
        self._sock: socket.socket | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(2)
        if self._sock is not None:
            self._sock.close()

    def submit(self, datagram: bytes, client: Address, port: int) -> None:
        """Relay `datagram` that `client` sent to VIP:`port` (dropped if the queue is full)."""
        try:
            self._queue.put_nowait((datagram, client, port))
        except queue.Full:
            self.failed += 1

    def _next_hop(self) -> tuple[str, bytes] | None:
        routes = _ip_json("route", "get", self.keyd_address)
        if not routes:
            return None
        dev = str(routes[0].get("dev", ""))
        hop = str(routes[0].get("gateway") or self.keyd_address)
        for _ in range(20):
            for n in _ip_json("neigh", "show", "to", hop, "dev", dev):
                mac = n.get("lladdr")
                if isinstance(mac, str) and n.get("state") not in (["FAILED"], ["INCOMPLETE"]):
                    return dev, bytes.fromhex(mac.replace(":", ""))
            # provoke neighbour resolution with a datagram to the discard port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
                    contextlib.suppress(OSError):
                s.sendto(b"", (hop, 9))
            time.sleep(0.05)
        return None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            datagram, client, port = item
            try:
                if self._hop is None:
                    self._hop = self._next_hop()
                if self._hop is None:
                    raise OSError(f"no route or neighbour towards keyd {self.keyd_address}")
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
                dev, mac = self._hop
                frame = ipv4_udp(client, (self.vip, port), datagram)
                self._sock.sendto(frame, (dev, ETH_P_IP, 0, 0, mac))
                self.relayed += 1
            except OSError as e:
                self.failed += 1
                self._hop = None
                log.warning("could not relay IKE from %s:%d to keyd: %s", client[0], client[1], e)
