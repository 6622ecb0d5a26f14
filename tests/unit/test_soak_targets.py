"""The soak's fuzz targets (soak/targets) are sound: the valid seeds they start from decode,
junk is refused with the decoder's typed error, and every crash input kept in soak/crashes/
(defects found by `make soak`, fixed since) is now refused or decoded."""

from __future__ import annotations

import importlib
import random
from typing import Any

import pytest

from soak.fuzzing import replay_known_crashes
from soak.targets import NAMES

pytestmark = pytest.mark.unit


def _outcome(target: Any, data: bytes) -> str:
    try:
        result = target.one_input(data)
    except target.TYPED:
        return "refused"
    return "refused" if result is False else "decoded"


@pytest.mark.parametrize("name", NAMES)
def test_seeds_decode_and_junk_is_refused_typed(name: str) -> None:
    target = importlib.import_module(f"soak.targets.{name}")
    seeds = target.seeds()
    outcomes = [_outcome(target, s) for s in seeds]
    # most seeds are valid messages: the fuzzer starts from inside the decoder, not its door
    assert outcomes.count("decoded") >= len(seeds) // 2
    rng = random.Random(name)
    for seed in seeds[:50]:
        for _ in range(5):  # byte flips of valid inputs: refused or decoded, nothing else
            data = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            _outcome(target, bytes(data))


def test_known_crash_inputs_no_longer_crash() -> None:
    assert replay_known_crashes()["still_failing"] == []
