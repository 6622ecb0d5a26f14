"""The secrets study finds a key however it is written: raw, hex, base64 at any alignment,
without its salt; and reports nothing where the key is absent."""

from __future__ import annotations

import base64
import os

import pytest

from soak.secrets import search

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("encode", [
    lambda k: k,
    lambda k: k.hex().encode(),
    lambda k: k.hex().upper().encode(),
    lambda k: k.hex(":").encode(),
    lambda k: base64.b64encode(b"x" + k),          # inside a longer base64 blob, shifted
    lambda k: base64.b64encode(b"xy" + k + b"z"),
    lambda k: base64.urlsafe_b64encode(k),
    lambda k: k[:16].hex().encode(),               # an AEAD key written without its salt
])
def test_a_key_is_found_in_any_encoding(encode: object) -> None:
    key = os.urandom(20)
    data = b'{"log": "' + encode(key) + b'"}'  # type: ignore[operator]
    summary, hits = search({"logs": [("a.log", data)]}, {"k": key})
    assert summary["logs"]["hits"] >= 1 and hits


def test_nothing_is_reported_where_no_key_is() -> None:
    key = os.urandom(20)
    summary, hits = search({"logs": [("a.log", os.urandom(4096).hex().encode())]}, {"k": key})
    assert summary["logs"] == {"items": 1, "bytes": 8192, "hits": 0, "lab_hits": 0}
    assert hits == []


def test_lab_only_secrets_are_counted_apart() -> None:
    psk = b"a lab psk of some length"
    summary, _ = search({"cli": [("lab status", psk)]}, {"lab PSK": psk},
                        frozenset({"lab PSK"}))
    assert summary["cli"]["hits"] == 0 and summary["cli"]["lab_hits"] >= 1
