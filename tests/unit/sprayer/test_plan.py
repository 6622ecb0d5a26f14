"""Properties of the planner: determinism, minimal movement, spread, failover, drain, budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.plan import (
    Assign,
    CompleteHandoff,
    Failover,
    MoveReason,
    NodeState,
    NodeView,
    Phase,
    Placement,
    Planner,
    PlanUsageError,
    StartHandoff,
    choose,
)

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
clusters = st.dictionaries(node_ids, st.integers(min_value=1, max_value=100),
                           min_size=1, max_size=7)
KEYS = [f"ike-{i:06d}" for i in range(600)]

#: Spread tolerance stated in docs/sprayer.md: with K clients, each node's share is within
#: 0.05 (absolute) of weight / total weight. For K = 4000 the worst standard deviation is
#: sqrt(0.25 / 4000) ≈ 0.008, so 0.05 is > 6 sigma: a failure means a biased hash.
SPREAD_TOLERANCE = 0.05
SPREAD_KEYS = [f"client-{i}" for i in range(4000)]


def views(weights: dict[str, int]) -> list[NodeView]:
    return [NodeView(n, float(w)) for n, w in weights.items()]


@given(clusters, st.randoms(use_true_random=False))
def test_choice_is_deterministic_and_order_free(weights: dict[str, int],
                                                rnd: random.Random) -> None:
    a = views(weights)
    b = list(a)
    rnd.shuffle(b)
    for k in KEYS[:100]:
        assert choose(k, a) == choose(k, b)
        assert choose(k, a) in weights


@given(clusters, st.data())
def test_removing_a_node_moves_only_its_clients(weights: dict[str, int],
                                                data: st.DataObject) -> None:
    if len(weights) < 2:
        return
    gone = data.draw(st.sampled_from(sorted(weights)))
    before = {k: choose(k, views(weights)) for k in KEYS}
    rest = {n: w for n, w in weights.items() if n != gone}
    after = {k: choose(k, views(rest)) for k in KEYS}
    for k in KEYS:
        if before[k] != gone:
            assert after[k] == before[k]
        else:
            assert after[k] != gone


@given(clusters, node_ids, st.integers(min_value=1, max_value=100))
def test_adding_a_node_moves_clients_only_to_it(weights: dict[str, int], new: str,
                                                 weight: int) -> None:
    if new in weights:
        return
    before = {k: choose(k, views(weights)) for k in KEYS}
    after = {k: choose(k, views({**weights, new: weight})) for k in KEYS}
    for k in KEYS:
        assert after[k] in (before[k], new)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(node_ids, st.integers(min_value=1, max_value=20), min_size=2, max_size=5))
def test_spread_follows_weights(weights: dict[str, int]) -> None:
    vs = views(weights)
    counts = dict.fromkeys(weights, 0)
    for k in SPREAD_KEYS:
        owner = choose(k, vs)
        assert owner is not None
        counts[owner] += 1
    total = sum(weights.values())
    for n, w in weights.items():
        assert abs(counts[n] / len(SPREAD_KEYS) - w / total) <= SPREAD_TOLERANCE, (n, counts)


def test_zero_weight_and_empty() -> None:
    assert choose("x", []) is None
    assert choose("x", [NodeView("a", 0.0)]) is None
    assert choose("x", [NodeView("a", 0.0), NodeView("b", 1.0)]) == "b"


def placed(weights: dict[str, int], keys: list[str]) -> dict[str, Placement]:
    vs = views(weights)
    return {k: Placement(k, str(choose(k, vs)), 1) for k in keys}


def test_new_clients_are_assigned_with_epoch_one() -> None:
    p = Planner(moves_per_s=10, handoff_timeout_s=1.0)
    nodes = views({"n1": 1, "n2": 1})
    acts = p.plan(nodes, {}, ["a", "b"], now=0.0)
    assert [type(a) for a in acts] == [Assign, Assign]
    assert {a.ike_sa_id for a in acts if isinstance(a, Assign)} == {"a", "b"}
    assert all(isinstance(a, Assign) and a.epoch == 1 for a in acts)


@given(st.dictionaries(node_ids, st.integers(min_value=1, max_value=50), min_size=2, max_size=6),
       st.data())
def test_failover_moves_only_the_dead_nodes_clients_unthrottled(weights: dict[str, int],
                                                                data: st.DataObject) -> None:
    dead = data.draw(st.sampled_from(sorted(weights)))
    current = placed(weights, KEYS)
    nodes = [NodeView(n, float(w), alive=n != dead) for n, w in weights.items()]
    p = Planner(moves_per_s=1, handoff_timeout_s=1.0)
    acts = p.plan(nodes, current, [], now=5.0)
    moved = {a.ike_sa_id: a for a in acts if isinstance(a, Failover)}
    assert len(acts) == len(moved)
    assert set(moved) == {k for k, v in current.items() if v.node == dead}
    for a in moved.values():
        assert a.from_node == dead and a.to_node != dead and a.epoch == 2


def test_drain_is_planned_and_rate_limited() -> None:
    weights = {"n1": 1, "n2": 1, "n3": 1}
    current = placed(weights, KEYS)
    on_n1 = sorted(k for k, v in current.items() if v.node == "n1")
    nodes = [NodeView("n1", 1.0, NodeState.DRAINING), NodeView("n2", 1.0), NodeView("n3", 1.0)]
    p = Planner(moves_per_s=10, handoff_timeout_s=1.0)
    first = p.plan(nodes, current, [], now=100.0)
    assert len(first) == 10  # burst = one second's worth
    assert all(isinstance(a, StartHandoff) and a.reason is MoveReason.DRAIN
               and a.from_node == "n1" and a.to_node in ("n2", "n3") for a in first)
    # half a second later: 5 more tokens
    started = {a.ike_sa_id for a in first if isinstance(a, StartHandoff)}
    rest = {k: v for k, v in current.items() if k not in started}
    assert len(p.plan(nodes, rest, [], now=100.5)) == 5
    # the same instant again: nothing left
    assert p.plan(nodes, rest, [], now=100.5) == []
    assert len(on_n1) > 20


def test_rebalance_on_join_moves_about_a_quarter() -> None:
    three = {"n1": 1, "n2": 1, "n3": 1}
    current = placed(three, KEYS)
    nodes = views({**three, "n4": 1})
    p = Planner(moves_per_s=10_000, handoff_timeout_s=1.0)
    acts = p.plan(nodes, current, [], now=0.0)
    assert all(isinstance(a, StartHandoff) and a.to_node == "n4"
               and a.reason is MoveReason.REBALANCE for a in acts)
    assert 0.18 < len(acts) / len(KEYS) < 0.32
    assert p.plan(nodes, current, [], now=0.0, rebalance=False) == []


def test_handoff_completes_exact_on_final_or_falls_back_on_timeout() -> None:
    nodes = views({"n1": 1, "n2": 1})
    h = Placement("c", "n2", 4, Phase.HANDOFF, previous_node="n1", updated_at=10.0)
    p = Planner(moves_per_s=1, handoff_timeout_s=1.0)
    assert p.plan(nodes, {"c": h}, [], now=10.5) == []
    assert p.plan(nodes, {"c": h}, [], now=10.5, finals={"c"}) == [
        CompleteHandoff("c", "n2", 4, exact=True)]
    assert p.plan(nodes, {"c": h}, [], now=11.0) == [CompleteHandoff("c", "n2", 4, exact=False)]
    # old owner died mid hand-off: no point waiting for its counters
    dead_old = [NodeView("n1", 1.0, alive=False), NodeView("n2", 1.0)]
    assert p.plan(dead_old, {"c": h}, [], now=10.1) == [
        CompleteHandoff("c", "n2", 4, exact=False)]
    # new owner died mid hand-off: unplanned move to a live node
    dead_new = [NodeView("n1", 1.0), NodeView("n2", 1.0, alive=False)]
    assert p.plan(dead_new, {"c": h}, [], now=10.1) == [Failover("c", "n2", "n1", 5)]


def test_no_candidates_means_no_moves() -> None:
    current = {"c": Placement("c", "n1", 1)}
    p = Planner(moves_per_s=1, handoff_timeout_s=1.0)
    assert p.plan([NodeView("n1", 1.0, alive=False)], current, ["d"], now=0.0) == []


def test_bad_parameters_are_local_errors() -> None:
    with pytest.raises(PlanUsageError):
        Planner(moves_per_s=0, handoff_timeout_s=1.0)
