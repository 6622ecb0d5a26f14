"""XFRM policies as netlink messages: XFRM_MSG_NEWPOLICY / UPDPOLICY / DELPOLICY
(linux/xfrm.h; net/xfrm/xfrm_user.c).

The kernel data plane needs few: with an XFRM interface the states carry `if_id` and the
interface's policies (any traffic, `if_id`) send what is routed into the interface through
the state; a policy here is a selector, a direction and one ESP template.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from cluster.xfrm.state import IPPROTO_ESP, MODES, XFRM_INF, family_of, packed, push_selector
from cluster.xfrm.wire import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_UPDPOLICY,
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


def push_delete_policy(seq: int, src: str, dst: str, direction: str, if_id: int = 0) -> bytes:
    body = push_selector(src, dst) + _POLICY_ID_TAIL.pack(0, DIRECTIONS[direction])
    if if_id:
        body += push_attr(XFRMA_IF_ID, struct.pack("=I", if_id))
    return push_message(XFRM_MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq, body)
