"""The algorithms native clients need, end to end through keyd's initiator and responder,
plus the published vectors of the new primitives (cited next to each)."""

from __future__ import annotations

from typing import Any

import pytest
from ikepair import CLIENT, PSK, VIP, Clock, Side, run
from scapy.layers.tls.crypto import groups as scapy_groups

from cluster.esp import ChildSa as EspChildSa
from cluster.esp import IvSource, SaKeys, TrafficSelector
from cluster.esp.suites import make_cipher, suite
from keyd.ike import (
    ChildSaEstablished,
    Credentials,
    ExchangeFailed,
    IkeSaEstablished,
    IkeSaRekeyed,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)
from keyd.ike.constants import Notify
from keyd.ike.dh import _MODP_PRIMES, KeyExchange
from keyd.ike.errors import IkeProtocolError
from keyd.ike.keys import prf, skeyseed
from keyd.ike.proposals import parse_ike_suite
from keyd.ike.protect import SkKeys, _crypter, _mac
from keyd.ike.transforms import ENCRS, INTEGS, PRFS

# ---- vectors ----------------------------------------------------------------------------

# RFC 4615 §4 (AES-CMAC-PRF-128 with 18-, 16- and 10-byte keys over a 20-byte message),
# https://www.rfc-editor.org/rfc/rfc4615#section-4
RFC4615_MESSAGE = bytes(range(20))
RFC4615 = [
    ("000102030405060708090a0b0c0d0e0fedcb", "84a348a4a45d235babfffc0d2b4da09a"),
    ("000102030405060708090a0b0c0d0e0f", "980ae87b5f4c9c5214f5b6a8455e4c2d"),
    ("00010203040506070809", "290d9e112edb09ee141fcf64c0b72f3d"),
]


@pytest.mark.parametrize(("key", "out"), RFC4615)
def test_aes_cmac_prf_rfc4615(key: str, out: str) -> None:
    assert prf(PRFS["prfaescmac"], bytes.fromhex(key), RFC4615_MESSAGE).hex() == out


# RFC 4494 §4 (AES-CMAC-96: the RFC 4493 examples truncated to 96 bits),
# https://www.rfc-editor.org/rfc/rfc4494#section-4
RFC4494_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4494 = [
    ("", "bb1d6929e95937287fa37d12"),
    ("6bc1bee22e409f96e93d7e117393172a", "070a16b46b4d4144f79bdd9d"),
]


@pytest.mark.parametrize(("msg", "icv"), RFC4494)
def test_aes_cmac_96_rfc4494(msg: str, icv: str) -> None:
    ike = SkKeys(ENCRS["aes128"], INTEGS["aescmac"], bytes(16), RFC4494_KEY)
    assert _mac(ike, bytes.fromhex(msg))[:12].hex() == icv
    esp = make_cipher(suite("aes128", "aescmac"), bytes(16), RFC4494_KEY)
    # the ESP ICV covers SPI | seq | IV | ciphertext: split the message over header and body
    m = bytes.fromhex(msg)
    assert esp._icv(m[:8], m[8:], None).hex() == icv  # type: ignore[attr-defined]


# RFC 3686 §6, Test Vectors #1 and #2 (AES-CTR with a 128-bit key),
# https://www.rfc-editor.org/rfc/rfc3686#section-6
RFC3686 = [
    ("ae6852f8121067cc4bf7a5765577f39e", "00000030", "0000000000000000",
     b"Single block msg".hex(), "e4095d4fb7a7b3792d6175a3261311b8"),
    ("7e24067817fae0d743d6ce1f32539163", "006cb6db", "c0543b59da48d90b",
     bytes(range(32)).hex(),
     "5104a106168a72d9790d41ee8edad388eb2e1efc46da57c8fce630df9141be28"),
]


@pytest.mark.parametrize(("key", "nonce", "iv", "plain", "cipher"), RFC3686)
def test_aes_ctr_rfc3686(key: str, nonce: str, iv: str, plain: str, cipher: str) -> None:
    k, n, v = bytes.fromhex(key), bytes.fromhex(nonce), bytes.fromhex(iv)
    p = bytes.fromhex(plain)
    # IKE (RFC 5930 §2): SK_e = key | nonce, 8-byte IV in the payload
    ctx = _crypter(SkKeys(ENCRS["aes128ctr"], INTEGS["sha256"], k + n, bytes(32)), v)
    enc = ctx.encryptor()
    assert (enc.update(p) + enc.finalize()).hex() == cipher
    # ESP (RFC 3686 §5.1): the same key material; the body is IV | ciphertext | ICV
    esp = make_cipher(suite("aes128ctr", "sha256"), k + n, bytes(32))
    body = esp.seal(v, b"\x00" * 8, p, None)
    assert body[:8] == v and body[8:8 + len(p)].hex() == cipher
    assert esp.open(b"\x00" * 8, body, None) == p


@pytest.mark.parametrize("group", [2, 14, 15, 16])
def test_modp_primes_match_an_independent_table(group: int) -> None:
    """RFC 2409 §6.2 / RFC 3526: the primes as scapy's TLS code carries them."""
    name = {2: "modp1024", 14: "modp2048", 15: "modp3072", 16: "modp4096"}[group]
    assert _MODP_PRIMES[group] == getattr(scapy_groups, name).m


@pytest.mark.parametrize("group,size", [(2, 128), (15, 384), (16, 512), (21, 132), (32, 56)])
def test_new_dh_groups_agree_and_reject_junk(group: int, size: int) -> None:
    a, b = KeyExchange(group), KeyExchange(group)
    assert len(a.public) == size
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    junks = [b"", a.public[:-1], b"\x00" * size]  # x448: all-zero is a low-order point
    if group != 32:
        junks.append(b"\xff" * size)  # out of range / not on the curve
    for junk in junks:
        with pytest.raises(IkeProtocolError) as e:
            a.shared_secret(junk)
        assert e.value.notify == Notify.INVALID_SYNTAX


def test_cmac_prf_skeyseed_takes_half_of_each_nonce() -> None:
    """RFC 7296 §2.14: a fixed-key PRF is keyed with the first 64 bits of Ni and of Nr."""
    s = parse_ike_suite("aes128ctr-aescmac-prfaescmac-ecp256")
    ni, nr = bytes(range(32)), bytes(range(100, 132))
    assert skeyseed(s, ni, nr, b"g") == prf(s.prf, ni[:8] + nr[:8], b"g")
    assert skeyseed(s, ni, nr + b"x", b"g") == skeyseed(s, ni, nr, b"g")


# ---- initiator against responder ----------------------------------------------------------

PAIRS = [
    ("aes256-sha1-modp2048", "aes256-sha1"),  # Windows with NegotiateDH2048_AES256
    ("aes192-sha256-modp3072", "aes192-sha256"),
    ("aes256ctr-sha512-modp4096", "aes128ctr-sha256"),
    ("aes128ctr-aescmac-ecp521", "aes256ctr-aescmac"),
    ("aes128gcm8-prfaescmac-x448", "aes128gcm8"),
    ("aes256gcm12-prfsha1-ecp384", "aes256gcm12-esn"),
    ("aes192gcm16-prfsha384-curve448", "aes192gcm16"),
    ("3des-sha1-modp1024", "3des-sha1"),  # legacy: only because both name it
]


def pair(client_ike: list[str], client_esp: list[str], server_ike: list[str],
         server_esp: list[str]) -> tuple[Side, Side, Clock]:
    server = Side(Responder(ResponderConfig(
        identity="vpn.example.net", credentials=Credentials(psk=PSK),
        ike_proposals=server_ike, esp_proposals=server_esp,
        protected_networks=["10.20.0.0/16"])))
    client = Side(Initiator(InitiatorConfig(
        identity="client@example.net", credentials=Credentials(psk=PSK),
        ike_proposals=client_ike, esp_proposals=client_esp)))
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    return client, server, clock


def esp_pair(c: Any, s: Any) -> tuple[EspChildSa, EspChildSa]:
    """cluster/esp SAs from the Child SA events: the keys keyd derived run the data plane."""
    def make(x: Any, prefix: bytes) -> EspChildSa:
        return EspChildSa(spi_in=x.spi_in, spi_out=x.spi_out, encr=x.encr, integ=x.integ,
                          esn=x.esn, keys=SaKeys(x.enc_key_in, x.enc_key_out,
                                                 x.integ_key_in, x.integ_key_out),
                          ts_remote=(TrafficSelector.from_network("0.0.0.0/0"),),
                          iv_source=IvSource(prefix))
    return make(c, b"\0\0\0\1"), make(s, b"\0\0\0\2")


PING = bytes.fromhex("45000054000040004001" "0000" "0a630001" "0a14000a") + b"\x08" + bytes(63)


@pytest.mark.parametrize("ike,esp", PAIRS)
def test_establish_rekey_and_carry_esp(ike: str, esp: str) -> None:
    client, server, clock = pair([ike], [esp], [ike], [esp])
    assert client.of(IkeSaEstablished) and server.of(IkeSaEstablished)
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    assert server.endpoint.export_ike_sa(sa_id)["suite"] == parse_ike_suite(
        server.endpoint.export_ike_sa(sa_id)["suite"]).name
    c, s = client.of(ChildSaEstablished)[-1].child, server.of(ChildSaEstablished)[-1].child
    assert s.encr == esp.split("-")[0] and s.esn == esp.endswith("-esn")
    client_esp, node_esp = esp_pair(c, s)
    assert node_esp.open(client_esp.seal(PING, 0.0), 0.0) == PING
    assert client_esp.open(node_esp.seal(PING, 0.0), 0.0) == PING
    # the IKE SA rekeys with its own suite and carries CREATE_CHILD_SA after that
    client.endpoint.rekey_ike(clock.now)
    run(client, server, clock)
    assert server.of(IkeSaRekeyed)
    client.endpoint.rekey_child(c.spi_in, clock.now)
    run(client, server, clock)
    assert len(server.of(ChildSaEstablished)) == 2 and not client.of(ExchangeFailed)


# what the strongSwan and native clients send, against an operator's config: default
# plus the explicit extras those clients need
OPERATOR_IKE = ["default", "aes256-aes128-sha1-sha256-sha384-modp2048",
                "chacha20poly1305-prfsha384-ecp384"]
OPERATOR_ESP = ["default", "aes256-aes128-sha1-sha256-sha512"]
CLIENTS = [
    ("aes256gcm16-prfsha512-ecp256", "aes256gcm16", "aes256gcm16-prfsha512-ecp256"),
    ("aes256-sha512-curve25519", "aes256-sha512", "aes256-sha512-prfsha512-x25519"),
    ("chacha20poly1305-prfsha384-ecp384", "chacha20poly1305-esn",
     "chacha20poly1305-prfsha384-ecp384"),
    ("aes256-sha1-modp2048", "aes256-sha1", "aes256-sha1-prfsha1-modp2048"),
    ("aes256-sha256-modp2048", "aes256-sha256", "aes256-sha256-prfsha256-modp2048"),
    ("aes256-sha512-modp3072", "aes256-sha512", "aes256-sha512-prfsha512-modp3072"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305",
     "chacha20poly1305-prfsha256-x25519"),
    ("default", "default", "aes128gcm16-prfsha256-x25519"),
]


@pytest.mark.parametrize("ike,esp,chosen", CLIENTS)
def test_native_client_proposals_against_default_plus_extras(ike: str, esp: str,
                                                             chosen: str) -> None:
    _, server, _ = pair([ike], [esp], OPERATOR_IKE, OPERATOR_ESP)
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    assert server.endpoint.export_ike_sa(sa_id)["suite"] == chosen
    s = server.of(ChildSaEstablished)[-1].child
    assert s.esn == esp.endswith("-esn")
    assert server.endpoint.counters.errors["INVALID_KE_PAYLOAD"] == 0


def test_windows_default_offer_needs_the_legacy_proposal() -> None:
    """Windows 10/11 by default: 3des-aes128-aes192-aes256-sha1-sha256-sha384-modp1024."""
    windows_ike, windows_esp = ["3des-aes128-aes192-aes256-sha1-sha256-sha384-modp1024"], \
        ["aes256-aes128-sha1"]
    client, server, _ = pair(windows_ike, windows_esp, ["default"], ["default"])
    assert client.of(ExchangeFailed)[0].notify == Notify.NO_PROPOSAL_CHOSEN
    client, server, _ = pair(windows_ike, windows_esp,
                             ["default", "aes256-aes128-sha256-sha1-modp1024"],
                             ["default", "aes256-aes128-sha1"])
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    # the client's order: aes128 before aes256, sha1 first, as Windows lists them
    assert server.endpoint.export_ike_sa(sa_id)["suite"] == "aes128-sha1-prfsha1-modp1024"
    assert server.of(ChildSaEstablished)[-1].child.encr == "aes256"


def test_invalid_ke_round_trip_to_a_group_both_accept() -> None:
    """A client that guesses x25519 first, offering ecp521 too, against ecp521 only."""
    _, server, _ = pair(["aes256gcm16-prfsha512-x25519-ecp521"], ["aes256gcm16"],
                             ["aes256gcm16-prfsha512-ecp384-ecp521"], ["aes256gcm16"])
    assert server.endpoint.counters.errors["INVALID_KE_PAYLOAD"] == 1
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    assert server.endpoint.export_ike_sa(sa_id)["suite"] == "aes256gcm16-prfsha512-ecp521"


@pytest.mark.parametrize("client_esp", ["aes256-sha256", "aes256-sha256-ecp256"])
def test_default_esp_rekeys_with_and_without_pfs(client_esp: str) -> None:
    """iOS/macOS rekey Child SAs with PFS or without: `default` accepts both."""
    client, server, clock = pair(["aes256-sha256-ecp256"], [client_esp], ["default"],
                                 ["default"])
    c = client.of(ChildSaEstablished)[-1].child
    client.endpoint.rekey_child(c.spi_in, clock.now, pfs=client_esp.endswith("ecp256"))
    run(client, server, clock)
    assert len(server.of(ChildSaEstablished)) == 2 and not client.of(ExchangeFailed)
