"""The algorithms the core implements and the suites it negotiates.

Names follow strongSwan ("aes128gcm16", "prfsha256", "sha256", "x25519", "modp2048", "esn")
so a keyd config reads like a swanctl.conf. Encryption and integrity names of Child SAs are the
ones `cluster/esp` uses ("aes128gcm16", "aes256", "aes128ctr", "chacha20poly1305"; "sha256",
"sha1", "aescmac" …). A suite is one algorithm of each transform type, as negotiated; what an
operator configures (several algorithms per type, `default`) is in `proposals.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from .constants import Notify, ProtocolId, TransformType
from .errors import IkeProtocolError
from .payloads import Proposal, Transform


@dataclass(frozen=True, slots=True)
class Encr:
    name: str
    id: int
    key_bits: int | None  # Key Length attribute (None: the transform has a fixed key)
    key_len: int  # bytes of key material, salt/nonce included (RFC 5282 §7.1, RFC 5930 §2)
    kind: str  # "aes-cbc" | "aes-ctr" | "aes-gcm" | "chacha20-poly1305" | "3des-cbc"
    iv_len: int
    icv_len: int  # AEAD tag length; 0 without AEAD (the INTEG transform carries it)
    block_len: int  # SK padding unit (RFC 7296 §3.14); 1 for the stream and AEAD modes

    @property
    def aead(self) -> bool:
        return self.kind in ("aes-gcm", "chacha20-poly1305")


@dataclass(frozen=True, slots=True)
class Prf:
    name: str
    id: int
    hash: type[hashes.HashAlgorithm] | None  # None: AES-CMAC-PRF-128 (RFC 4615)
    key_len: int  # the preferred key size = output length (§2.13)

    @property
    def fixed_key(self) -> bool:
        """A PRF with a fixed key size: SKEYSEED takes half its key from each nonce (§2.14)."""
        return self.hash is None


@dataclass(frozen=True, slots=True)
class Integ:
    name: str  # as cluster/esp spells it ("sha256")
    id: int
    hash: type[hashes.HashAlgorithm] | None  # None: AES-CMAC-96 (RFC 4494)
    key_len: int
    icv_len: int


def _aes_family() -> list[Encr]:
    out = []
    for bits in (128, 192, 256):
        k = bits // 8
        out.append(Encr(f"aes{bits}", 12, bits, k, "aes-cbc", 16, 0, 16))  # RFC 3602
        out.append(Encr(f"aes{bits}ctr", 13, bits, k + 4, "aes-ctr", 8, 0, 1))  # RFC 5930
        for icv, encr_id in ((8, 18), (12, 19), (16, 20)):  # RFC 5282, RFC 4106
            out.append(Encr(f"aes{bits}gcm{icv}", encr_id, bits, k + 4, "aes-gcm", 8, icv, 1))
    return out


ENCRS = {
    e.name: e
    for e in (
        *_aes_family(),
        Encr("chacha20poly1305", 28, None, 36, "chacha20-poly1305", 8, 16, 1),  # RFC 7634
        Encr("3des", 3, None, 24, "3des-cbc", 8, 0, 8),  # RFC 2451: legacy
    )
}
PRFS = {
    p.name: p
    for p in (
        Prf("prfsha1", 2, hashes.SHA1, 20),  # RFC 2104
        Prf("prfsha256", 5, hashes.SHA256, 32),  # RFC 4868
        Prf("prfsha384", 6, hashes.SHA384, 48),
        Prf("prfsha512", 7, hashes.SHA512, 64),
        Prf("prfaescmac", 8, None, 16),  # RFC 4615
    )
}
INTEGS = {
    i.name: i
    for i in (
        Integ("sha1", 2, hashes.SHA1, 20, 12),  # HMAC-SHA1-96, RFC 2404
        Integ("aescmac", 8, None, 16, 12),  # AES-CMAC-96, RFC 4494
        Integ("sha256", 12, hashes.SHA256, 32, 16),  # RFC 4868
        Integ("sha384", 13, hashes.SHA384, 48, 24),
        Integ("sha512", 14, hashes.SHA512, 64, 32),
    )
}
# the PRF strongSwan adds for an integrity algorithm when a proposal names no PRF
PRF_OF_INTEG = {"sha1": "prfsha1", "aescmac": "prfaescmac", "sha256": "prfsha256",
                "sha384": "prfsha384", "sha512": "prfsha512"}
DH_NAMES = {2: "modp1024", 14: "modp2048", 15: "modp3072", 16: "modp4096", 19: "ecp256",
            20: "ecp384", 21: "ecp521", 31: "x25519", 32: "x448"}
DH_GROUPS = {name: group for group, name in DH_NAMES.items()} | {"curve25519": 31,
                                                                 "curve448": 32}
LEGACY = frozenset({"3des", "modp1024"})  # never in `default`; only where a proposal names them


def encr_by_transform(t: Transform) -> Encr | None:
    for e in ENCRS.values():
        if e.id == t.id and e.key_bits == t.key_length:
            return e
    return None


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """A negotiated IKE SA suite; `integ` is None with an AEAD."""

    encr: Encr
    prf: Prf
    integ: Integ | None
    dh: int

    def to_proposal(self, num: int = 1, spi: bytes = b"") -> Proposal:
        ts = [Transform(TransformType.ENCR, self.encr.id, self.encr.key_bits)]
        ts.append(Transform(TransformType.PRF, self.prf.id))
        if self.integ:
            ts.append(Transform(TransformType.INTEG, self.integ.id))
        ts.append(Transform(TransformType.DH, self.dh))
        return Proposal(num, ProtocolId.IKE, spi, tuple(ts))

    @property
    def name(self) -> str:
        parts = [self.encr.name]
        if self.integ:
            parts.append(self.integ.name)
        parts += [self.prf.name, DH_NAMES[self.dh]]
        return "-".join(parts)


@dataclass(frozen=True, slots=True)
class ChildSuite:
    """A negotiated ESP suite; `dh` is the PFS group of a CREATE_CHILD_SA (None: no PFS)."""

    encr: Encr
    integ: Integ | None
    esn: bool
    dh: int | None = None

    def to_proposal(self, num: int = 1, spi: bytes = b"", with_dh: bool = True) -> Proposal:
        ts = [Transform(TransformType.ENCR, self.encr.id, self.encr.key_bits)]
        if self.integ:
            ts.append(Transform(TransformType.INTEG, self.integ.id))
        if self.dh is not None and with_dh:
            ts.append(Transform(TransformType.DH, self.dh))
        ts.append(Transform(TransformType.ESN, 1 if self.esn else 0))
        return Proposal(num, ProtocolId.ESP, spi, tuple(ts))

    @property
    def name(self) -> str:
        parts = [self.encr.name] + ([self.integ.name] if self.integ else [])
        if self.dh is not None:
            parts.append(DH_NAMES[self.dh])
        return "-".join(parts + (["esn"] if self.esn else []))


def suite_from_proposal(p: Proposal, protocol: int) -> IkeSuite | ChildSuite:
    """Read the suite a responder chose (one transform per type) — the initiator's side."""
    by_type: dict[int, Transform] = {}
    for t in p.transforms:
        if t.type in by_type:
            raise IkeProtocolError("chosen proposal has two transforms of one type",
                                      Notify.NO_PROPOSAL_CHOSEN)
        by_type[t.type] = t
    enc_t = by_type.get(TransformType.ENCR)
    encr = encr_by_transform(enc_t) if enc_t else None
    if encr is None:
        raise IkeProtocolError("unknown encryption in reply", Notify.NO_PROPOSAL_CHOSEN)
    integ = None
    if (it := by_type.get(TransformType.INTEG)) and it.id != 0:
        integ = next((i for i in INTEGS.values() if i.id == it.id), None)
        if integ is None:
            raise IkeProtocolError("unknown integrity in reply", Notify.NO_PROPOSAL_CHOSEN)
    dh_t = by_type.get(TransformType.DH)
    dh = dh_t.id if dh_t and dh_t.id != 0 else None
    if protocol == ProtocolId.IKE:
        prf_t = by_type.get(TransformType.PRF)
        prf = next((x for x in PRFS.values() if prf_t and x.id == prf_t.id), None)
        if prf is None or dh is None or dh not in DH_NAMES:
            raise IkeProtocolError("incomplete IKE proposal in reply", Notify.NO_PROPOSAL_CHOSEN)
        return IkeSuite(encr, prf, integ, dh)
    esn_t = by_type.get(TransformType.ESN)
    return ChildSuite(encr, integ, bool(esn_t and esn_t.id == 1), dh)
