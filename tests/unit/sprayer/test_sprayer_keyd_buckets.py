"""IKE steering over the live keyd instances: buckets, refusals, the view's keyd targets, the
rules and the userspace forwarder's choice (pure parts; the probe itself is an integration
test)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.store.records import KeydRecord
from cluster.store.watch import RecordDeleted, RecordPut
from sprayer.backends import MarkAllocator, keyd_backends
from sprayer.keyd import BUCKETS, Refusals, bucket_owners, keyd_bucket_marks, keyd_for
from sprayer.nft import HASH_SEED, chain_rules
from sprayer.userspace import Steering, steer
from sprayer.view import ClusterView, Targets

VIP = "203.0.113.10"
names = st.lists(st.from_regex(r"keyd:10\.30\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True),
                 min_size=1, max_size=8, unique=True)


def test_one_instance_owns_every_bucket() -> None:
    assert bucket_owners(["keyd:10.30.0.5"]) == ["keyd:10.30.0.5"] * BUCKETS
    assert bucket_owners([]) == []


def test_owners_do_not_depend_on_order_or_duplicates() -> None:
    a = ["keyd:10.30.0.5", "keyd:10.30.0.6", "keyd:10.30.0.7"]
    assert bucket_owners(a) == bucket_owners(list(reversed(a))) == bucket_owners(a + a[:1])


@settings(max_examples=200, deadline=None)
@given(names, st.data())
def test_an_instance_leaving_moves_only_its_own_buckets(present: list[str],
                                                         data: st.DataObject) -> None:
    if len(present) < 2:
        return
    gone = data.draw(st.sampled_from(present))
    before = bucket_owners(present)
    after = bucket_owners([n for n in present if n != gone])
    for b, (x, y) in enumerate(zip(before, after, strict=True)):
        if x != gone:
            assert x == y, f"bucket {b} moved from the surviving {x} to {y}"
        else:
            assert y != gone


@settings(max_examples=200, deadline=None)
@given(names, st.from_regex(r"keyd:10\.31\.[0-9]\.[0-9]", fullmatch=True))
def test_an_instance_joining_takes_buckets_only_for_itself(present: list[str],
                                                           new: str) -> None:
    before = bucket_owners(present)
    after = bucket_owners([*present, new])
    assert all(y in (x, new) for x, y in zip(before, after, strict=True))


def test_buckets_spread_over_instances() -> None:
    # 64 buckets over 2 and 4 instances: each share within a wide band of fair
    for n in (2, 4):
        owners = bucket_owners([f"keyd:10.30.0.{5 + i}" for i in range(n)])
        counts = [owners.count(f"keyd:10.30.0.{5 + i}") for i in range(n)]
        assert all(BUCKETS / n * 0.5 <= c <= BUCKETS / n * 1.5 for c in counts), counts


def test_refusal_holds_until_registration_or_the_hold_ends() -> None:
    r = Refusals(hold_s=10.0)
    assert r.refused("keyd-1", 100.0)
    assert not r.refused("keyd-1", 101.0)       # already out: counted once
    assert r.out(105.0) == {"keyd-1"}
    assert r.out(110.0) == frozenset()          # hold over: probed afresh
    assert r.refused("keyd-1", 111.0)
    assert r.registered("keyd-1")               # a restart registers again: back at once
    assert not r.registered("keyd-1")
    assert r.out(112.0) == frozenset()


def keyd_rec(kid: str, address: str) -> KeydRecord:
    return KeydRecord(id=kid, address=address, version="t", started_at=0.0)


def test_view_targets_list_live_keyd_instances() -> None:
    v = ClusterView()
    v.apply("keyd", RecordPut("k", "keyd-2", keyd_rec("keyd-2", "10.30.0.6"), 2))
    v.apply("keyd", RecordPut("k", "keyd-1", keyd_rec("keyd-1", "10.30.0.5"), 3))
    v.apply("keyd", RecordPut("k", "keyd-3", keyd_rec("keyd-3", "2001:db8::1"), 4))
    t = v.targets(lambda _: True)
    assert t.keyd == ["10.30.0.5", "10.30.0.6"]          # sorted, IPv4 only
    assert v.targets(lambda _: True, keyd_out=frozenset({"keyd-1"})).keyd == ["10.30.0.6"]
    gen = v.generation
    v.apply("keyd", RecordDeleted("k", "keyd-2", 5))      # its lease ran out
    assert v.generation > gen
    assert v.targets(lambda _: True).keyd == ["10.30.0.5"]


def test_the_seed_only_while_no_instance_is_live() -> None:
    seed = keyd_backends(["10.30.0.5", "10.30.0.6"])
    none = Targets(nodes={}, fallback=[], spis={}, clients={})
    assert keyd_for(none, seed) == seed
    live = Targets(nodes={}, fallback=[], spis={}, clients={}, keyd=["10.30.0.7"])
    assert [b.address for b in keyd_for(live, seed)] == ["10.30.0.7"]
    # a registered instance at a seed address has the seed's mark
    marks = MarkAllocator()
    seeded = keyd_bucket_marks(marks, seed)
    assert set(seeded) == {marks.mark("keyd:10.30.0.5"), marks.mark("keyd:10.30.0.6")}
    one = keyd_for(Targets({}, [], {}, {}, keyd=["10.30.0.5"]), seed)
    assert keyd_bucket_marks(marks, one) == [marks.mark("keyd:10.30.0.5")] * BUCKETS


def test_chain_hashes_ike_over_the_buckets() -> None:
    marks = MarkAllocator()
    two = keyd_bucket_marks(marks, keyd_backends(["10.30.0.5", "10.30.0.6"]))
    rules = chain_rules(VIP, two, [0x49500002])
    hashed = (f"jhash ip saddr mod {BUCKETS} seed {HASH_SEED:#x} map {{ 0 : "
              f"{two[0]:#x}, 1 : {two[1]:#x}")
    assert rules[0].startswith(f"ip daddr {VIP} udp dport 500 meta mark set {hashed}")
    assert rules[1].startswith(f"ip daddr {VIP} udp dport 4500 @th,64,32 0 meta mark set "
                               f"{hashed}")
    assert rules[0].count(" : ") == BUCKETS
    # one instance: a plain mark, no hash
    one = keyd_bucket_marks(marks, keyd_backends(["10.30.0.5"]))
    assert chain_rules(VIP, one, [])[0] == \
        f"ip daddr {VIP} udp dport 500 meta mark set {one[0]:#x} accept"


def test_userspace_forwarder_keeps_a_client_on_its_instance() -> None:
    marks = MarkAllocator()
    three = keyd_backends(["10.30.0.5", "10.30.0.6", "10.30.0.7"])
    before = Steering(keyd=keyd_bucket_marks(marks, three))
    after = Steering(keyd=keyd_bucket_marks(marks, three[:2]))     # 10.30.0.7 died
    gone = marks.mark("keyd:10.30.0.7")
    moved = 0
    for i in range(400):
        c = (f"198.51.{100 + i // 200}.{i % 200}", 500)
        x, y = steer(before, 500, b"\0" * 30, c), steer(after, 500, b"\0" * 30, c)
        assert y != gone
        if x != gone:
            assert x == y
        else:
            moved += 1
        # the NAT-T float (500 → 4500, zero marker) keeps the client on the same instance
        assert steer(before, 4500, b"\0" * 34, (c[0], 4500)) == x
    assert 0 < moved < 400
