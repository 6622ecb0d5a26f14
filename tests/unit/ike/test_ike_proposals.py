"""Proposal strings (strongSwan syntax, `default`) and proposal selection (RFC 7296 §2.7)."""

from __future__ import annotations

import pytest

from keyd.ike.constants import Notify, ProtocolId, TransformType
from keyd.ike.errors import IkeProtocolError, IkeUsageError, InvalidKePayload
from keyd.ike.payloads import Proposal, Transform
from keyd.ike.proposals import (
    DEFAULT_ESP,
    DEFAULT_IKE,
    parse_esp_proposals,
    parse_esp_suite,
    parse_ike_proposals,
    parse_ike_suite,
    select_proposal,
)
from keyd.ike.transforms import ENCRS, LEGACY, ChildSuite, IkeSuite

E, P, IN, D, N = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH,
                 TransformType.ESN)


def ike(*ts: tuple[int, int, int | None] | tuple[int, int], num: int = 1) -> Proposal:
    return Proposal(num, ProtocolId.IKE, b"", tuple(Transform(*t) for t in ts))


def esp(*ts: tuple[int, int, int | None] | tuple[int, int], num: int = 1) -> Proposal:
    return Proposal(num, ProtocolId.ESP, b"\x01\x02\x03\x04", tuple(Transform(*t) for t in ts))


def select_ike(offered: list[Proposal], ours: str, ke: int) -> IkeSuite:
    _, suite = select_proposal(offered, parse_ike_proposals(ours), ProtocolId.IKE, ke)
    assert isinstance(suite, IkeSuite)
    return suite


# ---- parsing ----------------------------------------------------------------------------


def test_multi_algorithm_proposal_keeps_order() -> None:
    (p,) = parse_ike_proposals("aes128-aes256-sha256-sha384-modp2048-ecp256")
    assert [e.name for e in p.encrs] == ["aes128", "aes256"]
    assert [i.name for i in p.integs] == ["sha256", "sha384"]
    assert [x.name for x in p.prfs] == ["prfsha256", "prfsha384"]  # from the integrity algs
    assert p.dhs == (14, 19)
    # the order of the kinds does not matter, only within a kind (strongSwan's rule)
    assert parse_ike_proposals("ecp256-aes128-sha256-aes256-modp2048-sha384")[0].dhs == (19, 14)


def test_several_proposals_per_string_and_aliases() -> None:
    ps = parse_ike_proposals("aes256gcm16-prfsha512-ecp256, aes256-sha1-modp2048")
    assert [p.name for p in ps] == ["aes256gcm16-prfsha512-ecp256",
                                    "aes256-sha1-prfsha1-modp2048"]
    (g,) = parse_ike_proposals("aes128gcm-aes128gcm128-aes256gcm96-prfsha256-curve25519")
    assert [e.name for e in g.encrs] == ["aes128gcm16", "aes256gcm12"]
    assert g.dhs == (31,)
    (c,) = parse_ike_proposals("aes128-aescmac-x448")
    assert c.prfs[0].name == "prfaescmac" and c.dhs == (32,)


def test_esp_proposals() -> None:
    (p,) = parse_esp_proposals("aes256-aes128-sha1-sha256")
    assert p.esns == (False,) and not p.dhs  # no ESN unless named, no PFS
    (q,) = parse_esp_proposals("chacha20poly1305-esn")
    assert q.esns == (True,)
    (r,) = parse_esp_proposals("aes128gcm16-noesn-esn-ecp256")
    assert r.esns == (False, True) and r.dhs == (19,)
    assert parse_esp_suite("aes128gcm16-esn") == ChildSuite(ENCRS["aes128gcm16"], None, True)


def test_default_is_modern_only_and_expands() -> None:
    ike_default = parse_ike_proposals("default")
    assert ike_default == tuple(p for t in DEFAULT_IKE for p in parse_ike_proposals(t))
    assert len(ike_default) == 2 and ike_default[0].encrs[0].aead
    names = set("-".join(p.name for p in ike_default).split("-"))
    esp_names = set("-".join(p.name for p in parse_esp_proposals("default")).split("-"))
    assert not (names | esp_names) & (LEGACY | {"sha1", "prfsha1"})
    assert {"x25519", "ecp256", "modp2048", "modp3072", "aes256gcm16", "chacha20poly1305",
            "aes256", "sha512"} <= names
    assert len(parse_esp_proposals(", ".join(DEFAULT_ESP))) == 4
    # default beside explicit extras, in one string or many: duplicates collapse
    both = parse_ike_proposals("default, aes256-sha1-modp2048, DEFAULT")
    assert both == ike_default + parse_ike_proposals("aes256-sha1-modp2048")


def test_legacy_algorithms_only_where_named() -> None:
    (p,) = parse_ike_proposals("3des-aes128-sha1-modp1024")
    assert [e.name for e in p.encrs] == ["3des", "aes128"] and p.dhs == (2,)
    assert parse_esp_proposals("3des-sha1")[0].encrs[0].name == "3des"


@pytest.mark.parametrize(("text", "token"), [
    ("aes128-sha256-modp2047", "'modp2047'"),
    ("rot13-sha256-x25519", "'rot13'"),
    ("aes128--sha256-x25519", "''"),
    ("aes128gcm16-prfsha256-x25519, aes128-md5-x25519", "'md5'"),
    ("aes128-sha256-x25519,", "empty IKE proposal"),
    ("", "empty IKE proposal"),
    ("aes128gcm16-x25519", "needs a PRF"),
    ("aes128gcm16-sha256-prfsha256-x25519", "takes no integrity"),
    ("aes128-x25519", "needs an integrity"),
    ("aes128-sha256", "needs a DH group"),
    ("sha256-x25519", "needs an encryption"),
    ("aes128-aes128gcm16-sha256-x25519", "mixes AEAD and classic"),
])
def test_bad_ike_strings_name_the_problem(text: str, token: str) -> None:
    with pytest.raises(IkeUsageError, match="IKE proposal") as e:
        parse_ike_proposals(text)
    assert token in str(e.value)


@pytest.mark.parametrize(("text", "token"), [
    ("aes128-sha256-esm", "'esm'"),
    ("aes128", "needs an integrity"),
    ("aes128gcm16-sha1", "takes no integrity"),
    ("prfsha256-aes128gcm16", "'prfsha256'"),  # a PRF is no ESP transform
    ("aes128gcm16-chacha20poly1305-aes256-sha1", "mixes AEAD and classic"),
])
def test_bad_esp_strings_name_the_problem(text: str, token: str) -> None:
    with pytest.raises(IkeUsageError, match="ESP proposal") as e:
        parse_esp_proposals(text)
    assert token in str(e.value)


def test_suite_names_round_trip() -> None:
    for text in ("aes256ctr-aescmac-prfaescmac-ecp521", "aes192gcm8-prfsha1-x448",
                 "3des-sha1-prfsha1-modp1024", "chacha20poly1305-prfsha384-ecp384"):
        assert parse_ike_suite(text).name == text
    for many in ("aes128-aes256-sha256-x25519", "default", "aes128-sha1-x25519, aes128-sha1-x448"):
        with pytest.raises(IkeUsageError, match="more than one suite"):
            parse_ike_suite(many)
    with pytest.raises(IkeUsageError, match="more than one suite"):
        parse_esp_suite("default")
    assert parse_esp_suite("aes128ctr-sha256-esn").name == "aes128ctr-sha256-esn"


# ---- selection --------------------------------------------------------------------------


def test_client_preference_wins_within_and_across_proposals() -> None:
    ours = "aes128-aes256-sha256-sha512-x25519-ecp256, aes128gcm16-prfsha256-x25519"
    # one client proposal with several of each: its order, not ours, picks
    offer = ike((E, 12, 256), (E, 12, 128), (IN, 14), (IN, 12), (P, 7), (P, 5), (D, 19), (D, 31))
    s = select_ike([offer], ours, 19)
    assert (s.encr.name, s.integ and s.integ.name, s.prf.name, s.dh) == \
        ("aes256", "sha512", "prfsha512", 19)
    # the client's first acceptable proposal wins even where ours prefers another
    gcm = ike((E, 20, 128), (P, 5), (D, 31), num=1)
    cbc = ike((E, 12, 128), (IN, 12), (P, 5), (D, 31), num=2)
    assert select_ike([gcm, cbc], ours, 31).encr.name == "aes128gcm16"
    prop, s = select_proposal([cbc, gcm], parse_ike_proposals(ours), ProtocolId.IKE, 31)
    assert prop.num == 2 and isinstance(s, IkeSuite) and s.encr.name == "aes128"


def test_a_proposal_matching_the_ke_group_beats_an_earlier_one() -> None:
    first = ike((E, 20, 256), (P, 7), (D, 19), num=1)
    second = ike((E, 20, 256), (P, 7), (D, 31), num=2)
    assert select_ike([first, second], "aes256gcm16-prfsha512-ecp256-x25519", 31).dh == 31


def test_invalid_ke_names_a_group_we_accept_and_the_client_offered() -> None:
    offer = ike((E, 20, 256), (P, 7), (D, 31), (D, 21), (D, 20))
    with pytest.raises(InvalidKePayload) as e:
        select_ike([offer], "aes256gcm16-prfsha512-ecp256-ecp384-ecp521", 31)
    assert e.value.notify == Notify.INVALID_KE_PAYLOAD
    assert e.value.group == 21 and e.value.data == (21).to_bytes(2, "big")  # client's order
    with pytest.raises(IkeProtocolError) as n:  # no common group at all
        select_ike([offer], "aes256gcm16-prfsha512-modp2048", 31)
    assert n.value.notify == Notify.NO_PROPOSAL_CHOSEN


@pytest.mark.parametrize("offer", [
    ike((E, 20, 128), (P, 5), (D, 31), (IN, 12)),  # an AEAD with integrity (not NONE)
    ike((E, 12, 128), (P, 5), (D, 31)),  # CBC without integrity
    ike((E, 12, 192), (IN, 12), (P, 5), (D, 31)),  # AES-192: not in this config
    ike((E, 20, 128), (D, 31)),  # no PRF
    ike((E, 20, 128), (P, 5), (D, 31), (N, 1)),  # ESN in an IKE proposal
    esp((E, 20, 128), (N, 0)),  # another protocol
])
def test_no_proposal_chosen(offer: Proposal) -> None:
    with pytest.raises(IkeProtocolError) as e:
        select_ike([offer], "aes128gcm16-prfsha256-x25519, aes128-sha256-x25519", 31)
    assert e.value.notify == Notify.NO_PROPOSAL_CHOSEN


def test_aead_offer_with_integrity_none_is_accepted() -> None:
    offer = ike((E, 20, 128), (P, 5), (IN, 0), (D, 31))
    assert select_ike([offer], "aes128gcm16-prfsha256-x25519", 31).integ is None


def test_esp_selection_esn_and_pfs() -> None:
    ours = parse_esp_proposals("default, aes256-sha1")
    # chacha20poly1305-esn (strongSwan) against default: ESN chosen
    _, s = select_proposal([esp((E, 28, None), (N, 1))], ours, ProtocolId.ESP, None,
                           include_dh=False)
    assert isinstance(s, ChildSuite) and s.esn and s.encr.name == "chacha20poly1305"
    # Windows: aes256-aes128-sha1, no ESN
    offer = esp((E, 12, 256), (E, 12, 128), (IN, 2), (N, 0))
    _, s = select_proposal([offer], ours, ProtocolId.ESP, None, include_dh=False)
    assert isinstance(s, ChildSuite) and (s.encr.name, s.integ and s.integ.name) == \
        ("aes256", "sha1")
    # IKE_AUTH ignores DH transforms; CREATE_CHILD_SA without PFS configured refuses them
    pfs_offer = esp((E, 20, 128), (D, 19), (N, 0))
    _, s = select_proposal([pfs_offer], ours, ProtocolId.ESP, None, include_dh=False)
    assert isinstance(s, ChildSuite) and s.dh is None
    with pytest.raises(IkeProtocolError):
        select_proposal([pfs_offer], parse_esp_proposals("aes128gcm16"), ProtocolId.ESP, 19,
                        include_dh=True)
    # default accepts a rekey with PFS and one without
    _, s = select_proposal([pfs_offer], ours, ProtocolId.ESP, 19, include_dh=True)
    assert isinstance(s, ChildSuite) and s.dh == 19
    _, s = select_proposal([esp((E, 20, 128), (N, 0))], ours, ProtocolId.ESP, None,
                           include_dh=True)
    assert isinstance(s, ChildSuite) and s.dh is None
    pfs = parse_esp_proposals("aes128gcm16-ecp256-x25519")
    _, s = select_proposal([pfs_offer], pfs, ProtocolId.ESP, 19, include_dh=True)
    assert isinstance(s, ChildSuite) and s.dh == 19
    with pytest.raises(InvalidKePayload) as e:
        select_proposal([esp((E, 20, 128), (D, 19), (D, 31), (N, 0))], pfs, ProtocolId.ESP,
                        20, include_dh=True)
    assert e.value.group == 19
    # ESN only where configured
    with pytest.raises(IkeProtocolError):
        select_proposal([esp((E, 12, 256), (IN, 2), (N, 1))], ours, ProtocolId.ESP, None,
                        include_dh=False)


def test_the_chosen_suite_goes_back_as_one_transform_per_type() -> None:
    s = select_ike([ike((E, 13, 256), (IN, 8), (IN, 2), (P, 8), (D, 21))],
                   "aes256ctr-aescmac-sha1-prfaescmac-ecp521", 21)
    types = [t.type for t in s.to_proposal().transforms]
    assert sorted(types) == sorted(set(types))
    assert s.name == "aes256ctr-aescmac-prfaescmac-ecp521"
