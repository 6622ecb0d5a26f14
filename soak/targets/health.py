"""The sprayer's health-probe codec (sprayer/health.py): the probe a node answers and the reply
the sprayer reads. An input is `mode byte | datagram`: even, a probe; odd, a reply."""

from __future__ import annotations

from soak import decoders as d

TITLE = "health probe and reply (sprayer/health)"
TYPED: tuple[type[BaseException], ...] = (d.HealthRemoteError,)


def seeds() -> list[bytes]:
    nonce = bytes(range(8))
    return [b"\0" + d.push_probe(nonce), b"\1" + d.push_reply(nonce, False, "n1"),
            b"\1" + d.push_reply(nonce, True, "node-\u00e9")]


def one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        d.pull_reply(data[1:])
    else:
        d.pull_probe(data[1:])
