"""keyd with real strongSwan clients in the lab (client → VIP → keyd), checked against etcd.

- PSK and certificate clients for each IKE/ESP proposal pair of the keyd issue reach
  ESTABLISHED with a virtual IP, and the ESP they then send, captured on the client's wire,
  decrypts with scapy's SecurityAssociation under the keys keyd stored in etcd — an
  independent check of keyd's key derivation and of what the nodes will use. strongSwan's
  kernel-libipsec (the only ESP the clients have on a kernel without ESP) cannot install an
  ESN Child SA ("ESN not supported"): for `aes128gcm16-esn` the client's IKE SA establishes,
  keyd's choice of ESN is checked in the client's log, the client deletes the Child SA it
  cannot install and etcd follows; the ESP check for that IKE suite uses `aes128gcm16`;
- `swanctl --rekey --child`, `--rekey --ike` and `--terminate`: etcd follows;
- keyd killed and started again: the client's next rekey succeeds on the same IKE SA;
- etcd stopped: a new client is refused (TEMPORARY_FAILURE, which charon logs and gives up
  on), an established one is unaffected; etcd back: the new client establishes.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import rdpcap

from cluster.lab import addresses as A
from cluster.lab import strongswan
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import Assignment, ChildSaRecord, IkeSaRecord, PoolLease
from cluster.store.seal import load_data_key
from keyd.engine import ETCD_REFUSE_AFTER_S

PAIRS = [
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
    ("aes256-sha384-ecp384", "aes256-sha256"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
    ("aes128-sha256-modp2048", "aes128gcm16-esn"),
    # the algorithms native clients added (Windows SHA-1, Android AES-CTR / AES-CMAC)
    ("aes256-sha1-modp2048", "aes256-sha1"),
    ("aes256ctr-aescmac-prfaescmac-ecp521", "aes128ctr-aescmac"),
]
SCAPY_ENCR = {"aes128gcm16": "AES-GCM", "aes256gcm16": "AES-GCM", "aes128": "AES-CBC",
              "aes256": "AES-CBC", "chacha20poly1305": "CHACHA20-POLY1305",
              "aes128ctr": "AES-CTR"}
SCAPY_INTEG = {None: None, "sha256": "SHA2-256-128", "sha384": "SHA2-384-192",
               "sha512": "SHA2-512-256", "sha1": "HMAC-SHA1-96", "aescmac": "AES-CMAC-96"}


@contextlib.contextmanager
def lab_store(lab: Lab) -> Iterator[Store]:
    key = load_data_key(lab.pki.data_key_file, environ={})
    store = Store([lab.etcd_endpoint], Keyspace(lab.name), key, timeout_s=5.0)
    try:
        yield store
    finally:
        store.close()


def wait_until(pred: Callable[[], Any], timeout_s: float = 20.0, what: str = "", *,
               step_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(step_s)


def only_sa(lab: Lab, client: str) -> strongswan.IkeSaView:
    sas = [sa for sa in lab.client_sas(client) if sa.state == "ESTABLISHED"]
    assert len(sas) == 1, sas
    return sas[0]


def ike_id(sa: strongswan.IkeSaView) -> str:
    return f"{int(sa.spi_i, 16):016x}{int(sa.spi_r, 16):016x}"


def capture_esp(lab: Lab, client: str, pcap: Path, role: str) -> list[bytes]:
    """ESP-in-UDP payloads the client sends while it pings the protected server."""
    lab.spawn_in(client, role, ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(pcap),
                                "udp and dst port 4500"])
    wait_until(lambda: pcap.exists(), 10, "tcpdump to start")
    time.sleep(0.5)
    lab.run(client, ["ping", "-c", "3", "-i", "0.2", "-W", "1", A.SERVER_IP])
    time.sleep(0.3)
    lab.kill(role, signal.SIGINT)
    out = []
    for pkt in rdpcap(str(pcap)):
        if UDP in pkt:
            payload = bytes(pkt[UDP].payload)
            if len(payload) > 8 and payload[:4] != b"\0\0\0\0":   # ESP, not IKE
                out.append(payload)
    return out


def decrypt_with_etcd_keys(record: ChildSaRecord, esp_payload: bytes) -> Any:
    sa = SecurityAssociation(
        ESP, spi=record.spi_in, crypt_algo=SCAPY_ENCR[record.encr],
        crypt_key=record.enc_key_in, auth_algo=SCAPY_INTEG[record.integ],
        auth_key=record.integ_key_in or None, esn_en=record.esn, esn=0,
        tunnel_header=IP(src=record.peer_addr, dst=A.VIP))
    outer = IP(src=record.peer_addr, dst=A.VIP, proto=50) / ESP(esp_payload)
    return sa.decrypt(IP(bytes(outer)))


def esn_refused_by_client(lab: Lab, store: Store, name: str, auth: str, ike: str,
                          esp: str) -> None:
    with pytest.raises(LabError, match="CHILD_SA"):
        lab.add_client(name, auth=auth, ike_proposal=ike, esp_proposal=esp)
    sa = only_sa(lab, name)
    assert sa.virtual_ip is not None and not sa.child_spis
    log = (lab.dir / "logs" / f"client-{name}-charon.log").read_text()
    assert "selected proposal: ESP:AES_GCM_16_128/EXT_SEQ" in log
    assert "ESN not supported" in log
    ike_rec = wait_until(lambda: (r := store.get(IkeSaRecord, ike_id(sa))) is not None
                         and not r.record.child_spis and r, 20, "Child SA delete in etcd")
    assert not [v for v in store.list(ChildSaRecord).items
                if v.record.ike_sa_id == ike_rec.record.ike_sa_id]


@pytest.mark.lab(nodes=1, keyd=1)
@pytest.mark.parametrize("auth", ["psk", "cert"])
def test_proposal_pairs_establish_and_esp_decrypts_with_stored_keys(
        lab: Lab, auth: str, tmp_path: Path) -> None:
    with lab_store(lab) as store:
        for i, (ike, esp) in enumerate(PAIRS):
            name = f"{auth}{i}"
            if esp.endswith("-esn"):
                esn_refused_by_client(lab, store, f"{name}e", auth, ike, esp)
                esp = esp.removesuffix("-esn")
            lab.add_client(name, auth=auth, ike_proposal=ike, esp_proposal=esp)
            sa = only_sa(lab, name)
            assert sa.virtual_ip is not None and sa.virtual_ip.startswith("10.99.0.")
            ((spi_in_hex, spi_out_hex),) = sa.child_spis     # the client's view
            # the cluster receives with the client's outbound SPI
            record = store.get(ChildSaRecord, int(spi_out_hex, 16))
            assert record is not None, f"{name}: no sa/{spi_out_hex} in etcd"
            r = record.record
            assert r.spi_out == int(spi_in_hex, 16) and r.ike_sa_id == ike_id(sa)
            assert r.virtual_ip == sa.virtual_ip and not r.esn
            assert store.get(IkeSaRecord, ike_id(sa)) is not None
            assert store.get(Assignment, ike_id(sa)) is not None
            lease = store.get(PoolLease, sa.virtual_ip)
            assert lease is not None and lease.record.ike_sa_id == ike_id(sa)

            payloads = capture_esp(lab, name, tmp_path / f"{name}.pcap", f"tcpdump-{name}")
            assert payloads, f"{name}: no ESP captured"
            inner = decrypt_with_etcd_keys(r, payloads[0])
            assert inner[IP].src == sa.virtual_ip and inner[IP].dst == A.SERVER_IP, \
                f"{name} ({ike}/{esp}): {inner!r}"


@pytest.mark.lab(nodes=1, keyd=1)
def test_rekeys_and_terminate_followed_in_etcd(lab: Lab) -> None:
    lab.add_client("rita")
    pid = lab._client_pid("rita")
    with lab_store(lab) as store:
        before = only_sa(lab, "rita")
        ((_, old_out),) = before.child_spis
        strongswan.swanctl(pid, "--rekey", "--child", "lab")
        after = wait_until(lambda: [s for s in lab.client_sas("rita") if s.child_spis
                                    and s.child_spis[0][1] != old_out], 20, "child rekey")[0]
        new_out = after.child_spis[0][1]
        wait_until(lambda: store.get(ChildSaRecord, int(old_out, 16)) is None, 20,
                   "old Child SA removed from etcd")
        fresh = store.get(ChildSaRecord, int(new_out, 16))
        assert fresh is not None and fresh.record.replaces == int(old_out, 16)
        assert ike_id(after) == ike_id(before)

        strongswan.swanctl(pid, "--rekey", "--ike", "lab")
        rekeyed = wait_until(lambda: [s for s in lab.client_sas("rita")
                                      if s.state == "ESTABLISHED"
                                      and ike_id(s) != ike_id(before)], 20, "IKE rekey")[0]
        wait_until(lambda: store.get(IkeSaRecord, ike_id(before)) is None, 20,
                   "old IKE SA removed from etcd")
        assert store.get(IkeSaRecord, ike_id(rekeyed)) is not None
        moved = store.get(ChildSaRecord, int(new_out, 16))
        assert moved is not None and moved.record.ike_sa_id == ike_id(rekeyed)
        assign = store.get(Assignment, ike_id(rekeyed))
        assert assign is not None
        # the old owner goes in a later revision (with keyd's next write, or 50 ms later)
        wait_until(lambda: store.get(Assignment, ike_id(before)) is None, 5, "old owner gone")

        strongswan.swanctl(pid, "--terminate", "--ike", "lab")
        wait_until(lambda: not store.list(IkeSaRecord).items, 20, "IKE SA gone")
        wait_until(lambda: not store.list(ChildSaRecord).items, 20, "Child SAs gone")
        assert not store.list(PoolLease).items
        wait_until(lambda: not store.list(Assignment).items, 5, "owner gone")


@pytest.mark.lab(nodes=1, keyd=1)
def test_keyd_restarted_client_rekeys_on_same_ike_sa(lab: Lab) -> None:
    lab.add_client("sam")
    pid = lab._client_pid("sam")
    before = only_sa(lab, "sam")
    lab.kill("keyd-1", signal.SIGKILL)
    lab.start("keyd-1")
    wait_until(lambda: lab._alive_and_bound("keyd-1", 500), 30, "keyd-1 listening again")
    ((_, old_out),) = before.child_spis
    strongswan.swanctl(pid, "--rekey", "--child", "lab")
    after = wait_until(lambda: [s for s in lab.client_sas("sam") if s.child_spis
                                and s.child_spis[0][1] != old_out], 30, "child rekey")[0]
    assert (after.spi_i, after.spi_r) == (before.spi_i, before.spi_r)
    assert after.state == "ESTABLISHED"
    with lab_store(lab) as store:
        ike = store.get(IkeSaRecord, ike_id(after))
        assert ike is not None and ike.record.child_spis == [int(after.child_spis[0][1], 16)]


@pytest.mark.lab(nodes=1, keyd=1)
def test_etcd_stopped_new_client_refused_established_unaffected(lab: Lab) -> None:
    """etcd gone: once keyd knows it (its lease lost), strongSwan's IKE_SA_INIT is answered
    with TEMPORARY_FAILURE; charon logs the refusal and gives up at once (its IKE_SA_INIT
    task fails: no retransmission, no hang); etcd back: the same client establishes."""
    from bench.failover_lab import scrape
    lab.add_client("early")
    early = only_sa(lab, "early")
    lab.kill("etcd", signal.SIGKILL)
    try:
        wait_until(lambda: scrape(lab, "keyd-1", 9410, ("keyd_etcd_available",))
                   .get("keyd_etcd_available") == 0, 30, "keyd knows etcd is gone")
        time.sleep(ETCD_REFUSE_AFTER_S + 0.5)   # past a blip: new clients are refused
        with pytest.raises(LabError, match="could not connect"):
            lab.add_client("late")
        charon_log = (lab.dir / "logs" / "client-late-charon.log").read_text()
        assert "received TEMPORARY_FAILURE notify error" in charon_log, charon_log[-2000:]
        assert "retransmit" not in charon_log   # told at once, not left waiting
        assert scrape(lab, "keyd-1", 9410, ("keyd_ike_sa_init_refused_total",)).get(
            'keyd_ike_sa_init_refused_total{reason="etcd_unavailable"}', 0) >= 1
        # the established client keeps its SAs, and its traffic flows (nodes hold its SA)
        still = only_sa(lab, "early")
        assert (still.spi_i, still.spi_r, still.child_spis) == \
            (early.spi_i, early.spi_r, early.child_spis)
        ping = lab.run("early", ["ping", "-c", "3", "-i", "0.2", "-W", "2", A.SERVER_IP])
        assert ping.returncode == 0, ping.stdout
    finally:
        lab.start("etcd")
    wait_until(lambda: scrape(lab, "keyd-1", 9410, ("keyd_etcd_available",))
               .get("keyd_etcd_available") == 1, 60, "keyd serving again")
    late_pid = lab._client_pid("late")
    # the refused attempt left nothing behind; whatever charon holds, start afresh
    strongswan.swanctl(late_pid, "--terminate", "--ike", "lab", "--timeout", "5", check=False)
    strongswan.initiate(late_pid, timeout_s=60)
    late = only_sa(lab, "late")
    assert late.virtual_ip is not None
    with lab_store(lab) as store:
        assert store.get(IkeSaRecord, ike_id(late)) is not None
        assert store.get(IkeSaRecord, ike_id(early)) is not None
