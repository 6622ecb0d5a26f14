"""Reading the SPI map back: a torn listing (an element twice, as the kernel lists a hash table
that is being resized) is read again; a whole one is compared with what was applied."""

from __future__ import annotations

import json

import pytest

from cluster.host import DriverError
from sprayer import nft as nft_mod
from sprayer.nft import MapDiff, NftDriver, map_diff


class Listings:
    """Stands in for libnftables' listing output only; batches are not run."""

    in_process = True

    def __init__(self, *elements: list[tuple[int, int]]) -> None:
        self.elements = list(elements)
        self.reads = 0

    def list_json(self, what: str) -> str:
        elems = self.elements[min(self.reads, len(self.elements) - 1)]
        self.reads += 1
        return json.dumps({"nftables": [{"metainfo": {}}, {"map": {"elem": elems}}]})

    def run(self, batch: str, *, json_input: bool) -> str:
        return ""


def driver(listings: Listings) -> NftDriver:
    return NftDriver("203.0.113.10", nft=listings)  # type: ignore[arg-type]


def test_a_torn_listing_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_mod, "READ_RETRY_S", 0)
    torn = [(1, 7), (2, 7), (2, 7)]          # 3 listed, 2 distinct: 3 left out
    whole = [(1, 7), (2, 7), (3, 8)]
    listings = Listings(torn, whole)
    assert driver(listings).read_spis() == {1: 7, 2: 7, 3: 8}
    assert listings.reads == 2


def test_a_listing_torn_every_time_is_a_driver_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_mod, "READ_RETRY_S", 0)
    listings = Listings([(1, 7), (1, 7)])
    with pytest.raises(DriverError, match="torn"):
        driver(listings).read_spis()
    assert listings.reads == nft_mod.READ_TRIES


def test_an_unreadable_listing_is_a_driver_error() -> None:
    listings = Listings([("x", 7)])  # type: ignore[list-item]
    with pytest.raises(DriverError, match="unreadable"):
        driver(listings).read_spis()


def test_map_diff_counts_missing_wrong_and_extra() -> None:
    assert map_diff({1: 7, 2: 7, 3: 8}, {1: 7, 3: 9, 4: 7}) == MapDiff(1, 1, 1)
    assert map_diff({1: 7}, {1: 7}).total == 0


def test_a_check_is_void_once_the_driver_changed_the_map() -> None:
    d = driver(Listings([(1, 7)]))
    assert d.check() is None                 # nothing applied yet
    d.sync_spis({1: 7})
    d._reader = driver(d.nft)  # type: ignore[arg-type]   # reads through the same listings
    check = d.check()
    assert check is not None and check.current() and check.run().total == 0
    d.sync_spis({1: 7})                      # no change: still current
    assert check.current()
    d.sync_spis({1: 8})
    assert not check.current()
