"""Wire details of the node: the IKE relay's hand-made IPv4/UDP frames (checked by scapy)
and the health responder's reply format (the sprayer's prober parses it)."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.packet import raw

from cluster.node.relay import ipv4_udp
from cluster.probe import pull_reply, push_probe


def test_relay_frame_is_valid_ipv4_udp() -> None:
    payload = b"\x00\x00\x00\x00" + bytes(range(40))
    frame = ipv4_udp(("198.51.100.7", 40123), ("203.0.113.10", 4500), payload + b"x")
    pkt = IP(frame)
    assert (pkt.src, pkt.dst, pkt[UDP].sport, pkt[UDP].dport) == (
        "198.51.100.7", "203.0.113.10", 40123, 4500)
    assert bytes(pkt[UDP].payload) == payload + b"x"
    # scapy recomputes both checksums from scratch: they must match ours
    ours_ip, ours_udp = pkt.chksum, pkt[UDP].chksum
    del pkt.chksum
    del pkt[UDP].chksum
    again = IP(raw(pkt))
    assert (again.chksum, again[UDP].chksum) == (ours_ip, ours_udp)


def test_health_reply_parses_with_the_sprayers_codec() -> None:
    from cluster.node.agent import NodeAgent
    agent = NodeAgent.__new__(NodeAgent)  # only the reply builder is exercised

    class Ready:
        def is_set(self) -> bool:
            return True

    class Cfg:
        id = "node-7"
    agent.ready = Ready()  # type: ignore[assignment]
    agent.cfg = Cfg()  # type: ignore[assignment]
    agent.draining = True
    reply = agent._health_reply(push_probe(b"12345678"))
    assert reply is not None
    r = pull_reply(reply)
    assert (r.nonce, r.draining, r.node_id) == (b"12345678", True, "node-7")
    assert agent._health_reply(b"IPSC-PROBE short") is None
