"""The benchmark's ESP client pieces: ICMP echo packets, checksums, silences, and an echo
through two real Child SAs (the client's and the gateway's, keys mirrored)."""

from __future__ import annotations

import os
import struct

import pytest

from bench.esp_client import checksum, longest_silence, pull_echo_reply, push_echo
from cluster.esp.nonce import PREFIX_LEN, IvSource
from cluster.esp.sa import ChildSa, SaKeys
from cluster.esp.selector import TrafficSelector


def test_echo_request_checksums_verify() -> None:
    pkt = push_echo("10.99.0.7", "10.20.0.10", 3, 70000)
    assert checksum(pkt[:20]) == 0
    assert checksum(pkt[20:]) == 0
    assert pkt[9] == 1 and pkt[20] == 8
    assert struct.unpack_from("!HH", pkt, 24) == (3, 70000 & 0xFFFF)


def test_only_echo_replies_are_taken() -> None:
    request = push_echo("10.99.0.7", "10.20.0.10", 3, 9)
    assert pull_echo_reply(request) is None
    reply = request[:20] + b"\x00" + request[21:]
    assert pull_echo_reply(reply) == (3, 9)
    assert pull_echo_reply(reply[:27]) is None
    assert pull_echo_reply(b"\x60" + reply[1:]) is None


def test_longest_silence_counts_window_edges() -> None:
    assert longest_silence([1.0, 1.1, 1.5, 1.55], 1.0, 1.6) == pytest.approx(0.4)
    assert longest_silence([], 2.0, 5.0) == pytest.approx(3.0)
    assert longest_silence([0.5, 4.0], 1.0, 5.0) == pytest.approx(3.0)


def test_echo_through_two_child_sas() -> None:
    k_cg, k_gc = os.urandom(20), os.urandom(20)   # AES-128-GCM key + 4-byte salt
    client = ChildSa(spi_in=0x1001, spi_out=0x2002, encr="aes128gcm16", integ=None, esn=False,
                     keys=SaKeys(k_gc, k_cg),
                     ts_remote=(TrafficSelector.from_network("10.20.0.0/24"),),
                     iv_source=IvSource(os.urandom(PREFIX_LEN)))
    gateway = ChildSa(spi_in=0x2002, spi_out=0x1001, encr="aes128gcm16", integ=None,
                      esn=False, keys=SaKeys(k_cg, k_gc),
                      ts_remote=(TrafficSelector.from_network("10.99.0.7/32"),),
                      iv_source=IvSource(os.urandom(PREFIX_LEN)))
    inner = gateway.open(client.seal(push_echo("10.99.0.7", "10.20.0.10", 1, 5), 0.0), 0.0)
    assert pull_echo_reply(inner) is None           # a request reached the gateway
    reply = push_echo("10.20.0.10", "10.99.0.7", 1, 5)
    reply = reply[:20] + b"\x00" + reply[21:]
    assert pull_echo_reply(client.open(gateway.seal(reply, 0.0), 0.0)) == (1, 5)
    # a spoofed source on the client's SA is a counted drop
    assert gateway.receive(client.seal(push_echo("10.99.0.8", "10.20.0.10", 1, 6), 0.0),
                           0.0) is None
    assert sum(gateway.drops.values()) == 1
