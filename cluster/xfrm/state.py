"""XFRM states (SAs) and their replay/lifetime state ("async events", AE) as netlink
messages: XFRM_MSG_NEWSA / UPDSA / DELSA / GETSA, XFRM_MSG_NEWAE / GETAE (linux/xfrm.h;
net/xfrm/xfrm_user.c; Documentation/networking/xfrm_sync.rst).

An ESP state always carries XFRMA_REPLAY_ESN_VAL (with or without the ESN flag): it is what
lets a state be installed with counters — `oseq` the next outbound sequence number minus one,
`seq` the highest inbound one seen — and what GETAE / aevents report and NEWAE sets. The
kernel requires `xfrm_usersa_info.replay_window` 0 then; the window lives in the attribute.
Its bitmap is the kernel's ring: sequence number n is bit (n - 1) mod window.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from cluster.xfrm.wire import (
    NLM_F_ACK,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    XFRM_MSG_DELSA,
    XFRM_MSG_GETAE,
    XFRM_MSG_GETSA,
    XFRM_MSG_NEWAE,
    XFRM_MSG_NEWSA,
    XFRM_MSG_UPDSA,
    Message,
    XfrmProtocolError,
    pull_attrs,
    push_attr,
    push_message,
)

IPPROTO_ESP = 50
XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL = 0, 1
MODES = {"transport": XFRM_MODE_TRANSPORT, "tunnel": XFRM_MODE_TUNNEL}
XFRM_STATE_ESN = 128
XFRM_INF = 0xFFFFFFFFFFFFFFFF
UDP_ENCAP_ESPINUDP = 2

# enum xfrm_attr_type_t
XFRMA_ALG_AUTH, XFRMA_ALG_CRYPT, XFRMA_ENCAP, XFRMA_SA = 1, 2, 4, 6
XFRMA_LTIME_VAL, XFRMA_REPLAY_VAL, XFRMA_REPLAY_THRESH, XFRMA_ETIMER_THRESH = 9, 10, 11, 12
XFRMA_SRCADDR = 13
XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC = 18, 20
XFRMA_REPLAY_ESN_VAL = 23
XFRMA_IF_ID = 31

# aevent flags (enum xfrm_ae_ftype_t)
XFRM_AE_RVAL, XFRM_AE_LVAL, XFRM_AE_RTHR, XFRM_AE_ETHR = 1, 2, 4, 8
XFRM_AE_CR, XFRM_AE_CE, XFRM_AE_CU = 16, 32, 64

#: struct xfrm_selector (56 bytes): addresses, ports and masks, family, prefix lengths,
#: proto, ifindex, user
SELECTOR = struct.Struct("=16s16sHHHHHBBB3xii")
#: struct xfrm_id: daddr, spi (network order), proto
_ID = struct.Struct("=16s4sB3x")
_LIFETIME_CFG = struct.Struct("=8Q")
_LIFETIME_CUR = struct.Struct("=4Q")
_STATS = struct.Struct("=3I")
#: struct xfrm_usersa_info after selector, id, saddr, lifetimes and stats: seq, reqid,
#: family, mode, replay_window, flags (224 bytes in all)
_SA_TAIL = struct.Struct("=IIHBBB7x")
_USERSA_INFO_LEN = (SELECTOR.size + _ID.size + 16 + _LIFETIME_CFG.size + _LIFETIME_CUR.size
                    + _STATS.size + _SA_TAIL.size)
#: struct xfrm_usersa_id: daddr, spi, family, proto
_USERSA_ID = struct.Struct("=16s4sHB1x")
#: struct xfrm_aevent_id: sa_id, saddr, flags, reqid
_AEVENT_ID = struct.Struct("=24s16sII")
#: struct xfrm_replay_state_esn without its bitmap: bmp_len, oseq, seq, oseq_hi, seq_hi,
#: replay_window
_REPLAY_ESN = struct.Struct("=6I")
_ENCAP = struct.Struct("=HHH2x16s")  # type, sport, dport (network order), oa
_ALG_NAME = 64
_U32 = struct.Struct("=I")
_LOW = 0xFFFFFFFF


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def packed(addr: str) -> bytes:
    """xfrm_address_t: 16 bytes, IPv4 in the first four."""
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def unpacked(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == socket.AF_INET else raw[:16]))


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= _ALG_NAME:
        raise ValueError(f"algorithm name longer than {_ALG_NAME - 1} bytes: {name!r}")
    return raw.ljust(_ALG_NAME, b"\0")


@dataclass(frozen=True, slots=True)
class Aead:
    """XFRMA_ALG_AEAD: e.g. rfc4106(gcm(aes)); `key` includes the 4-byte salt."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int


@dataclass(frozen=True, slots=True)
class Cipher:
    """XFRMA_ALG_CRYPT: e.g. cbc(aes)."""

    name: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Auth:
    """XFRMA_ALG_AUTH_TRUNC: e.g. hmac(sha256) truncated to 128 bits."""

    name: str
    key: bytes = field(repr=False)
    trunc_bits: int


@dataclass(frozen=True, slots=True)
class Encap:
    """XFRMA_ENCAP: ESP in UDP (RFC 3948) between these ports."""

    sport: int
    dport: int
    oa: str = "0.0.0.0"  # original address, for NAT-T transport mode checksums


@dataclass(frozen=True, slots=True)
class Replay:
    """The replay state (struct xfrm_replay_state_esn) with 64-bit counters: `out_seq` is
    the last outbound sequence number used (the next packet gets out_seq + 1), `in_seq` the
    highest inbound one accepted; `bitmap` the window's ring as 32-bit words (number n is
    bit (n - 1) mod window), or None to send none (the kernel starts with an empty one)."""

    window: int
    in_seq: int = 0
    out_seq: int = 0
    bitmap: tuple[int, ...] | None = None

    @property
    def words(self) -> int:
        return (self.window + 31) // 32


@dataclass(frozen=True, slots=True)
class Lifetime:
    """struct xfrm_lifetime_cur: what the state carried, and when it was added / last used."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0


@dataclass(frozen=True, slots=True)
class XfrmState:
    """One ESP state: from `src` to `dst` with `spi` (tunnel mode unless said otherwise)."""

    src: str
    dst: str
    spi: int
    reqid: int
    aead: Aead | None = None
    cipher: Cipher | None = None
    auth: Auth | None = None
    replay: Replay | None = None
    esn: bool = False
    encap: Encap | None = None
    if_id: int = 0
    mode: str = "tunnel"
    #: (source, destination) networks the inner packets of the state must fall in, as the
    #: kernel checks after decryption (None: any)
    selector: tuple[str, str] | None = None
    #: aevents: notify after this many packets / this many timer ticks (None: not set)
    replay_thresh: int | None = None
    etimer_thresh: int | None = None

    def __post_init__(self) -> None:
        if (self.aead is None) == (self.cipher is None):
            raise ValueError("an ESP state has either an AEAD or a cipher (with auth)")
        if self.esn and self.replay is None:
            raise ValueError("an ESN state needs its replay state")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if family_of(self.src) != family_of(self.dst):
            raise ValueError(f"state {self.src} -> {self.dst}: address families differ")


@dataclass(frozen=True, slots=True)
class StateInfo:
    """A state as the kernel reports it (XFRM_MSG_NEWSA answering GETSA, or a dump)."""

    state: XfrmState
    lifetime: Lifetime
    replay_drops: int
    integrity_failures: int


@dataclass(frozen=True, slots=True)
class AeEvent:
    """XFRM_MSG_NEWAE: a state's replay and lifetime state, in answer to GETAE or pushed to
    the aevents group (`flags` says why: XFRM_AE_CR replay threshold, XFRM_AE_CE timer,
    XFRM_AE_CU update)."""

    dst: str
    spi: int
    src: str
    reqid: int
    flags: int
    replay: Replay | None
    lifetime: Lifetime | None


def push_replay(r: Replay) -> bytes:
    if r.bitmap is not None and len(r.bitmap) != r.words:
        raise ValueError(f"a {r.window}-packet window has {r.words} bitmap words, "
                         f"not {len(r.bitmap)}")
    head = _REPLAY_ESN.pack(r.words, r.out_seq & _LOW, r.in_seq & _LOW, r.out_seq >> 32,
                            r.in_seq >> 32, r.window)
    if r.bitmap is None:
        return head
    return head + struct.pack(f"={r.words}I", *r.bitmap)


def pull_replay(raw: bytes) -> Replay:
    if len(raw) < _REPLAY_ESN.size:
        raise XfrmProtocolError("XFRMA_REPLAY_ESN_VAL shorter than its header")
    words, oseq, seq, oseq_hi, seq_hi, window = _REPLAY_ESN.unpack_from(raw)
    bitmap = None
    if len(raw) >= _REPLAY_ESN.size + 4 * words:
        bitmap = struct.unpack_from(f"={words}I", raw, _REPLAY_ESN.size)
    return Replay(window, (seq_hi << 32) | seq, (oseq_hi << 32) | oseq, bitmap)


def push_selector(src: str, dst: str) -> bytes:
    s, d = ipaddress.ip_network(src), ipaddress.ip_network(dst)
    return SELECTOR.pack(packed(str(d.network_address)), packed(str(s.network_address)),
                         0, 0, 0, 0, family_of(str(d.network_address)), d.prefixlen,
                         s.prefixlen, 0, 0, 0)


def _usersa_info(st: XfrmState) -> bytes:
    fam = family_of(st.dst)
    # None: any traffic, the policy (or the XFRM interface) selects
    sel = bytes(SELECTOR.size) if st.selector is None else push_selector(*st.selector)
    ident = _ID.pack(packed(st.dst), st.spi.to_bytes(4, "big"), IPPROTO_ESP)
    lft = _LIFETIME_CFG.pack(XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)
    tail = _SA_TAIL.pack(0, st.reqid, fam, MODES[st.mode], 0,
                         XFRM_STATE_ESN if st.esn else 0)
    return (sel + ident + packed(st.src) + lft + bytes(_LIFETIME_CUR.size)
            + bytes(_STATS.size) + tail)


def _state_attrs(st: XfrmState) -> bytes:
    out = b""
    if st.aead is not None:
        a = st.aead
        out += push_attr(XFRMA_ALG_AEAD, _name(a.name) + struct.pack(
            "=II", 8 * len(a.key), a.icv_bits) + a.key)
    if st.cipher is not None:
        c = st.cipher
        out += push_attr(XFRMA_ALG_CRYPT, _name(c.name) + _U32.pack(8 * len(c.key)) + c.key)
    if st.auth is not None:
        h = st.auth
        out += push_attr(XFRMA_ALG_AUTH_TRUNC, _name(h.name) + struct.pack(
            "=II", 8 * len(h.key), h.trunc_bits) + h.key)
    if st.encap is not None:
        e = st.encap
        out += push_attr(XFRMA_ENCAP, _ENCAP.pack(
            UDP_ENCAP_ESPINUDP, socket.htons(e.sport), socket.htons(e.dport), packed(e.oa)))
    if st.replay is not None:
        out += push_attr(XFRMA_REPLAY_ESN_VAL, push_replay(st.replay))
    if st.replay_thresh is not None:
        out += push_attr(XFRMA_REPLAY_THRESH, _U32.pack(st.replay_thresh))
    if st.etimer_thresh is not None:
        out += push_attr(XFRMA_ETIMER_THRESH, _U32.pack(st.etimer_thresh))
    if st.if_id:
        out += push_attr(XFRMA_IF_ID, _U32.pack(st.if_id))
    return out


def push_new_state(seq: int, st: XfrmState, *, update: bool = False) -> bytes:
    """XFRM_MSG_NEWSA (EEXIST if the state is there), or XFRM_MSG_UPDSA (`update`:
    replace it; ESRCH if it is not)."""
    kind = XFRM_MSG_UPDSA if update else XFRM_MSG_NEWSA
    return push_message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, _usersa_info(st) + _state_attrs(st))


def _usersa_id(dst: str, spi: int) -> bytes:
    return _USERSA_ID.pack(packed(dst), spi.to_bytes(4, "big"), family_of(dst), IPPROTO_ESP)


def push_delete_state(seq: int, dst: str, spi: int, src: str) -> bytes:
    """XFRM_MSG_DELSA for the ESP state (dst, spi); `src` as `ip xfrm state delete` sends it."""
    body = _usersa_id(dst, spi) + push_attr(XFRMA_SRCADDR, packed(src))
    return push_message(XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def push_get_state(seq: int, dst: str, spi: int, src: str) -> bytes:
    """XFRM_MSG_GETSA: the kernel answers with the state (XFRM_MSG_NEWSA) or an error."""
    body = _usersa_id(dst, spi) + push_attr(XFRMA_SRCADDR, packed(src))
    return push_message(XFRM_MSG_GETSA, NLM_F_REQUEST, seq, body)


def _aevent_id(dst: str, spi: int, src: str, flags: int, reqid: int) -> bytes:
    return _AEVENT_ID.pack(_usersa_id(dst, spi), packed(src), flags, reqid)


def push_get_ae(seq: int, dst: str, spi: int, src: str) -> bytes:
    """XFRM_MSG_GETAE: the kernel answers XFRM_MSG_NEWAE with the replay and lifetime
    state of (dst, spi)."""
    return push_message(XFRM_MSG_GETAE, NLM_F_REQUEST, seq,
                        _aevent_id(dst, spi, src, XFRM_AE_RVAL | XFRM_AE_LVAL, 0))


def push_new_ae(seq: int, dst: str, spi: int, src: str, replay: Replay | None = None, *,
                replay_thresh: int | None = None, etimer_thresh: int | None = None) -> bytes:
    """XFRM_MSG_NEWAE (with NLM_F_REPLACE, which the kernel requires): set the replay state
    — it must carry the full bitmap, of the state's own length — and/or the aevent
    thresholds of (dst, spi)."""
    flags = 0
    attrs = b""
    if replay is not None:
        if replay.bitmap is None:
            replay = Replay(replay.window, replay.in_seq, replay.out_seq,
                            (0,) * replay.words)
        attrs += push_attr(XFRMA_REPLAY_ESN_VAL, push_replay(replay))
        flags |= XFRM_AE_RVAL
    if replay_thresh is not None:
        attrs += push_attr(XFRMA_REPLAY_THRESH, _U32.pack(replay_thresh))
        flags |= XFRM_AE_RTHR
    if etimer_thresh is not None:
        attrs += push_attr(XFRMA_ETIMER_THRESH, _U32.pack(etimer_thresh))
        flags |= XFRM_AE_ETHR
    if not attrs:
        raise ValueError("XFRM_MSG_NEWAE needs a replay state or a threshold")
    return push_message(XFRM_MSG_NEWAE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE, seq,
                        _aevent_id(dst, spi, src, flags, 0) + attrs)


def _pull_lifetime(raw: bytes) -> Lifetime:
    return Lifetime(*_LIFETIME_CUR.unpack_from(raw))


def pull_state(msg: Message) -> StateInfo:
    """A state the kernel sent (XFRM_MSG_NEWSA / UPDSA); XfrmProtocolError if it does not
    read as one."""
    body = msg.body
    if msg.kind not in (XFRM_MSG_NEWSA, XFRM_MSG_UPDSA) or len(body) < _USERSA_INFO_LEN:
        raise XfrmProtocolError(f"not an XFRM state: type {msg.kind}, {len(body)} bytes")
    off = SELECTOR.size
    daddr, spi, _ = _ID.unpack_from(body, off)
    off += _ID.size
    saddr = body[off:off + 16]
    off += 16 + _LIFETIME_CFG.size
    cur = _pull_lifetime(body[off:off + _LIFETIME_CUR.size])
    off += _LIFETIME_CUR.size
    _, replay_drops, integrity_failures = _STATS.unpack_from(body, off)
    off += _STATS.size
    _, reqid, fam, mode, _, flags = _SA_TAIL.unpack_from(body, off)
    attrs = pull_attrs(body, _USERSA_INFO_LEN)
    aead = cipher = auth = None
    if (raw := attrs.get(XFRMA_ALG_AEAD)) is not None:
        key_bits, icv = struct.unpack_from("=II", raw, _ALG_NAME)
        aead = Aead(_alg_name(raw), raw[_ALG_NAME + 8:_ALG_NAME + 8 + key_bits // 8], icv)
    if (raw := attrs.get(XFRMA_ALG_CRYPT)) is not None:
        (key_bits,) = _U32.unpack_from(raw, _ALG_NAME)
        cipher = Cipher(_alg_name(raw), raw[_ALG_NAME + 4:_ALG_NAME + 4 + key_bits // 8])
    if (raw := attrs.get(XFRMA_ALG_AUTH_TRUNC)) is not None:
        key_bits, trunc = struct.unpack_from("=II", raw, _ALG_NAME)
        auth = Auth(_alg_name(raw), raw[_ALG_NAME + 8:_ALG_NAME + 8 + key_bits // 8], trunc)
    encap = None
    if (raw := attrs.get(XFRMA_ENCAP)) is not None:
        _, sport, dport, oa = _ENCAP.unpack_from(raw)
        encap = Encap(socket.ntohs(sport), socket.ntohs(dport), unpacked(oa, fam))
    replay = pull_replay(attrs[XFRMA_REPLAY_ESN_VAL]) if XFRMA_REPLAY_ESN_VAL in attrs \
        else None
    if_id = _U32.unpack(attrs[XFRMA_IF_ID][:4])[0] if XFRMA_IF_ID in attrs else 0
    modes = {v: k for k, v in MODES.items()}
    try:
        state = XfrmState(
            src=unpacked(saddr, fam), dst=unpacked(daddr, fam),
            spi=int.from_bytes(spi, "big"), reqid=reqid, aead=aead, cipher=cipher,
            auth=auth, replay=replay, esn=bool(flags & XFRM_STATE_ESN), encap=encap,
            if_id=if_id, mode=modes.get(mode, "tunnel"))
    except ValueError as e:
        raise XfrmProtocolError(f"XFRM state does not read as ESP: {e}") from None
    return StateInfo(state, cur, replay_drops, integrity_failures)


@dataclass(frozen=True, slots=True)
class DeletedState:
    """XFRM_MSG_DELSA as the kernel multicasts it (XFRMNLGRP_SA) once a state is gone: its
    replay state then is final — no packet can use the state any more."""

    dst: str
    spi: int
    replay: Replay | None
    lifetime: Lifetime


def pull_deleted_state(msg: Message) -> DeletedState:
    """The notification of a deleted state: xfrm_usersa_id, then XFRMA_SA (the state's
    xfrm_usersa_info) and the state's attributes (net/xfrm/xfrm_user.c, xfrm_notify_sa)."""
    body = msg.body
    if msg.kind != XFRM_MSG_DELSA or len(body) < _USERSA_ID.size:
        raise XfrmProtocolError(f"not a deleted-state notification: type {msg.kind}")
    daddr, spi, fam, _ = _USERSA_ID.unpack_from(body)
    attrs = pull_attrs(body, _USERSA_ID.size)
    info = attrs.get(XFRMA_SA, b"")
    off = SELECTOR.size + _ID.size + 16 + _LIFETIME_CFG.size
    lifetime = _pull_lifetime(info[off:off + _LIFETIME_CUR.size]) \
        if len(info) >= off + _LIFETIME_CUR.size else Lifetime()
    replay = pull_replay(attrs[XFRMA_REPLAY_ESN_VAL]) if XFRMA_REPLAY_ESN_VAL in attrs \
        else None
    return DeletedState(unpacked(daddr, fam), int.from_bytes(spi, "big"), replay, lifetime)


def _alg_name(raw: bytes) -> str:
    return raw[:_ALG_NAME].split(b"\0", 1)[0].decode(errors="replace")


def pull_ae(msg: Message) -> AeEvent:
    """An XFRM_MSG_NEWAE (GETAE's answer or an aevent)."""
    if msg.kind != XFRM_MSG_NEWAE or len(msg.body) < _AEVENT_ID.size:
        raise XfrmProtocolError(f"not an XFRM aevent: type {msg.kind}, {len(msg.body)} bytes")
    sa_id, saddr, flags, reqid = _AEVENT_ID.unpack_from(msg.body)
    daddr, spi, fam, _ = _USERSA_ID.unpack(sa_id)
    attrs = pull_attrs(msg.body, _AEVENT_ID.size)
    replay = pull_replay(attrs[XFRMA_REPLAY_ESN_VAL]) if XFRMA_REPLAY_ESN_VAL in attrs \
        else None
    lifetime = _pull_lifetime(attrs[XFRMA_LTIME_VAL]) if XFRMA_LTIME_VAL in attrs else None
    return AeEvent(unpacked(daddr, fam), int.from_bytes(spi, "big"), unpacked(saddr, fam),
                   reqid, flags, replay, lifetime)


# -- the window: the project's bitmap (bit i: highest - i received, cluster.esp.replay)
#    against the kernel's ring (number n at bit (n - 1) mod window)

def ring_from_window(highest: int, bitmap: int, window: int) -> tuple[int, ...]:
    words = [0] * ((window + 31) // 32)
    for i in range(min(window, highest)):
        if bitmap >> i & 1:
            bit = (highest - i - 1) % window
            words[bit >> 5] |= 1 << (bit & 31)
    return tuple(words)


def window_from_ring(highest: int, ring: tuple[int, ...], window: int) -> int:
    bitmap = 0
    for i in range(min(window, highest)):
        bit = (highest - i - 1) % window
        if ring[bit >> 5] >> (bit & 31) & 1:
            bitmap |= 1 << i
    return bitmap

