"""The userspace forwarder in the router namespace: same steering, client source preserved."""

from __future__ import annotations

import struct
from typing import Any

from sprayer.userspace import UserspaceApplier
from sprayer.view import Targets

VIP = "203.0.113.10"


def test_forwarder_steers_and_keeps_the_client_source(lab: Any) -> None:
    r = lab.ns("router")
    lab.sh("ip", "-n", r, "addr", "add", f"{VIP}/32", "dev", "lo")
    applier = UserspaceApplier(VIP, [lab.addresses["keyd"]], netns=r)
    try:
        applier.apply(Targets(nodes={"node-1": lab.addresses["node-1"],
                                     "node-2": lab.addresses["node-2"]},
                              fallback=["node-1", "node-2"],
                              spis={0x1001: "node-1", 0x2002: "node-2"}, clients={}))
        roles = ("keyd", "node-1", "node-2")
        ike = {x: lab.udp(x, 500) for x in roles}
        natt = {x: lab.udp(x, 4500) for x in roles}
        sender = lab.udp("sender", 40500, addr="0.0.0.0")

        sender.sendto(b"\x00" * 28, (VIP, 500))
        assert lab.receive_any(ike).keys() == {"keyd"}
        esp = struct.pack("!II", 0x2002, 1) + b"x" * 40
        sender.sendto(esp, (VIP, 4500))
        got = lab.receive_any(natt)
        assert got == {"node-2": esp}

        # the node sees the client's own address and port (NAT detection, rebinding)
        sender.sendto(struct.pack("!II", 0x1001, 1) + b"y" * 16, (VIP, 4500))
        natt["node-1"].settimeout(2.0)
        _, source = natt["node-1"].recvfrom(2048)
        assert source == ("198.51.100.2", 40500)

        sender.sendto(b"\x00\x00\x00\x00" + b"i" * 20, (VIP, 4500))
        assert lab.receive_any(natt).keys() == {"keyd"}
        assert applier.forwarder.forwarded == 4
        for s in (*ike.values(), *natt.values(), sender):
            s.close()
    finally:
        applier.close()
        applier.routes.remove()
