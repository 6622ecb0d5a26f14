"""Real strongSwan 5.9 clients with the proposals native clients and strongSwan users send,
against keyd configured as an operator would (`default` plus explicit extras:
cluster/lab/daemons.py LAB_IKE_PROPOSALS / LAB_ESP_PROPOSALS).

One lab for the module (two shared cores: one lab up and down, not one per pair); each pair
is its own client, which reaches ESTABLISHED with a virtual IP and pings the protected server
through the node. kernel-libipsec (the clients' ESP) cannot install an ESN Child SA: an ESN
pair is checked for negotiation only — keyd's choice in the client's log, and the IKE SA up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _require_lab_tools, unique_lab_name

from cluster.lab import lab as labmod
from cluster.lab import strongswan
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab

# (IKE proposal, ESP proposal, what charon logs as the selected IKE / ESP proposal)
PAIRS = [
    ("aes256gcm16-prfsha512-ecp256", "aes256gcm16",
     "IKE:AES_GCM_16_256/PRF_HMAC_SHA2_512/ECP_256", "ESP:AES_GCM_16_256/NO_EXT_SEQ"),
    ("aes256-sha512-curve25519", "aes256-sha512",
     "IKE:AES_CBC_256/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/CURVE_25519",
     "ESP:AES_CBC_256/HMAC_SHA2_512_256/NO_EXT_SEQ"),
    ("chacha20poly1305-prfsha384-ecp384", "chacha20poly1305-esn",
     "IKE:CHACHA20_POLY1305/PRF_HMAC_SHA2_384/ECP_384", "ESP:CHACHA20_POLY1305/EXT_SEQ"),
    ("aes256-sha1-modp2048", "aes256-sha1",  # Windows (NegotiateDH2048_AES256)
     "IKE:AES_CBC_256/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048",
     "ESP:AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ"),
    ("aes256-sha256-modp2048", "aes256-sha256",  # Apple
     "IKE:AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
     "ESP:AES_CBC_256/HMAC_SHA2_256_128/NO_EXT_SEQ"),
    ("aes256-sha512-modp3072", "aes256-sha512",  # Android
     "IKE:AES_CBC_256/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/MODP_3072",
     "ESP:AES_CBC_256/HMAC_SHA2_512_256/NO_EXT_SEQ"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305",  # Android
     "IKE:CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
     "ESP:CHACHA20_POLY1305/NO_EXT_SEQ"),
    ("default", "default",  # strongSwan's defaults against keyd's: the client's first wins
     "IKE:AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519",
     "ESP:AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ"),
    # the algorithms added for Android and Windows, checked against charon's implementation
    ("aes256ctr-aescmac-prfaescmac-ecp521", "aes128ctr-aescmac",
     "IKE:AES_CTR_256/AES_CMAC_96/PRF_AES128_CMAC/ECP_521",
     "ESP:AES_CTR_128/AES_CMAC_96/NO_EXT_SEQ"),
    ("aes128gcm8-prfsha256-x448", "aes256gcm12",
     "IKE:AES_GCM_8_128/PRF_HMAC_SHA2_256/CURVE_448", "ESP:AES_GCM_12_256/NO_EXT_SEQ"),
    ("aes256gcm12-prfaescmac-modp4096", "aes128gcm8",
     "IKE:AES_GCM_12_256/PRF_AES128_CMAC/MODP_4096", "ESP:AES_GCM_8_128/NO_EXT_SEQ"),
    ("aes192ctr-sha384-ecp384", "aes192-sha1",
     "IKE:AES_CTR_192/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/ECP_384",
     "ESP:AES_CBC_192/HMAC_SHA1_96/NO_EXT_SEQ"),
    ("3des-sha1-modp1024", "3des-sha1",  # legacy, only because keyd's config names it
     "IKE:3DES_CBC/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024", "ESP:3DES_CBC/HMAC_SHA1_96/NO_EXT_SEQ"),
]
IDS = [f"{ike}/{esp}" for ike, esp, _, _ in PAIRS]


@pytest.fixture(scope="module")
def proposals_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    _require_lab_tools()
    name = unique_lab_name("props")
    logs = tmp_path_factory.mktemp("lab-logs") / name
    try:
        yield Lab.up(name, nodes=1, keyd=1, save_logs_to=logs)
    finally:
        labmod.down(name, logs)


def selected(log: str) -> list[str]:
    return re.findall(r"selected proposal: (\S+)", log)


@pytest.mark.parametrize(("ike", "esp", "ike_chosen", "esp_chosen"), PAIRS, ids=IDS)
def test_client_establishes_and_pings(proposals_lab: Lab, ike: str, esp: str,
                                      ike_chosen: str, esp_chosen: str) -> None:
    lab = proposals_lab
    name = f"p{PAIRS.index((ike, esp, ike_chosen, esp_chosen))}"
    log_path: Path = lab.dir / "logs" / f"client-{name}-charon.log"
    # each client stays until the lab goes down (a removed client's slot reused at once can
    # race the kernel's removal of its veth)
    if esp.endswith("-esn"):
        with pytest.raises(LabError, match="CHILD_SA"):
            lab.add_client(name, ike_proposal=ike, esp_proposal=esp)
        log = log_path.read_text()
        assert "ESN not supported" in log
    else:
        lab.add_client(name, ike_proposal=ike, esp_proposal=esp)
        log = log_path.read_text()
    assert selected(log)[:2] == [ike_chosen, esp_chosen], selected(log)
    sas = [sa for sa in lab.client_sas(name) if sa.state == "ESTABLISHED"]
    assert len(sas) == 1 and sas[0].virtual_ip is not None, sas
    if not esp.endswith("-esn"):
        assert lab.ping(name, count=3, settle_s=10.0), f"{name}: no answer from the server"


def test_apple_style_child_rekey_with_pfs(proposals_lab: Lab) -> None:
    """iOS/macOS may rekey the Child SA with PFS: keyd's `default` ESP accepts it."""
    lab, name = proposals_lab, "pfs"
    lab.add_client(name, ike_proposal="aes256-sha256-modp2048",
                   esp_proposal="aes256-sha256-modp2048")
    (before,) = [sa for sa in lab.client_sas(name) if sa.state == "ESTABLISHED"]
    ((_, old_out),) = before.child_spis
    strongswan.swanctl(lab.client_pid(name), "--rekey", "--child", "lab")
    deadline = time.monotonic() + 20
    while not [sa for sa in lab.client_sas(name)
               if sa.child_spis and sa.child_spis[0][1] != old_out]:
        assert time.monotonic() < deadline, "the Child SA was not rekeyed"
        time.sleep(0.2)
    log = (lab.dir / "logs" / f"client-{name}-charon.log").read_text()
    assert "ESP:AES_CBC_256/HMAC_SHA2_256_128/MODP_2048/NO_EXT_SEQ" in selected(log), \
        selected(log)
    assert lab.ping(name, count=3, settle_s=10.0)
