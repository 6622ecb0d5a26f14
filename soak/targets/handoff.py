"""The hand-off codec of the nodes (cluster/node/handoff.py): READY, which the new owner of a
client sends its old owner on the health port."""

from __future__ import annotations

from soak import decoders as d

TITLE = "hand-off READY message (cluster/node handoff)"
TYPED: tuple[type[BaseException], ...] = (d.HandoffRemoteError,)


def seeds() -> list[bytes]:
    ike = "0102030405060708" + "1112131415161718"
    return [d.push_ready(d.Ready(ike, 7, "n2")), d.push_ready(d.Ready(ike, (1 << 64) - 1, "ñ"))]


def one_input(data: bytes) -> None:
    if d.is_ready_message(data):
        msg = d.pull_ready(data)
        if d.push_ready(msg) != data:  # what decodes must encode back to the same bytes
            raise AssertionError("READY does not round-trip")
    else:
        try:
            d.pull_ready(data)
        except d.HandoffRemoteError:
            return
        raise AssertionError("a non-READY datagram decoded as READY")
