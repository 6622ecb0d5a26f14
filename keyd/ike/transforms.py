"""Algorithms the core negotiates, strongSwan-style proposal strings, and proposal selection.

Names follow strongSwan ("aes128gcm16", "prfsha256", "sha256", "x25519", "modp2048", "esn")
so a keyd config reads like a swanctl.conf. Encryption and integrity names of Child SAs are the
ones `cluster/esp` uses ("aes128gcm16", "aes256", "chacha20poly1305"; "sha256" …).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from .constants import Notify, ProtocolId, TransformType
from .errors import InvalidKePayload, LocalProtocolError, RemoteProtocolError
from .payloads import Proposal, Transform


@dataclass(frozen=True, slots=True)
class Encr:
    name: str
    id: int
    key_bits: int | None  # Key Length attribute (None: the transform has a fixed key)
    key_len: int  # bytes of key material, salt included (RFC 5282 §7.1, RFC 7634 §2)
    aead: bool
    iv_len: int
    icv_len: int  # AEAD tag length; 0 for CBC (the INTEG transform carries it)


@dataclass(frozen=True, slots=True)
class Prf:
    name: str
    id: int
    hash: type[hashes.HashAlgorithm]
    key_len: int  # the preferred key size = output length (§2.13)


@dataclass(frozen=True, slots=True)
class Integ:
    name: str  # as cluster/esp spells it ("sha256")
    id: int
    hash: type[hashes.HashAlgorithm]
    key_len: int
    icv_len: int


ENCRS = {
    e.name: e
    for e in (
        Encr("aes128", 12, 128, 16, False, 16, 0),
        Encr("aes256", 12, 256, 32, False, 16, 0),
        Encr("aes128gcm16", 20, 128, 20, True, 8, 16),
        Encr("aes256gcm16", 20, 256, 36, True, 8, 16),
        Encr("chacha20poly1305", 28, None, 36, True, 8, 16),
    )
}
PRFS = {
    p.name: p
    for p in (
        Prf("prfsha256", 5, hashes.SHA256, 32),
        Prf("prfsha384", 6, hashes.SHA384, 48),
        Prf("prfsha512", 7, hashes.SHA512, 64),
    )
}
INTEGS = {
    i.name: i
    for i in (
        Integ("sha256", 12, hashes.SHA256, 32, 16),
        Integ("sha384", 13, hashes.SHA384, 48, 24),
        Integ("sha512", 14, hashes.SHA512, 64, 32),
    )
}
DH_GROUPS = {"modp2048": 14, "ecp256": 19, "ecp384": 20, "x25519": 31, "curve25519": 31}
DH_NAMES = {14: "modp2048", 19: "ecp256", 20: "ecp384", 31: "x25519"}
_ENCR_ALIASES = {"aes128gcm": "aes128gcm16", "aes256gcm": "aes256gcm16"}


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


def _tokens(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split("-") if t.strip()]


def parse_ike_proposal(text: str) -> IkeSuite:
    """Parse "aes128gcm16-prfsha256-x25519" or "aes256-sha384-ecp384" (PRF from INTEG)."""
    encr = prf = integ = None
    dh = None
    for tok in _tokens(text):
        tok = _ENCR_ALIASES.get(tok, tok)
        if tok in ENCRS:
            encr = ENCRS[tok]
        elif tok in PRFS:
            prf = PRFS[tok]
        elif tok in INTEGS:
            integ = INTEGS[tok]
        elif tok in DH_GROUPS:
            dh = DH_GROUPS[tok]
        else:
            raise LocalProtocolError(f"unknown algorithm {tok!r} in IKE proposal {text!r}")
    if encr is None or dh is None:
        raise LocalProtocolError(f"IKE proposal {text!r} needs an encryption and a DH group")
    if encr.aead:
        integ = None
    elif integ is None:
        raise LocalProtocolError(f"IKE proposal {text!r}: CBC needs an integrity algorithm")
    if prf is None:
        if integ is None:
            raise LocalProtocolError(f"IKE proposal {text!r}: an AEAD needs a PRF (prfsha256)")
        prf = PRFS["prf" + integ.name]
    return IkeSuite(encr, prf, integ, dh)


def parse_esp_proposal(text: str) -> ChildSuite:
    """Parse "aes128gcm16", "aes256-sha256", "chacha20poly1305", "aes128gcm16-esn", "…-x25519"."""
    encr = integ = None
    esn = False
    dh = None
    for tok in _tokens(text):
        tok = _ENCR_ALIASES.get(tok, tok)
        if tok in ENCRS:
            encr = ENCRS[tok]
        elif tok in INTEGS:
            integ = INTEGS[tok]
        elif tok in DH_GROUPS:
            dh = DH_GROUPS[tok]
        elif tok in ("esn", "noesn"):
            esn = tok == "esn"
        else:
            raise LocalProtocolError(f"unknown algorithm {tok!r} in ESP proposal {text!r}")
    if encr is None:
        raise LocalProtocolError(f"ESP proposal {text!r} needs an encryption algorithm")
    if encr.aead:
        integ = None
    elif integ is None:
        raise LocalProtocolError(f"ESP proposal {text!r}: CBC needs an integrity algorithm")
    return ChildSuite(encr, integ, esn, dh)


# ---- selection (RFC 7296 §2.7, §3.3.6) --------------------------------------------------


def _offered(p: Proposal) -> dict[int, set[tuple[int, int | None]]]:
    out: dict[int, set[tuple[int, int | None]]] = {}
    for t in p.transforms:
        out.setdefault(t.type, set()).add((t.id, t.key_length))
    return out


def _wanted(suite: IkeSuite | ChildSuite, include_dh: bool) -> dict[int, tuple[int, int | None]]:
    w = {TransformType.ENCR.value: (suite.encr.id, suite.encr.key_bits)}
    if suite.integ:
        w[TransformType.INTEG] = (suite.integ.id, None)
    if isinstance(suite, IkeSuite):
        w[TransformType.PRF] = (suite.prf.id, None)
        w[TransformType.DH] = (suite.dh, None)
    else:
        w[TransformType.ESN] = (1 if suite.esn else 0, None)
        if include_dh and suite.dh is not None:
            w[TransformType.DH] = (suite.dh, None)
    return w


def _matches(wanted: dict[int, tuple[int, int | None]], offered: dict[int, set]) -> bool:
    for t_type, value in wanted.items():
        if value not in offered.get(t_type, set()):
            return False
    # a transform type we do not use must be absent or allow NONE (id 0)
    return all(t in wanted or (0, None) in ids for t, ids in offered.items())


def select_proposal(
    offered: Sequence[Proposal],
    ours: Sequence[IkeSuite | ChildSuite],
    protocol: int,
    ke_group: int | None,
    include_dh: bool = True,
) -> tuple[Proposal, IkeSuite | ChildSuite]:
    """Pick our first suite the peer offers; return the peer's proposal and the suite.

    `ke_group` is the group of the peer's KE payload (None: no KE). If a suite matches but
    with a different group, InvalidKePayload names our preferred one (§1.3, §3.10.1).
    """
    wrong_group: int | None = None
    for suite in ours:
        for prop in offered:
            if prop.protocol != protocol:
                continue
            have = _offered(prop)
            dh_wanted = include_dh and (
                isinstance(suite, IkeSuite) or suite.dh is not None
            )
            if dh_wanted:
                group = suite.dh
                assert group is not None
                if not _matches(_wanted(suite, include_dh), have):
                    continue
                if ke_group != group:
                    wrong_group = group if wrong_group is None else wrong_group
                    continue
            else:
                if not include_dh:
                    have.pop(TransformType.DH, None)
                if not _matches(_wanted(suite, include_dh), have):
                    continue
            return prop, suite
    if wrong_group is not None:
        raise InvalidKePayload(wrong_group)
    raise RemoteProtocolError("no acceptable proposal", Notify.NO_PROPOSAL_CHOSEN)


def suite_from_proposal(p: Proposal, protocol: int) -> IkeSuite | ChildSuite:
    """Read the suite a responder chose (one transform per type) — the initiator's side."""
    by_type: dict[int, Transform] = {}
    for t in p.transforms:
        if t.type in by_type:
            raise RemoteProtocolError("chosen proposal has two transforms of one type",
                                      Notify.NO_PROPOSAL_CHOSEN)
        by_type[t.type] = t
    enc_t = by_type.get(TransformType.ENCR)
    encr = encr_by_transform(enc_t) if enc_t else None
    if encr is None:
        raise RemoteProtocolError("unknown encryption in reply", Notify.NO_PROPOSAL_CHOSEN)
    integ = None
    if (it := by_type.get(TransformType.INTEG)) and it.id != 0:
        integ = next((i for i in INTEGS.values() if i.id == it.id), None)
        if integ is None:
            raise RemoteProtocolError("unknown integrity in reply", Notify.NO_PROPOSAL_CHOSEN)
    dh_t = by_type.get(TransformType.DH)
    dh = dh_t.id if dh_t and dh_t.id != 0 else None
    if protocol == ProtocolId.IKE:
        prf_t = by_type.get(TransformType.PRF)
        prf = next((x for x in PRFS.values() if prf_t and x.id == prf_t.id), None)
        if prf is None or dh is None or dh not in DH_NAMES:
            raise RemoteProtocolError("incomplete IKE proposal in reply", Notify.NO_PROPOSAL_CHOSEN)
        return IkeSuite(encr, prf, integ, dh)
    esn_t = by_type.get(TransformType.ESN)
    return ChildSuite(encr, integ, bool(esn_t and esn_t.id == 1), dh)
