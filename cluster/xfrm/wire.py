"""Netlink framing for NETLINK_XFRM (linux/netlink.h, linux/xfrm.h): headers, attributes,
acknowledgements and the kernel's errors.

Sans-I/O: bytes in, typed values out. A message is `push_message(kind, flags, seq, body)`;
what the kernel answers is `pull_messages(data)`, one `Message` each, and `check_answer`
turns an NLMSG_ERROR into the typed `KernelError` that names the request it refused.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from dataclasses import dataclass

NETLINK_XFRM = 6
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11

# linux/xfrm.h, enum XFRM_MSG_*
XFRM_MSG_NEWSA, XFRM_MSG_DELSA, XFRM_MSG_GETSA = 16, 17, 18
XFRM_MSG_NEWPOLICY, XFRM_MSG_DELPOLICY, XFRM_MSG_GETPOLICY = 19, 20, 21
XFRM_MSG_UPDPOLICY, XFRM_MSG_UPDSA = 25, 26
XFRM_MSG_FLUSHSA, XFRM_MSG_FLUSHPOLICY = 28, 29
XFRM_MSG_NEWAE, XFRM_MSG_GETAE = 30, 31

MESSAGE_NAMES = {
    NLMSG_ERROR: "NLMSG_ERROR", NLMSG_DONE: "NLMSG_DONE",
    XFRM_MSG_NEWSA: "XFRM_MSG_NEWSA", XFRM_MSG_DELSA: "XFRM_MSG_DELSA",
    XFRM_MSG_GETSA: "XFRM_MSG_GETSA", XFRM_MSG_NEWPOLICY: "XFRM_MSG_NEWPOLICY",
    XFRM_MSG_DELPOLICY: "XFRM_MSG_DELPOLICY", XFRM_MSG_GETPOLICY: "XFRM_MSG_GETPOLICY",
    XFRM_MSG_UPDPOLICY: "XFRM_MSG_UPDPOLICY", XFRM_MSG_UPDSA: "XFRM_MSG_UPDSA",
    XFRM_MSG_FLUSHSA: "XFRM_MSG_FLUSHSA", XFRM_MSG_FLUSHPOLICY: "XFRM_MSG_FLUSHPOLICY",
    XFRM_MSG_NEWAE: "XFRM_MSG_NEWAE", XFRM_MSG_GETAE: "XFRM_MSG_GETAE",
}

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


class XfrmProtocolError(Exception):
    """The kernel's answer could not be read (truncated, a length that does not add up)."""


class KernelError(Exception):
    """The kernel refused a request: its errno, which request (type, seq), and the
    kernel's extended-ack text when it sent one."""

    def __init__(self, errno: int, kind: int, seq: int, what: str = "",
                 detail: str = "") -> None:
        self.errno = errno
        self.kind = kind
        self.seq = seq
        self.what = what
        self.detail = detail
        name = MESSAGE_NAMES.get(kind, str(kind))
        text = f"{name} ({what})" if what else name
        super().__init__(f"{text} refused: {os.strerror(errno)}"
                         + (f": {detail}" if detail else ""))

    @property
    def missing(self) -> bool:
        """The entry the request named does not exist."""
        return self.errno in (errno_mod.ESRCH, errno_mod.ENOENT)

    @property
    def exists(self) -> bool:
        return self.errno == errno_mod.EEXIST


@dataclass(frozen=True, slots=True)
class Message:
    kind: int
    flags: int
    seq: int
    pid: int
    body: bytes  # everything after the netlink header


def push_attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def pull_attrs(data: bytes, off: int = 0) -> dict[int, bytes]:
    """Attributes from `off` to the end: type → payload (the last one of a type wins)."""
    out: dict[int, bytes] = {}
    while off + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            raise XfrmProtocolError(f"attribute {kind} of length {length} at {off} "
                                    f"overruns its message ({len(data)} bytes)")
        out[kind & _NLA_TYPE_MASK] = data[off + _NLATTR.size:off + length]
        off += (length + 3) & ~3
    return out


def push_message(kind: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, pid) + body


def pull_messages(data: bytes) -> list[Message]:
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            raise XfrmProtocolError(f"netlink message of length {length} at {off} overruns "
                                    f"its datagram ({len(data)} bytes)")
        out.append(Message(kind, flags, seq, pid, data[off + _NLMSGHDR.size:off + length]))
        off += (length + 3) & ~3
    return out


def error_of(msg: Message) -> KernelError | None:
    """The KernelError an NLMSG_ERROR carries (None: an acknowledgement, errno 0)."""
    if len(msg.body) < 4 + _NLMSGHDR.size:
        raise XfrmProtocolError("NLMSG_ERROR shorter than its header")
    (err,) = struct.unpack_from("=i", msg.body)
    if err == 0:
        return None
    _, kind, _, seq, _ = _NLMSGHDR.unpack_from(msg.body, 4)
    detail = ""
    if msg.flags & NLM_F_ACK_TLVS:
        # the refused message follows in full unless the kernel capped it to its header
        off = 4 + (_NLMSGHDR.size if msg.flags & NLM_F_CAPPED
                   else _NLMSGHDR.unpack_from(msg.body, 4)[0])
        text = pull_attrs(msg.body, (off + 3) & ~3).get(NLMSGERR_ATTR_MSG, b"")
        detail = text.rstrip(b"\0").decode(errors="replace")
    return KernelError(-err, kind, seq, detail=detail)
