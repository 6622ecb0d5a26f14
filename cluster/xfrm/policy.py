"""XFRM policies as netlink messages: XFRM_MSG_NEWPOLICY / UPDPOLICY / DELPOLICY
(linux/xfrm.h; net/xfrm/xfrm_user.c).

The kernel data plane needs few: with an XFRM interface the states carry `if_id` and the
interface's policies (any traffic, `if_id`) send what is routed into the interface through
the state; a policy here is a selector, a direction and one ESP template.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from cluster.xfrm.state import (
    IPPROTO_ESP,
    MODES,
    SELECTOR,
    XFRM_INF,
    family_of,
    packed,
    push_selector,
    unpacked,
)
from cluster.xfrm.wire import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_UPDPOLICY,
    Message,
    XfrmProtocolError,
    pull_attrs,
    push_attr,
    push_message,
)

XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_POLICY_FWD = 0, 1, 2
DIRECTIONS = {"in": XFRM_POLICY_IN, "out": XFRM_POLICY_OUT, "fwd": XFRM_POLICY_FWD}
XFRM_POLICY_ALLOW = 0
XFRMA_TMPL, XFRMA_IF_ID = 5, 31

_LIFETIME_CFG = struct.Struct("=8Q")
_LIFETIME_CUR_LEN = 32
#: struct xfrm_userpolicy_info after selector and lifetimes: priority, index, dir, action,
#: flags, share (168 bytes in all)
_POLICY_TAIL = struct.Struct("=IIBBBB4x")
#: struct xfrm_user_tmpl: id (daddr, spi, proto), family, saddr, reqid, mode, share,
#: optional, aalgos, ealgos, calgos
_TMPL = struct.Struct("=16s4sB3xH2x16sIBBBxIII")
#: struct xfrm_userpolicy_id: selector, index, dir
_POLICY_ID_TAIL = struct.Struct("=IB3x")


@dataclass(frozen=True, slots=True)
class Template:
    """The ESP state a policy's traffic goes through: between these tunnel endpoints."""

    src: str
    dst: str
    reqid: int
    mode: str = "tunnel"


@dataclass(frozen=True, slots=True)
class XfrmPolicy:
    """Traffic from `src` to `dst` (networks) in direction `direction` ("in", "out",
    "fwd"), through `template`."""

    src: str
    dst: str
    direction: str
    template: Template
    if_id: int = 0
    priority: int = 0

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, "
                             f"not {self.direction!r}")
        if ipaddress.ip_network(self.src).version != ipaddress.ip_network(self.dst).version:
            raise ValueError(f"policy {self.src} -> {self.dst}: address families differ")


def _template(t: Template) -> bytes:
    return _TMPL.pack(packed(t.dst), b"\0" * 4, IPPROTO_ESP, family_of(t.dst), packed(t.src),
                      t.reqid, MODES[t.mode], 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def push_new_policy(seq: int, p: XfrmPolicy, *, update: bool = False) -> bytes:
    """XFRM_MSG_NEWPOLICY (EEXIST if there), or XFRM_MSG_UPDPOLICY (`update`: create or
    replace)."""
    body = (push_selector(p.src, p.dst)
            + _LIFETIME_CFG.pack(XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)
            + bytes(_LIFETIME_CUR_LEN)
            + _POLICY_TAIL.pack(p.priority, 0, DIRECTIONS[p.direction], XFRM_POLICY_ALLOW,
                                0, 0)
            + push_attr(XFRMA_TMPL, _template(p.template)))
    if p.if_id:
        body += push_attr(XFRMA_IF_ID, struct.pack("=I", p.if_id))
    kind = XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY
    return push_message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body)


_POLICY_INFO_LEN = SELECTOR.size + _LIFETIME_CFG.size + _LIFETIME_CUR_LEN + _POLICY_TAIL.size


def pull_policy(msg: Message) -> XfrmPolicy:
    """A policy the kernel sent (XFRM_MSG_NEWPOLICY / UPDPOLICY, as a dump answers); its
    first template (a policy without one reads with an all-zero template).
    XfrmProtocolError if it does not read as one."""
    body = msg.body
    if msg.kind not in (XFRM_MSG_NEWPOLICY, XFRM_MSG_UPDPOLICY) or len(body) < _POLICY_INFO_LEN:
        raise XfrmProtocolError(f"not an XFRM policy: type {msg.kind}, {len(body)} bytes")
    daddr, saddr, _, _, _, _, fam, dlen, slen, _, _, _ = SELECTOR.unpack_from(body)
    priority, _, direction, _, _, _ = _POLICY_TAIL.unpack_from(
        body, SELECTOR.size + _LIFETIME_CFG.size + _LIFETIME_CUR_LEN)
    attrs = pull_attrs(body, _POLICY_INFO_LEN)
    names = {v: k for k, v in DIRECTIONS.items()}
    modes = {v: k for k, v in MODES.items()}
    template = Template("0.0.0.0" if fam == socket.AF_INET else "::",
                        "0.0.0.0" if fam == socket.AF_INET else "::", 0)
    if (raw := attrs.get(XFRMA_TMPL)) is not None and len(raw) >= _TMPL.size:
        t = _TMPL.unpack_from(raw)
        tdst, tfam, tsrc, reqid, mode = t[0], t[3], t[4], t[5], t[6]
        template = Template(unpacked(tsrc, tfam), unpacked(tdst, tfam), reqid,
                            modes.get(mode, "tunnel"))
    if_id = struct.unpack_from("=I", attrs[XFRMA_IF_ID])[0] if XFRMA_IF_ID in attrs else 0
    if direction not in names:
        raise XfrmProtocolError(f"XFRM policy of unknown direction {direction}")
    try:
        return XfrmPolicy(f"{unpacked(saddr, fam)}/{slen}", f"{unpacked(daddr, fam)}/{dlen}",
                          names[direction], template, if_id=if_id, priority=priority)
    except ValueError as e:
        raise XfrmProtocolError(f"XFRM policy does not read: {e}") from None


def push_delete_policy(seq: int, src: str, dst: str, direction: str, if_id: int = 0) -> bytes:
    body = push_selector(src, dst) + _POLICY_ID_TAIL.pack(0, DIRECTIONS[direction])
    if if_id:
        body += push_attr(XFRMA_IF_ID, struct.pack("=I", if_id))
    return push_message(XFRM_MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq, body)
