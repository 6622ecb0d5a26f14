"""Every IKE fragment (RFC 7383) of one message reaches the same keyd instance: the keyd that
holds the incomplete message (keyd/ike/fragments.py) is the only one that can complete it.
Both drivers steer IKE by the client's address alone, whatever the source port and whatever
the fragment carries."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from keyd.ike.constants import NON_ESP_MARKER, ExchangeType, Flag
from keyd.ike.fragments import seal_message, split_datagrams
from keyd.ike.message import Header
from keyd.ike.payloads import VendorPayload
from keyd.ike.protect import SkKeys
from keyd.ike.transforms import ENCRS, INTEGS
from sprayer.keyd import bucket_owners
from sprayer.nft import IKE_HASH_KEY, chain_rules
from sprayer.userspace import Steering, steer

VIP = "203.0.113.10"


def _fragments(size: int) -> list[bytes]:
    keys = SkKeys(ENCRS["aes128"], INTEGS["sha256"], os.urandom(16), os.urandom(32))
    h = Header(1, 2, 0, ExchangeType.IKE_AUTH, Flag.INITIATOR, 1)
    data = seal_message(h, [VendorPayload(os.urandom(size))], keys, os.urandom, 548)
    return [NON_ESP_MARKER + m for m in split_datagrams(data)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.ip_addresses(v=4).map(str), st.integers(1024, 65535),
       st.integers(1500, 6000))
def test_fragments_of_one_message_reach_one_keyd(instances: int, client: str, port: int,
                                                 size: int) -> None:
    owners = bucket_owners([f"keyd:10.30.0.{i}" for i in range(instances)])
    marks = [0x100 + int(o.rsplit(".", 1)[1]) for o in owners]
    steering = Steering(keyd=marks, spis={}, fallback=[7])
    fragments = _fragments(size)
    assert len(fragments) > 2
    # from 4500 after the float, or (another NAT mapping) from any other port: one mark
    chosen = {steer(steering, 4500, f, (client, p)) for f in fragments for p in (4500, port)}
    assert len(chosen) == 1 and chosen <= set(marks)


def test_the_nft_rule_hashes_ike_on_the_address_alone() -> None:
    assert IKE_HASH_KEY == "ip saddr"
    rules = chain_rules(VIP, [1, 2, 3], [9])
    ike = [r for r in rules if "udp dport 500" in r or "@th,64,32 0 " in r]
    assert len(ike) == 2 and all("jhash ip saddr mod 3" in r and "sport" not in r for r in ike)
