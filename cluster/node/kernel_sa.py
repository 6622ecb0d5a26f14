"""What the kernel data plane asks of XFRM for one Child SA, sans-I/O: its states, its
policies, its counters as the kernel keeps them, and when it must stop sending.

A Child SA record (cluster.store.ChildSaRecord) becomes
- an inbound state (client → VIP, `spi_in`, the client's keys), installed on every node that
  holds the SA: any node can decrypt what the sprayer sends it;
- while this node sends on it, an outbound state (VIP → client, `spi_out`) and one outbound
  policy per client address (virtual IP, else the remote selectors) that picks the state
  by `reqid` for what is routed into the node's XFRM interface (`if_id`).
Both states carry `if_id`, so decrypted packets come in on the XFRM interface, whose own
wildcard in/fwd policies (`interface_policies`) let them into the stack.
"""

from __future__ import annotations

import ipaddress

from cluster.esp import SaCounters
from cluster.esp.suites import suite
from cluster.store import ChildSaRecord
from cluster.xfrm import Aead, Auth, Cipher, Encap, Replay, Template, XfrmPolicy, XfrmState
from cluster.xfrm.state import ring_from_window, window_from_ring

#: the node's XFRM interface id: its states and policies carry it, its interface has it
IF_ID = 0x1C5C

# IKE's transform names -> the kernel's crypto API names (as strongSwan's kernel-netlink
# maps them); key lengths come from cluster.esp.suites
_INTEG_NAMES = {"sha1": "hmac(sha1)", "sha256": "hmac(sha256)", "sha384": "hmac(sha384)",
                "sha512": "hmac(sha512)", "aescmac": "cmac(aes)"}


class KernelSuiteError(ValueError):
    """The record's transform has no kernel name here."""


def algorithms(record: ChildSaRecord, inbound: bool
               ) -> tuple[Aead | None, Cipher | None, Auth | None]:
    """The XFRM algorithms of one direction of the SA (the cluster's inbound keys for the
    inbound state)."""
    try:
        s = suite(record.encr, record.integ)
    except Exception as e:
        raise KernelSuiteError(str(e)) from None
    enc = record.enc_key_in if inbound else record.enc_key_out
    integ = record.integ_key_in if inbound else record.integ_key_out
    if s.kind == "aes-gcm":
        return Aead("rfc4106(gcm(aes))", enc, 8 * s.icv_len), None, None
    if s.kind == "chacha20-poly1305":
        return Aead("rfc7539esp(chacha20,poly1305)", enc, 8 * s.icv_len), None, None
    cipher = {"aes-cbc": "cbc(aes)", "aes-ctr": "rfc3686(ctr(aes))",
              "3des-cbc": "cbc(des3_ede)"}[s.kind]
    assert s.integ is not None
    return None, Cipher(cipher, enc), Auth(_INTEG_NAMES[s.integ], integ, 8 * s.icv_len)


def reqid_of(record: ChildSaRecord) -> int:
    """One reqid per Child SA (its inbound SPI): the outbound policy picks the state by it."""
    return record.spi_in


def _selector(record: ChildSaRecord) -> tuple[str, str] | None:
    """What the client may send from, checked by the kernel after decryption: its one remote
    selector (two, or an IPv6 address beside an IPv4 one, cannot be one XFRM selector; the
    kernel then checks none)."""
    if len(record.ts_remote) != 1 or record.virtual_ip6:
        return None
    net = ipaddress.ip_network(record.ts_remote[0], strict=False)
    anywhere = "0.0.0.0/0" if net.version == 4 else "::/0"
    return str(net), anywhere


def inbound_state(record: ChildSaRecord, *, vip: str, natt_port: int, window: int,
                  counters: SaCounters | None = None, replay_thresh: int | None = None,
                  if_id: int = IF_ID) -> XfrmState:
    aead, cipher, auth = algorithms(record, inbound=True)
    c = counters or SaCounters(0, 0, 0)
    return XfrmState(
        src=record.peer_addr, dst=vip, spi=record.spi_in, reqid=reqid_of(record), aead=aead,
        cipher=cipher, auth=auth, replay=replay_of(c, window), esn=record.esn,
        encap=Encap(record.peer_port, natt_port) if record.udp_encap else None, if_id=if_id,
        selector=_selector(record), replay_thresh=replay_thresh)


def outbound_state(record: ChildSaRecord, peer: tuple[str, int], *, vip: str,
                   natt_port: int, window: int, out_seq: int,
                   replay_thresh: int | None = None, if_id: int = IF_ID) -> XfrmState:
    aead, cipher, auth = algorithms(record, inbound=False)
    return XfrmState(
        src=vip, dst=peer[0], spi=record.spi_out, reqid=reqid_of(record), aead=aead,
        cipher=cipher, auth=auth, replay=Replay(window, out_seq=out_seq), esn=record.esn,
        encap=Encap(natt_port, peer[1]) if record.udp_encap else None, if_id=if_id,
        replay_thresh=replay_thresh)


def client_networks(record: ChildSaRecord) -> list[str]:
    """Where the SA's outbound traffic goes: the virtual IPs, else the remote selectors
    (never a /0: it would take every packet routed into the interface)."""
    vips = [ip for ip in (record.virtual_ip, record.virtual_ip6) if ip]
    if vips:
        return [str(ipaddress.ip_network(ip)) for ip in vips]
    return [str(n) for n in (ipaddress.ip_network(t, strict=False) for t in record.ts_remote)
            if n.prefixlen]


def outbound_policies(record: ChildSaRecord, peer: tuple[str, int], *, vip: str,
                      if_id: int = IF_ID) -> list[XfrmPolicy]:
    out = []
    for net in client_networks(record):
        anywhere = "0.0.0.0/0" if ipaddress.ip_network(net).version == 4 else "::/0"
        out.append(XfrmPolicy(anywhere, net, "out", Template(vip, peer[0], reqid_of(record)),
                              if_id=if_id))
    return out


def interface_policies(if_id: int = IF_ID) -> list[XfrmPolicy]:
    """In and fwd, IPv4 and IPv6 inside: whatever decrypted through a state of this
    interface (any tunnel endpoints, any reqid: the template's zero addresses match all)."""
    out = []
    for anywhere in ("0.0.0.0/0", "::/0"):
        for direction in ("in", "fwd"):
            out.append(XfrmPolicy(anywhere, anywhere, direction,
                                  Template("0.0.0.0", "0.0.0.0", 0), if_id=if_id))
    return out


# -- counters ---------------------------------------------------------------------------------

def replay_of(c: SaCounters, window: int) -> Replay:
    """The kernel's replay state for these counters (its bitmap as the kernel's ring)."""
    return Replay(window, c.in_highest, c.out_seq, ring_from_window(c.in_highest, c.in_bitmap,
                                                                    window))


def inbound_counters(r: Replay) -> tuple[int, int]:
    """(in_highest, in_bitmap) of a kernel replay state, the bitmap as cluster.esp keeps it."""
    ring = r.bitmap if r.bitmap is not None else (0,) * r.words
    return r.in_seq, window_from_ring(r.in_seq, ring, r.window)


# -- the send limit ---------------------------------------------------------------------------

def stop_margin(jump_packets: int) -> int:
    """How far below its send limit the kernel plane stops an SA. The kernel cannot refuse a
    sequence number per packet: the node learns the outbound counter from aevents and then
    removes the outbound state, and the kernel may send on in between (the event's
    threshold, plus the packets of the time to act). Half the jump J leaves 512 checkpoint
    intervals for that — at 1 M packets/s, half a second with the default D."""
    return max(1, jump_packets // 2)


def aevent_threshold(checkpoint_packets: int, margin: int) -> int:
    """Packets between two aevents of an outbound state: a checkpoint's worth, but small
    enough against the margin that an event always arrives well before the limit."""
    return max(1, min(checkpoint_packets, margin // 8))


def may_send(out_seq: int, limit: int, margin: int) -> bool:
    """Whether an SA that has used `out_seq` may go on sending below `limit`."""
    return out_seq + margin < limit
