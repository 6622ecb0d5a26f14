"""Key derivation: prf, prf+ (RFC 7296 §2.13), SKEYSEED and the IKE SA keys (§2.14), Child SA
KEYMAT (§2.17), IKE SA rekey (§2.18)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import cmac, hmac
from cryptography.hazmat.primitives.ciphers import algorithms

from .transforms import ChildSuite, IkeSuite, Prf

NONCE_LEN = 32  # bytes of our nonces: at least half the PRF key size (§2.10)
AES_BLOCK = 16


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (RFC 4493) of `data` under a 16-byte key."""
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def prf(alg: Prf, key: bytes, data: bytes) -> bytes:
    if alg.hash is None:
        # RFC 4615 §3: AES-CMAC-PRF-128 takes a key of any length; one that is not 128 bits
        # is first reduced to K = AES-CMAC(0^128, key)
        if len(key) != AES_BLOCK:
            key = aes_cmac(bytes(AES_BLOCK), key)
        return aes_cmac(key, data)
    h = hmac.HMAC(key, alg.hash())
    h.update(data)
    return h.finalize()


def prf_plus(alg: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """§2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); at most 255 blocks."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ cannot produce that much key material")
        t = prf(alg, key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """SK_d, SK_ai/ar (empty with an AEAD), SK_ei/er (salt included), SK_pi/pr."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:
        return "IkeKeys(<redacted>)"  # logs never carry key material


def derive_ike_keys(
    suite: IkeSuite, skeyseed: bytes, ni: bytes, nr: bytes, spi_i: int, spi_r: int
) -> IkeKeys:
    """§2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, …)."""
    p, a, e = suite.prf.key_len, suite.integ.key_len if suite.integ else 0, suite.encr.key_len
    seed = ni + nr + spi_i.to_bytes(8, "big") + spi_r.to_bytes(8, "big")
    km = prf_plus(suite.prf, skeyseed, seed, 3 * p + 2 * a + 2 * e)
    parts = []
    pos = 0
    for n in (p, a, a, e, e, p, p):
        parts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(*parts)


def skeyseed(suite: IkeSuite, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """§2.14: SKEYSEED = prf(Ni | Nr, g^ir). A PRF with a fixed key size takes half its key
    from the start of each nonce (§2.14; AES-CMAC-PRF-128: 64 bits of Ni, 64 of Nr)."""
    if suite.prf.fixed_key:
        half = suite.prf.key_len // 2
        return prf(suite.prf, ni[:half] + nr[:half], g_ir)
    return prf(suite.prf, ni + nr, g_ir)


def rekey_skeyseed(old_prf: Prf, old_sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes) -> bytes:
    """§2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the old SA's PRF."""
    return prf(old_prf, old_sk_d, g_ir + ni + nr)


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """Child SA keys by direction: i→r (initiator to responder) and r→i (§2.17 order)."""

    encr_ir: bytes
    integ_ir: bytes
    encr_ri: bytes
    integ_ri: bytes


def derive_child_keys(
    prf_alg: Prf, sk_d: bytes, suite: ChildSuite, ni: bytes, nr: bytes, g_ir: bytes = b""
) -> ChildKeys:
    """§2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); i→r keys first, encryption first."""
    e = suite.encr.key_len
    a = suite.integ.key_len if suite.integ else 0
    km = prf_plus(prf_alg, sk_d, g_ir + ni + nr, 2 * (e + a))
    return ChildKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :])
