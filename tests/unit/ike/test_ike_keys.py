"""Key derivation, DH groups, proposals: published vectors where they exist (cited)."""

from __future__ import annotations

import pytest

from keyd.ike.constants import Notify
from keyd.ike.dh import KeyExchange
from keyd.ike.errors import IkeProtocolError
from keyd.ike.keys import derive_child_keys, derive_ike_keys, prf, prf_plus, skeyseed
from keyd.ike.proposals import parse_esp_suite, parse_ike_suite
from keyd.ike.transforms import PRFS

# RFC 4231 §4.3 (Test Case 2): HMAC-SHA-256/384/512 are the IKEv2 PRFs of RFC 4868 §2.7.1,
# https://www.rfc-editor.org/rfc/rfc4231#section-4.3
RFC4231_CASE2 = {
    "prfsha256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    "prfsha384": "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                 "8e2240ca5e69e2c78b3239ecfab21649",
    "prfsha512": "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                 "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
}


@pytest.mark.parametrize("name", sorted(RFC4231_CASE2))
def test_prf_rfc4231(name: str) -> None:
    assert prf(PRFS[name], b"Jefe", b"what do ya want for nothing?").hex() == RFC4231_CASE2[name]


def test_prf_plus_is_the_rfc7296_iteration() -> None:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), ..."""
    alg, key, seed = PRFS["prfsha256"], b"k" * 32, b"seed"
    t1 = prf(alg, key, seed + b"\x01")
    t2 = prf(alg, key, t1 + seed + b"\x02")
    t3 = prf(alg, key, t2 + seed + b"\x03")
    assert prf_plus(alg, key, seed, 80) == (t1 + t2 + t3)[:80]
    with pytest.raises(ValueError):
        prf_plus(alg, key, seed, 255 * 32 + 1)


# RFC 7748 §6.1, https://www.rfc-editor.org/rfc/rfc7748#section-6.1 (X25519, group 31 per
# RFC 8031 §2: the KE payload is the 32-byte u-coordinate)
def test_x25519_rfc7748() -> None:
    a = KeyExchange(31, bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    assert a.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    shared = a.shared_secret(bytes.fromhex(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))
    assert shared.hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


# RFC 5903 §8.1, https://www.rfc-editor.org/rfc/rfc5903#section-8.1 (256-bit random ECP
# group 19): KE data is x | y (§7), the shared secret is the x coordinate of g^ir.
def test_ecp256_rfc5903() -> None:
    i = KeyExchange(19, bytes.fromhex(
        "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433"))
    assert i.public.hex().upper() == (
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3")
    g_r = bytes.fromhex(
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
        "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB")
    assert i.shared_secret(g_r).hex().upper() == (
        "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")


@pytest.mark.parametrize("group,size", [(14, 256), (19, 64), (20, 96), (31, 32)])
def test_dh_groups_agree_and_reject_junk(group: int, size: int) -> None:
    a, b = KeyExchange(group), KeyExchange(group)
    assert len(a.public) == size
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    junks = [b"", a.public[:-1], b"\x00" * size]  # x25519: all-zero is a low-order point
    if group != 31:
        junks.append(b"\xff" * size)  # out of range / not on the curve
    for junk in junks:
        with pytest.raises(IkeProtocolError) as e:
            a.shared_secret(junk)
        assert e.value.notify == Notify.INVALID_SYNTAX


@pytest.mark.parametrize("text", ["aes128gcm16-prfsha256-x25519", "aes256-sha384-ecp384",
                                  "chacha20poly1305-prfsha256-x25519", "aes128-sha256-modp2048",
                                  "aes256gcm16-prfsha512-ecp256", "aes256-sha512-x25519"])
def test_ike_key_lengths(text: str) -> None:
    """§2.14: SK_d/pi/pr are PRF-sized, SK_a the INTEG key size, SK_e encr key + salt."""
    suite = parse_ike_suite(text)
    keys = derive_ike_keys(suite, skeyseed(suite, b"n" * 32, b"m" * 32, b"g" * 32),
                           b"n" * 32, b"m" * 32, 1, 2)
    p = suite.prf.key_len
    assert (len(keys.sk_d), len(keys.sk_pi), len(keys.sk_pr)) == (p, p, p)
    a = suite.integ.key_len if suite.integ else 0
    assert (len(keys.sk_ai), len(keys.sk_ar)) == (a, a)
    assert len(keys.sk_ei) == len(keys.sk_er) == suite.encr.key_len
    assert len({keys.sk_d, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr}) == 5


def test_child_keymat_order() -> None:
    """§2.17: KEYMAT = prf+(SK_d, Ni | Nr); i→r encryption, i→r integrity, then r→i."""
    alg, suite = PRFS["prfsha256"], parse_esp_suite("aes256-sha384")
    km = prf_plus(alg, b"d" * 32, b"i" * 32 + b"r" * 32, 2 * (32 + 48))
    keys = derive_child_keys(alg, b"d" * 32, suite, b"i" * 32, b"r" * 32)
    assert keys.encr_ir == km[:32] and keys.integ_ir == km[32:80]
    assert keys.encr_ri == km[80:112] and keys.integ_ri == km[112:]
    gcm = derive_child_keys(alg, b"d" * 32, parse_esp_suite("aes128gcm16"), b"i", b"r")
    assert len(gcm.encr_ir) == 20 and gcm.integ_ir == b""  # 16-byte key + 4-byte salt
    pfs = derive_child_keys(alg, b"d" * 32, suite, b"i", b"r", g_ir=b"g" * 32)
    assert pfs.encr_ir == prf_plus(alg, b"d" * 32, b"g" * 32 + b"i" + b"r", 32)
