"""cluster.xfrm's messages against what `ip xfrm` sent for the same state, byte for byte
(fixtures/README.md says how they were captured), and its parsers against the kernel's
answers."""

from __future__ import annotations

import dataclasses
import errno
import re
import struct
from pathlib import Path

import pytest

from cluster.xfrm import (
    Aead,
    Auth,
    Cipher,
    Encap,
    KernelError,
    Replay,
    Template,
    XfrmPolicy,
    XfrmProtocolError,
    XfrmState,
    wire,
)
from cluster.xfrm import policy as pol
from cluster.xfrm import state as sa

FIXTURES = Path(__file__).parent / "fixtures"
# linux/netlink.h and linux/xfrm.h, written out here so the fixtures are read independently
# of the module under test
TYPES = {"NLMSG_ERROR": 2, "XFRM_MSG_NEWSA": 16, "XFRM_MSG_DELSA": 17, "XFRM_MSG_GETSA": 18,
         "XFRM_MSG_NEWPOLICY": 19, "XFRM_MSG_DELPOLICY": 20}
FLAGS = {"NLM_F_REQUEST": 1, "NLM_F_MULTI": 2, "NLM_F_ACK": 4, "NLM_F_CAPPED": 0x100,
         "NLM_F_ACK_TLVS": 0x200}
_HEADER = (r"\{nlmsg_len=(\d+), nlmsg_type=(\w+), nlmsg_flags=([\w|]+), nlmsg_seq=(\d+), "
           r"nlmsg_pid=(\d+)\}")
_HEX = r'"((?:\\x[0-9a-f]{2})*)"'
MESSAGE = re.compile(r"iov_base=\[" + _HEADER + ", " + _HEX)
ERROR = re.compile(r"iov_base=\[" + _HEADER + r", \{error=-(\w+), msg=\[" + _HEADER + ", "
                   + _HEX)
ACK = re.compile(r"iov_base=\[" + _HEADER + r", \{error=0, msg=" + _HEADER + r"\}")

AEAD_KEY = bytes(range(20))
ENC_KEY = bytes(range(0x20, 0x30))
AUTH_KEY = bytes(range(0x30, 0x50))


def _flags(text: str) -> int:
    return 0 if text == "0" else sum(FLAGS[f] for f in text.split("|"))


def _header(length: str, kind: str, flags: str, seq: str, pid: str) -> bytes:
    return struct.pack("=IHHII", int(length), TYPES[kind], _flags(flags), int(seq), int(pid))


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def messages(name: str, call: str) -> list[bytes]:
    """The netlink messages of every `call` (sendmsg / recvmsg) in fixtures/`name`."""
    out = []
    for line in (FIXTURES / name).read_text().splitlines():
        if f" {call}(" not in line:
            continue
        if m := ERROR.search(line):
            g = m.groups()
            body = struct.pack("=i", -getattr(errno, g[5])) + _header(*g[6:11]) + _hex(g[11])
            out.append(_header(*g[:5]) + body)
        elif m := ACK.search(line):
            g = m.groups()
            out.append(_header(*g[:5]) + struct.pack("=i", 0) + _header(*g[5:10]))
        elif m := MESSAGE.search(line):
            g = m.groups()
            out.append(_header(*g[:5]) + _hex(g[5]))
    return out


def sent(name: str) -> tuple[int, bytes]:
    (msg,) = messages(name, "sendmsg")
    assert len(msg) == struct.unpack_from("=I", msg)[0]
    return struct.unpack_from("=I", msg, 8)[0], msg


INBOUND = XfrmState(
    src="198.51.100.2", dst="192.0.2.1", spi=0xC0FFEE01, reqid=7,
    aead=Aead("rfc4106(gcm(aes))", AEAD_KEY, 128),
    replay=Replay(window=128, in_seq=0x10, out_seq=0x20), esn=True,
    encap=Encap(4500, 4500), if_id=5)
OUTBOUND = XfrmState(
    src="192.0.2.1", dst="198.51.100.2", spi=0xC0FFEE02, reqid=7,
    cipher=Cipher("cbc(aes)", ENC_KEY), auth=Auth("hmac(sha256)", AUTH_KEY, 128),
    replay=Replay(window=32, out_seq=0x1000), esn=True)


def test_aead_state_with_esn_counters_encap_and_if_id_is_what_ip_sends() -> None:
    seq, msg = sent("state-aead.strace")
    assert sa.push_new_state(seq, INBOUND) == msg


def test_cipher_and_auth_state_is_what_ip_sends() -> None:
    seq, msg = sent("state-cbc.strace")
    assert sa.push_new_state(seq, OUTBOUND) == msg


@pytest.mark.parametrize(("name", "policy"), [
    ("policy-in.strace", XfrmPolicy("10.1.0.5/32", "0.0.0.0/0", "in",
                                    Template("198.51.100.2", "192.0.2.1", 7), if_id=5)),
    ("policy-out.strace", XfrmPolicy("0.0.0.0/0", "10.1.0.5/32", "out",
                                     Template("192.0.2.1", "198.51.100.2", 7), if_id=5)),
])
def test_policy_is_what_ip_sends(name: str, policy: XfrmPolicy) -> None:
    seq, msg = sent(name)
    assert pol.push_new_policy(seq, policy) == msg


@pytest.mark.parametrize(("name", "policy"), [
    ("policy-in.strace", XfrmPolicy("10.1.0.5/32", "0.0.0.0/0", "in",
                                    Template("198.51.100.2", "192.0.2.1", 7), if_id=5)),
    ("policy-out.strace", XfrmPolicy("0.0.0.0/0", "10.1.0.5/32", "out",
                                     Template("192.0.2.1", "198.51.100.2", 7), if_id=5)),
])
def test_a_policy_as_ip_wrote_it_reads_back(name: str, policy: XfrmPolicy) -> None:
    # a dump answers with the same struct xfrm_userpolicy_info and attributes
    (msg,) = wire.pull_messages(sent(name)[1])
    assert pol.pull_policy(msg) == policy


def test_a_policy_round_trips_and_other_messages_are_refused() -> None:
    p = XfrmPolicy("::/0", "2001:db8::7/128", "out", Template("2001:db8::1", "2001:db8::2", 9),
                   if_id=0x1C5C, priority=3)
    (msg,) = wire.pull_messages(pol.push_new_policy(1, p, update=True))
    assert pol.pull_policy(msg) == p
    (other,) = wire.pull_messages(sent("state-aead.strace")[1])
    with pytest.raises(XfrmProtocolError):
        pol.pull_policy(other)
    with pytest.raises(XfrmProtocolError):
        pol.pull_policy(dataclasses.replace(msg, body=msg.body[:40]))


def test_requests_are_what_ip_sends() -> None:
    seq, msg = sent("state-delete.strace")
    assert sa.push_delete_state(seq, "198.51.100.2", 0xC0FFEE02, "192.0.2.1") == msg
    seq, msg = sent("state-get.strace")
    assert sa.push_get_state(seq, "192.0.2.1", 0xC0FFEE01, "198.51.100.2") == msg
    seq, msg = sent("policy-delete.strace")
    assert pol.push_delete_policy(seq, "0.0.0.0/0", "10.1.0.5/32", "out", if_id=5) == msg


def test_the_kernels_state_reads_back_with_its_counters() -> None:
    answers = [m for m in messages("state-get.strace", "recvmsg")
               if struct.unpack_from("=H", m, 4)[0] == 16]
    (raw,) = answers
    (msg,) = wire.pull_messages(raw)
    info = sa.pull_state(msg)
    # the kernel answers with the whole (empty) window
    assert info.state == dataclasses.replace(
        INBOUND, replay=Replay(128, in_seq=0x10, out_seq=0x20, bitmap=(0, 0, 0, 0)))
    assert (info.lifetime.packets, info.replay_drops, info.integrity_failures) == (0, 0, 0)


def test_a_refusal_is_a_typed_error_naming_the_request() -> None:
    (raw,) = messages("state-delete-missing.strace", "recvmsg")
    (msg,) = wire.pull_messages(raw)
    err = wire.error_of(msg)
    assert isinstance(err, KernelError)
    assert (err.errno, err.kind, err.missing) == (errno.ESRCH, wire.XFRM_MSG_DELSA, True)
    assert "XFRM_MSG_DELSA refused: No such process" in str(err)


def test_an_acknowledgement_is_no_error() -> None:
    (raw,) = [m for m in messages("state-aead.strace", "recvmsg") if len(m) == 36]
    (msg,) = wire.pull_messages(raw)
    assert wire.error_of(msg) is None


def test_extended_ack_text_is_kept() -> None:
    request = sa.push_get_ae(9, "192.0.2.1", 1, "198.51.100.2")
    text = wire.push_attr(wire.NLMSGERR_ATTR_MSG, b"Invalid replay state\0")
    raw = wire.push_message(wire.NLMSG_ERROR, wire.NLM_F_CAPPED | wire.NLM_F_ACK_TLVS, 9,
                            struct.pack("=i", -errno.EINVAL) + request[:16] + text)
    err = wire.error_of(wire.pull_messages(raw)[0])
    assert err is not None and err.detail == "Invalid replay state"
    assert err.errno == errno.EINVAL and not err.missing


def test_new_ae_carries_the_whole_window_and_the_replace_flag() -> None:
    replay = Replay(window=64, in_seq=(1 << 32) + 5, out_seq=(2 << 32) + 7)
    raw = sa.push_new_ae(3, "192.0.2.1", 0xC0FFEE01, "198.51.100.2", replay,
                         replay_thresh=100, etimer_thresh=25)
    (msg,) = wire.pull_messages(raw)
    assert msg.flags & wire.NLM_F_REPLACE
    ev = sa.pull_ae(wire.Message(wire.XFRM_MSG_NEWAE, 0, 3, 0, msg.body))
    assert ev.replay == Replay(64, (1 << 32) + 5, (2 << 32) + 7, (0, 0))
    assert ev.flags == sa.XFRM_AE_RVAL | sa.XFRM_AE_RTHR | sa.XFRM_AE_ETHR
    assert (ev.dst, ev.spi, ev.src) == ("192.0.2.1", 0xC0FFEE01, "198.51.100.2")
    with pytest.raises(ValueError):
        sa.push_new_ae(3, "192.0.2.1", 1, "198.51.100.2")


def _attrs(raw: bytes, off: int) -> dict[int, bytes]:
    """Netlink attributes from `off` on, read here without the module's parser."""
    out = {}
    while off + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, off)
        out[kind] = raw[off + 4:off + length]
        off += (length + 3) & ~3
    return out


# linux/xfrm.h: XFRMA_REPLAY_THRESH, XFRMA_ETIMER_THRESH; sizeof(struct xfrm_aevent_id)
REPLAY_THRESH, ETIMER_THRESH, AEVENT_ID_LEN = 11, 12, 48


def test_thresholds_are_u32_attributes_of_new_ae_and_new_sa() -> None:
    raw = sa.push_new_ae(3, "192.0.2.1", 0xC0FFEE01, "198.51.100.2", etimer_thresh=25)
    attrs = _attrs(raw, 16 + AEVENT_ID_LEN)
    assert attrs == {ETIMER_THRESH: struct.pack("=I", 25)}  # the timer alone, no replay
    (msg,) = wire.pull_messages(raw)
    assert sa.pull_ae(msg).flags == sa.XFRM_AE_ETHR
    raw = sa.push_new_ae(3, "192.0.2.1", 0xC0FFEE01, "198.51.100.2", replay_thresh=100,
                         etimer_thresh=25)
    attrs = _attrs(raw, 16 + AEVENT_ID_LEN)
    assert attrs[REPLAY_THRESH] == struct.pack("=I", 100)
    assert attrs[ETIMER_THRESH] == struct.pack("=I", 25)
    # a state installed with both thresholds; the fixture's bytes come before them
    seq, fixture = sent("state-aead.strace")
    raw = sa.push_new_state(seq, dataclasses.replace(INBOUND, replay_thresh=100,
                                                     etimer_thresh=25))
    attrs = _attrs(raw, 16 + sa._USERSA_INFO_LEN)
    assert attrs[REPLAY_THRESH] == struct.pack("=I", 100)
    assert attrs[ETIMER_THRESH] == struct.pack("=I", 25)
    assert set(attrs) - {REPLAY_THRESH, ETIMER_THRESH} == set(
        _attrs(fixture, 16 + sa._USERSA_INFO_LEN))


def test_window_and_ring_convert_both_ways() -> None:
    window = 128
    for highest in (1, 5, 127, 128, 129, 1000, (1 << 32) + 3):
        bitmap = 0b1011 | (1 << min(window, highest) - 1) if highest > 4 else 1
        bitmap &= (1 << min(window, highest)) - 1
        ring = sa.ring_from_window(highest, bitmap, window)
        assert sa.window_from_ring(highest, ring, window) == bitmap
        # number n is bit (n - 1) mod window of the ring
        assert ring[(highest - 1) % window >> 5] >> ((highest - 1) % window & 31) & 1


def test_truncated_answers_are_protocol_errors() -> None:
    assert wire.pull_messages(b"\x10\x00\x00\x00") == []  # less than a header: nothing
    with pytest.raises(XfrmProtocolError):  # a length past the datagram's end
        wire.pull_messages(struct.pack("=IHHII", 64, 16, 0, 1, 0) + bytes(8))


def test_attribute_overrunning_its_message_is_a_protocol_error() -> None:
    with pytest.raises(XfrmProtocolError):
        wire.pull_attrs(struct.pack("=HH", 40, 23) + bytes(8))
    with pytest.raises(XfrmProtocolError):
        sa.pull_state(wire.Message(wire.XFRM_MSG_NEWSA, 0, 1, 0, bytes(100)))


def test_states_that_cannot_be_esp_are_refused() -> None:
    with pytest.raises(ValueError, match="either an AEAD"):
        XfrmState("192.0.2.1", "198.51.100.2", 1, 1)
    with pytest.raises(ValueError, match="needs its replay state"):
        XfrmState("192.0.2.1", "198.51.100.2", 1, 1, aead=INBOUND.aead, esn=True)
    with pytest.raises(ValueError, match="families differ"):
        XfrmState("192.0.2.1", "2001:db8::1", 1, 1, aead=INBOUND.aead)
    with pytest.raises(ValueError, match="bitmap words"):
        sa.push_replay(Replay(64, bitmap=(0,)))
