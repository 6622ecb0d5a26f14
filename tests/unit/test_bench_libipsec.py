"""bench/libipsec: charon's configuration for the data-plane baseline, and the reading of its
Child SA counters from `swanctl --list-sas` (text as strongSwan 5.9.8 prints it)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import libipsec
from cluster.esp import ChildSa, SaKeys, TrafficSelector
from cluster.lab.strongswan import PLUGINS

LIST_SAS = """\
bench: #1, ESTABLISHED, IKEv2, c5ce2733253ef354_i b695fbb7dacd5542_r*
  local  'gateway@libipsec.bench.example' @ 203.0.113.10[4500]
  remote 'client@libipsec.bench.example' @ 10.50.0.1[4500] [10.99.0.7]
  AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519
  established 2s ago, rekeying in 13010s
  bench: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
    installed 2s ago, rekeying in 3260s, expires in 3958s
    in  a55abc17, 128800 bytes,    92 packets,     1s ago
    out 0c74b078,      0 bytes,     0 packets
    local  10.20.0.0/24
    remote 10.99.0.7/32
  bench: #2, reqid 2, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
    installed 1s ago, rekeying in 3300s, expires in 3958s
    in  c0ffee01, 1400000000 bytes, 1000000 packets,     0s ago
    out 0c74b079,   1400 bytes,     1 packets,     0s ago
    local  10.20.0.0/24
    remote 10.99.0.7/32
"""


def test_in_packets_sums_inbound_counters_only() -> None:
    assert libipsec.in_packets(LIST_SAS) == 92 + 1_000_000


def test_in_packets_of_no_sa_is_zero() -> None:
    assert libipsec.in_packets("") == 0
    assert libipsec.in_packets(LIST_SAS.split("  bench: #1, reqid")[0]) == 0


def test_gateway_forces_udp_encapsulation_and_pins_the_client_address() -> None:
    conf = libipsec.swanctl_conf("203.0.113.10", "10.99.0.7", "10.20.0.0/24")
    assert "encap = yes" in conf          # kernel-libipsec carries only ESP-in-UDP
    assert "addrs = 10.99.0.7/32" in conf
    assert "local_ts = 10.20.0.0/24" in conf
    assert f"esp_proposals = {libipsec.ESP_PROPOSAL}" in conf
    assert conf.count("auth = psk") == 2


def test_charon_loads_kdf_and_kernel_libipsec(tmp_path: Path) -> None:
    conf = libipsec.strongswan_conf(tmp_path / "charon.log")
    assert f"load = {PLUGINS}" in conf
    assert {"kdf", "kernel-libipsec"} <= set(PLUGINS.split())


def test_client_sa_seals_what_the_gateway_side_opens(tmp_path: Path) -> None:
    """The file `establish` writes holds the initiator's view: its out key is what the
    gateway receives with, under the gateway's SPI."""
    k_ir, k_ri = bytes(range(20)), bytes(range(20, 40))
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "spi_in": 0x1111, "spi_out": 0x2222, "encr": "aes128gcm16", "integ": None,
        "esn": False, "enc_key_in": k_ri.hex(), "enc_key_out": k_ir.hex(),
        "integ_key_in": "", "integ_key_out": "", "virtual_ip": "10.99.0.7"}))
    client = libipsec.client_sa(path)
    gateway = ChildSa(spi_in=0x2222, spi_out=0x1111, encr="aes128gcm16", integ=None,
                      esn=False, keys=SaKeys(k_ir, k_ri),
                      ts_remote=(TrafficSelector.from_network("10.99.0.7/32"),))
    inner = bytes.fromhex("4500001c00004000401100000a6300070a14000a") + bytes(8)
    packet = client.seal(inner, 0.0)
    assert packet[:4] == (0x2222).to_bytes(4, "big")
    assert gateway.open(packet, 0.0) == inner
