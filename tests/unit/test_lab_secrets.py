"""The lab's random secrets are never read as hex or base64 by keyd or strongSwan."""

from __future__ import annotations

from cluster.lab.pki import ENCODED_PREFIXES, printable_secret


def test_no_lab_secret_begins_like_an_encoded_one() -> None:
    # secrets.token_urlsafe alone begins with "0x" or "0s" once in 2,048: 20,000 draws of it
    # would hold about ten
    drawn = [printable_secret(12) for _ in range(20_000)]
    assert not [s for s in drawn if s.lower().startswith(ENCODED_PREFIXES)]
    assert len(set(drawn)) == len(drawn)
    assert all(len(s) == 16 for s in drawn)
