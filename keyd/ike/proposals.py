"""Configured proposals, strongSwan-style, and proposal selection (RFC 7296 §2.7, §3.3.6).

A proposal string lists algorithms joined by dashes; several of one transform type make one
proposal that accepts each of them, in that order of preference:
`aes128-aes256-sha256-sha384-modp2048-ecp256`. Commas separate proposals, and `default` stands
for `DEFAULT_IKE` / `DEFAULT_ESP` (modern algorithms only; docs/configuration.md). With no PRF
named, an IKE proposal takes the PRFs of its integrity algorithms. AEAD and classic
encryption may not share a proposal (RFC 5282 §8): write them as two.

Selection follows strongSwan's responder: the peer's first proposal that one of ours accepts
wins, and in it the peer's first algorithm of each type that ours lists. The one exception is
the DH group: a proposal whose groups hold the group of the peer's KE payload is preferred to
one that would need an INVALID_KE_PAYLOAD round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .constants import Notify, ProtocolId, TransformType
from .errors import IkeProtocolError, IkeUsageError, InvalidKePayload
from .payloads import Proposal, Transform
from .transforms import (
    DH_GROUPS,
    DH_NAMES,
    ENCRS,
    INTEGS,
    PRF_OF_INTEG,
    PRFS,
    ChildSuite,
    Encr,
    IkeSuite,
    Integ,
    Prf,
)

_T = TypeVar("_T")

# strongSwan's spellings that name the same algorithm
_ALIASES = {
    **{f"aes{b}gcm": f"aes{b}gcm16" for b in (128, 192, 256)},
    **{f"aes{b}gcm{bits}": f"aes{b}gcm{bits // 8}" for b in (128, 192, 256)
       for bits in (64, 96, 128)},
    "sha": "sha1", "sha1_96": "sha1", "sha256_128": "sha256", "sha384_192": "sha384",
    "sha512_256": "sha512", "aescmac96": "aescmac", "prfcmac": "prfaescmac",
    "aes": "aes128",
}

DEFAULT_IKE = (
    "aes128gcm16-aes192gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512"
    "-x25519-ecp256-ecp384-ecp521-x448-modp3072-modp4096-modp2048",
    "aes128-aes192-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512"
    "-x25519-ecp256-ecp384-ecp521-x448-modp3072-modp4096-modp2048",
)
_DEFAULT_GROUPS = "x25519-ecp256-ecp384-ecp521-x448-modp3072-modp4096-modp2048"
# ESP: without PFS, and the same with PFS groups, so that a rekey with PFS (iOS/macOS) and one
# without both find a proposal (IKE_AUTH ignores the groups, RFC 7296 §1.2)
DEFAULT_ESP = (
    "aes128gcm16-aes192gcm16-aes256gcm16-chacha20poly1305-noesn-esn",
    "aes128-aes192-aes256-sha256-sha384-sha512-noesn-esn",
    f"aes128gcm16-aes192gcm16-aes256gcm16-chacha20poly1305-noesn-esn-{_DEFAULT_GROUPS}",
    f"aes128-aes192-aes256-sha256-sha384-sha512-noesn-esn-{_DEFAULT_GROUPS}",
)


def _add(items: list, item: object) -> None:
    if item not in items:
        items.append(item)


@dataclass(frozen=True, slots=True)
class IkeProposal:
    """One configured IKE proposal: the algorithms it accepts per type, in preference order;
    `integs` is empty for AEADs."""

    encrs: tuple[Encr, ...]
    prfs: tuple[Prf, ...]
    integs: tuple[Integ, ...]
    dhs: tuple[int, ...]

    def to_proposal(self, num: int = 1, spi: bytes = b"") -> Proposal:
        ts = [Transform(TransformType.ENCR, e.id, e.key_bits) for e in self.encrs]
        ts += [Transform(TransformType.PRF, p.id) for p in self.prfs]
        ts += [Transform(TransformType.INTEG, i.id) for i in self.integs]
        ts += [Transform(TransformType.DH, g) for g in self.dhs]
        return Proposal(num, ProtocolId.IKE, spi, tuple(ts))

    def first_suite(self) -> IkeSuite:
        """The suite of our first algorithm of each type."""
        return IkeSuite(self.encrs[0], self.prfs[0], self.integs[0] if self.integs else None,
                        self.dhs[0])

    def accepts(self, suite: IkeSuite) -> bool:
        return (suite.encr in self.encrs and suite.prf in self.prfs and suite.dh in self.dhs
                and (suite.integ in self.integs if suite.integ else not self.integs))

    @property
    def name(self) -> str:
        return "-".join([e.name for e in self.encrs] + [i.name for i in self.integs]
                        + [p.name for p in self.prfs] + [DH_NAMES[g] for g in self.dhs])


@dataclass(frozen=True, slots=True)
class EspProposal:
    """One configured ESP proposal; `dhs` are PFS groups for CREATE_CHILD_SA (empty: no PFS),
    `esns` the ESN choices it accepts (False: 32-bit sequence numbers)."""

    encrs: tuple[Encr, ...]
    integs: tuple[Integ, ...]
    esns: tuple[bool, ...]
    dhs: tuple[int, ...] = ()

    def to_proposal(self, num: int = 1, spi: bytes = b"", with_dh: bool = True) -> Proposal:
        ts = [Transform(TransformType.ENCR, e.id, e.key_bits) for e in self.encrs]
        ts += [Transform(TransformType.INTEG, i.id) for i in self.integs]
        if with_dh:
            ts += [Transform(TransformType.DH, g) for g in self.dhs]
        ts += [Transform(TransformType.ESN, 1 if esn else 0) for esn in self.esns]
        return Proposal(num, ProtocolId.ESP, spi, tuple(ts))

    @property
    def name(self) -> str:
        return "-".join([e.name for e in self.encrs] + [i.name for i in self.integs]
                        + [DH_NAMES[g] for g in self.dhs]
                        + ["esn" if esn else "noesn" for esn in self.esns])


# ---- parsing ---------------------------------------------------------------------------


def _split(text: str, kind: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise IkeUsageError(f"empty {kind} proposal in {text!r}")
    return parts


def _tokens(text: str) -> list[str]:
    return [_ALIASES.get(t, t) for t in (t.strip().lower() for t in text.split("-"))]


def _check_encrs(encrs: list[Encr], text: str, kind: str) -> None:
    if not encrs:
        raise IkeUsageError(f"{kind} proposal {text!r} needs an encryption algorithm")
    if len({e.aead for e in encrs}) > 1:
        raise IkeUsageError(
            f"{kind} proposal {text!r} mixes AEAD and classic encryption: write two proposals")


def _collect(text: str, kind: str, tables: dict[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The algorithms of one proposal, by table name, each once and in order of appearance;
    IkeUsageError for a token no table knows."""
    out: dict[str, list[Any]] = {name: [] for name in tables}
    for tok in _tokens(text):
        for name, table in tables.items():
            if tok in table:
                _add(out[name], table[tok])
                break
        else:
            raise IkeUsageError(f"unknown algorithm {tok!r} in {kind} proposal {text!r}")
    return out


_IKE_TABLES: dict[str, Mapping[str, Any]] = {
    "encrs": ENCRS, "prfs": PRFS, "integs": INTEGS, "dhs": DH_GROUPS}
_ESP_TABLES: dict[str, Mapping[str, Any]] = {
    "encrs": ENCRS, "integs": INTEGS, "dhs": DH_GROUPS, "esns": {"esn": True, "noesn": False}}


def _parse_one_ike(text: str) -> IkeProposal:
    found = _collect(text, "IKE", _IKE_TABLES)
    encrs: list[Encr] = found["encrs"]
    prfs: list[Prf] = found["prfs"]
    integs: list[Integ] = found["integs"]
    dhs: list[int] = found["dhs"]
    _check_encrs(encrs, text, "IKE")
    if not dhs:
        raise IkeUsageError(f"IKE proposal {text!r} needs a DH group")
    if encrs[0].aead:
        if integs:
            raise IkeUsageError(f"IKE proposal {text!r}: an AEAD takes no integrity "
                                     f"algorithm ({integs[0].name!r})")
        if not prfs:
            raise IkeUsageError(f"IKE proposal {text!r}: an AEAD needs a PRF (prfsha256)")
    elif not integs:
        raise IkeUsageError(f"IKE proposal {text!r}: {encrs[0].name} needs an integrity "
                                 "algorithm")
    if not prfs:
        for i in integs:
            _add(prfs, PRFS[PRF_OF_INTEG[i.name]])
    return IkeProposal(tuple(encrs), tuple(prfs), tuple(integs), tuple(dhs))


def _parse_one_esp(text: str) -> EspProposal:
    found = _collect(text, "ESP", _ESP_TABLES)
    encrs: list[Encr] = found["encrs"]
    integs: list[Integ] = found["integs"]
    dhs: list[int] = found["dhs"]
    esns: list[bool] = found["esns"]
    _check_encrs(encrs, text, "ESP")
    if encrs[0].aead and integs:
        raise IkeUsageError(f"ESP proposal {text!r}: an AEAD takes no integrity "
                                 f"algorithm ({integs[0].name!r})")
    if not encrs[0].aead and not integs:
        raise IkeUsageError(f"ESP proposal {text!r}: {encrs[0].name} needs an integrity "
                                 "algorithm")
    return EspProposal(tuple(encrs), tuple(integs), tuple(esns or [False]), tuple(dhs))


def parse_ike_proposals(text: str) -> tuple[IkeProposal, ...]:
    """`aes128-aes256-sha256-modp2048-ecp256`, `default`, or several joined by commas;
    IkeUsageError naming the offending token."""
    out: list[IkeProposal] = []
    for part in _split(text, "IKE"):
        for p in DEFAULT_IKE if part.lower() == "default" else (part,):
            _add(out, _parse_one_ike(p))
    return tuple(out)


def parse_esp_proposals(text: str) -> tuple[EspProposal, ...]:
    """`aes128gcm16-aes256gcm16`, `aes256-sha256-sha1-esn-noesn`, `…-x25519` (PFS), `default`,
    or several joined by commas; IkeUsageError naming the offending token."""
    out: list[EspProposal] = []
    for part in _split(text, "ESP"):
        for p in DEFAULT_ESP if part.lower() == "default" else (part,):
            _add(out, _parse_one_esp(p))
    return tuple(out)


def parse_ike_suite(text: str) -> IkeSuite:
    """One negotiated suite by its name (`IkeSuite.name`, as IKE SA records store it)."""
    ps = parse_ike_proposals(text)
    p = ps[0]
    if len(ps) != 1 or len(p.encrs) != 1 or len(p.prfs) != 1 or len(p.integs) > 1 \
            or len(p.dhs) != 1:
        raise IkeUsageError(f"{text!r} names more than one suite")
    return IkeSuite(p.encrs[0], p.prfs[0], p.integs[0] if p.integs else None, p.dhs[0])


def parse_esp_suite(text: str) -> ChildSuite:
    """One ESP suite by its name (`ChildSuite.name`)."""
    ps = parse_esp_proposals(text)
    p = ps[0]
    if len(ps) != 1 or len(p.encrs) != 1 or len(p.integs) > 1 or len(p.dhs) > 1 \
            or len(p.esns) != 1:
        raise IkeUsageError(f"{text!r} names more than one suite")
    return ChildSuite(p.encrs[0], p.integs[0] if p.integs else None, p.esns[0],
                      p.dhs[0] if p.dhs else None)


# ---- selection (RFC 7296 §2.7, §3.3.6) --------------------------------------------------


def _offered(p: Proposal) -> dict[int, list[tuple[int, int | None]]]:
    out: dict[int, list[tuple[int, int | None]]] = {}
    for t in p.transforms:
        out.setdefault(t.type, []).append((t.id, t.key_length))
    return out


def _first(offered: list[tuple[int, int | None]], ours: Sequence[_T],
           key: Callable[[_T], tuple[int, int | None]]) -> _T | None:
    """The first of the peer's transforms that `ours` lists (peer's order)."""
    by_key = {key(x): x for x in ours}
    for value in offered:
        if value in by_key:
            return by_key[value]
    return None


def _none_ok(offered: dict[int, list[tuple[int, int | None]]], t_type: int) -> bool:
    """A transform type we do not use must be absent or allow NONE (id 0)."""
    return t_type not in offered or (0, None) in offered[t_type]


def _encr_key(e: Encr) -> tuple[int, int | None]:
    return (e.id, e.key_bits)


def _id_key(x: Prf | Integ) -> tuple[int, None]:
    return (x.id, None)


def _pick_group(offered: list[tuple[int, int | None]], ours: Sequence[int],
                ke_group: int | None) -> tuple[int | None, bool]:
    """(group, matches the KE payload): the KE's group if both accept it, else the peer's
    first group that ours lists."""
    groups = [g for g, _ in offered if g in ours]
    if not groups:
        return None, False
    if ke_group in groups:
        return ke_group, True
    return groups[0], False


def _select_ike(have: dict[int, list[tuple[int, int | None]]], ours: IkeProposal,
                ke_group: int | None) -> tuple[IkeSuite, bool] | None:
    encr = _first(have.get(TransformType.ENCR, []), ours.encrs, _encr_key)
    prf = _first(have.get(TransformType.PRF, []), ours.prfs, _id_key)
    group, ke_ok = _pick_group(have.get(TransformType.DH, []), ours.dhs, ke_group)
    if encr is None or prf is None or group is None or not _none_ok(have, TransformType.ESN):
        return None
    integ = None
    if ours.integs:
        integ = _first(have.get(TransformType.INTEG, []), ours.integs, _id_key)
        if integ is None:
            return None
    elif not _none_ok(have, TransformType.INTEG):
        return None
    return IkeSuite(encr, prf, integ, group), ke_ok


def _select_esp(have: dict[int, list[tuple[int, int | None]]], ours: EspProposal,
                ke_group: int | None, include_dh: bool) -> tuple[ChildSuite, bool] | None:
    encr = _first(have.get(TransformType.ENCR, []), ours.encrs, _encr_key)
    esn_offer = [i for i, _ in have.get(TransformType.ESN, [(0, None)])]
    esn = next((e == 1 for e in esn_offer if e in (0, 1) and (e == 1) in ours.esns), None)
    if encr is None or esn is None or TransformType.PRF in have:
        return None
    integ = None
    if ours.integs:
        integ = _first(have.get(TransformType.INTEG, []), ours.integs, _id_key)
        if integ is None:
            return None
    elif not _none_ok(have, TransformType.INTEG):
        return None
    if not include_dh or not ours.dhs:
        # IKE_AUTH ignores DH transforms (§1.2); without PFS ours must find NONE allowed
        if include_dh and not _none_ok(have, TransformType.DH):
            return None
        return ChildSuite(encr, integ, esn, None), True
    group, ke_ok = _pick_group(have.get(TransformType.DH, []), ours.dhs, ke_group)
    if group is None:
        return None
    return ChildSuite(encr, integ, esn, group), ke_ok


def select_proposal(
    offered: Sequence[Proposal],
    ours: Sequence[IkeProposal] | Sequence[EspProposal],
    protocol: int,
    ke_group: int | None,
    include_dh: bool = True,
) -> tuple[Proposal, IkeSuite | ChildSuite]:
    """The peer's first proposal one of ours accepts, and the suite chosen from it (the
    peer's order within it); returns (the peer's proposal, the suite).

    `ke_group` is the group of the peer's KE payload (None: no KE). A match whose group is
    not the KE payload's is taken only if no proposal matches with it: then InvalidKePayload
    names that match's group, one the peer offered and we accept (§1.3, §3.10.1).
    """
    wrong: IkeSuite | ChildSuite | None = None
    for prop in offered:
        if prop.protocol != protocol:
            continue
        have = _offered(prop)
        for mine in ours:
            if isinstance(mine, IkeProposal):
                found: tuple[IkeSuite | ChildSuite, bool] | None = _select_ike(
                    have, mine, ke_group)
            else:
                found = _select_esp(have, mine, ke_group, include_dh)
            if found is None:
                continue
            suite, ke_ok = found
            if ke_ok:
                return prop, suite
            wrong = wrong or suite
    if wrong is not None:
        assert wrong.dh is not None
        raise InvalidKePayload(wrong.dh)
    raise IkeProtocolError("no acceptable proposal", Notify.NO_PROPOSAL_CHOSEN)
