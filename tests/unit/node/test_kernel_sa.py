"""The kernel data plane's sans-I/O part (cluster.node.kernel_sa): what a Child SA record
becomes as XFRM states and policies, the counters in the kernel's form, the send margin;
and the XFRM messages the plane sends for them, read back with the codec's own parser."""

from __future__ import annotations

import random
import time

import pytest

from cluster.config import ConfigError, parse_config
from cluster.esp import SaCounters
from cluster.esp.suites import suite
from cluster.node import kernel_sa as ksa
from cluster.node.config import node_config
from cluster.store import ChildSaRecord
from cluster.xfrm import Encap, Replay
from cluster.xfrm.state import (
    XFRM_MSG_DELSA,
    XFRMA_REPLAY_ESN_VAL,
    XFRMA_SA,
    _usersa_id,
    _usersa_info,
    pull_deleted_state,
    pull_state,
    push_new_state,
    push_replay,
)
from cluster.xfrm.wire import pull_messages, push_attr, push_message

VIP = "203.0.113.10"


def record(encr: str = "aes128gcm16", integ: str | None = None, **kw: object) -> ChildSaRecord:
    s = suite(encr, integ)
    fields: dict[str, object] = dict(
        spi_in=0xC1000001, spi_out=0xCE000001, ike_sa_id="ab" * 16, encr=encr, integ=integ,
        esn=True, enc_key_in=b"\x01" * s.enc_key_len, integ_key_in=b"\x03" * s.integ_key_len,
        enc_key_out=b"\x02" * s.enc_key_len, integ_key_out=b"\x04" * s.integ_key_len,
        ts_local=["10.20.0.0/24"], ts_remote=["10.77.0.2/32"], peer_addr="198.51.100.7",
        peer_port=40001, udp_encap=True, virtual_ip="10.77.0.2", identity="client-1",
        created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)
    fields.update(kw)
    return ChildSaRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("encr", "integ", "names"), [
    ("aes128gcm16", None, ("rfc4106(gcm(aes))", 128, None)),
    ("aes256gcm8", None, ("rfc4106(gcm(aes))", 64, None)),
    ("chacha20poly1305", None, ("rfc7539esp(chacha20,poly1305)", 128, None)),
    ("aes256", "sha256", ("cbc(aes)", 128, "hmac(sha256)")),
    ("aes128ctr", "sha1", ("rfc3686(ctr(aes))", 96, "hmac(sha1)")),
    ("3des", "sha512", ("cbc(des3_ede)", 256, "hmac(sha512)")),
    ("aes128", "aescmac", ("cbc(aes)", 96, "cmac(aes)")),
])
def test_kernel_algorithm_names_and_keys(encr: str, integ: str | None,
                                         names: tuple[str, int, str | None]) -> None:
    r = record(encr, integ)
    aead, cipher, auth = ksa.algorithms(r, inbound=True)
    name, icv_bits, auth_name = names
    if auth_name is None:
        assert aead is not None and cipher is None and auth is None
        assert (aead.name, aead.icv_bits, aead.key) == (name, icv_bits, r.enc_key_in)
    else:
        assert aead is None and cipher is not None and auth is not None
        assert (cipher.name, cipher.key) == (name, r.enc_key_in)
        assert (auth.name, auth.trunc_bits, auth.key) == (auth_name, icv_bits, r.integ_key_in)
    _, out_cipher, out_auth = ksa.algorithms(r, inbound=False)
    assert (out_cipher or aead) is not None
    if out_auth is not None:
        assert out_auth.key == r.integ_key_out


def test_unknown_transform_is_a_clear_error() -> None:
    r = record()
    object.__setattr__(r, "encr", "rc4")
    with pytest.raises(ksa.KernelSuiteError, match="unknown ESP encryption 'rc4'"):
        ksa.algorithms(r, inbound=True)


def test_inbound_and_outbound_states_round_trip_through_the_codec() -> None:
    r = record()
    counters = SaCounters(0, 40, 0b1011)
    inbound = ksa.inbound_state(r, vip=VIP, natt_port=4500, window=128, counters=counters,
                                replay_thresh=1024)
    assert (inbound.src, inbound.dst, inbound.spi) == ("198.51.100.7", VIP, r.spi_in)
    assert inbound.encap == Encap(40001, 4500) and inbound.if_id == ksa.IF_ID
    assert inbound.selector == ("10.77.0.2/32", "0.0.0.0/0")
    outbound = ksa.outbound_state(r, ("198.51.100.7", 40001), vip=VIP, natt_port=4500,
                                  window=128, out_seq=5000, replay_thresh=4)
    assert (outbound.src, outbound.dst, outbound.spi) == (VIP, "198.51.100.7", r.spi_out)
    assert outbound.encap == Encap(4500, 40001) and outbound.reqid == inbound.reqid
    # counters come by packet threshold (D) and by GETAE every T: no timer threshold
    assert inbound.etimer_thresh is None and outbound.etimer_thresh is None
    for st in (inbound, outbound):
        (msg,) = pull_messages(push_new_state(1, st))
        got = pull_state(msg).state
        # what the kernel echoes has no thresholds; the selector goes in the header
        assert got.replay == st.replay and got.encap == st.encap and got.if_id == st.if_id
        assert (got.src, got.dst, got.spi, got.reqid, got.esn) == (
            st.src, st.dst, st.spi, st.reqid, st.esn)
    sel = push_new_state(1, inbound)[16:16 + 56]
    assert sel[16:20] == bytes([10, 77, 0, 2]) and sel[43] == 32  # saddr, prefixlen_s


def test_no_selector_where_one_cannot_say_it() -> None:
    two = record(ts_remote=["10.77.0.2/32", "10.88.0.0/24"])
    dual = record(virtual_ip6="fd00:77::2", ts_remote=["10.77.0.2/32"])
    for r in (two, dual):
        assert ksa.inbound_state(r, vip=VIP, natt_port=4500, window=64).selector is None


def test_outbound_policies_per_client_address() -> None:
    peer = ("198.51.100.7", 40001)
    dual = record(virtual_ip6="fd00:77::2")
    assert [(p.src, p.dst, p.direction, p.template.reqid) for p in
            ksa.outbound_policies(dual, peer, vip=VIP)] == [
        ("0.0.0.0/0", "10.77.0.2/32", "out", dual.spi_in),
        ("::/0", "fd00:77::2/128", "out", dual.spi_in)]
    site = record(virtual_ip=None, ts_remote=["0.0.0.0/0", "10.88.0.0/24"])
    assert ksa.client_networks(site) == ["10.88.0.0/24"]  # never a /0
    assert {(p.direction, p.src) for p in ksa.interface_policies()} == {
        ("in", "0.0.0.0/0"), ("fwd", "0.0.0.0/0"), ("in", "::/0"), ("fwd", "::/0")}


def test_counters_in_the_kernels_ring_and_back() -> None:
    rng = random.Random(5)
    for window in (32, 128, 1024):
        for _ in range(50):
            highest = rng.randrange(0, 5000)
            bitmap = rng.getrandbits(min(window, highest)) if highest else 0
            replay = ksa.replay_of(SaCounters(7, highest, bitmap), window)
            assert replay.out_seq == 7 and replay.window == window
            assert ksa.inbound_counters(replay) == (highest, bitmap)


def test_send_margin() -> None:
    margin = ksa.stop_margin(1024 * 1024)
    assert margin == 512 * 1024
    assert ksa.aevent_threshold(1024, margin) == 1024
    assert ksa.aevent_threshold(1024, 16) == 2
    assert ksa.may_send(100, 100 + margin + 1, margin)
    assert not ksa.may_send(100, 100 + margin, margin)
    assert not ksa.may_send(0, 0, margin)  # limit 0: not sending


def test_deleted_state_notification_carries_the_final_counter() -> None:
    r = record()
    st = ksa.outbound_state(r, ("198.51.100.7", 40001), vip=VIP, natt_port=4500, window=64,
                            out_seq=0)
    final = Replay(64, 0, 123456789012, (0, 0))
    body = (_usersa_id(st.dst, st.spi) + push_attr(XFRMA_SA, _usersa_info(st))
            + push_attr(XFRMA_REPLAY_ESN_VAL, push_replay(final)))
    (msg,) = pull_messages(push_message(XFRM_MSG_DELSA, 0, 0, body))
    deleted = pull_deleted_state(msg)
    assert (deleted.dst, deleted.spi) == ("198.51.100.7", r.spi_out)
    assert deleted.replay is not None and deleted.replay.out_seq == 123456789012


def test_dataplane_option() -> None:
    base = '[node]\nid = "n1"\nvip = "203.0.113.10"\naddress = "10.30.0.11"\n'
    assert node_config(parse_config(base)).node.dataplane == "userspace"
    for value in ("kernel", "auto"):
        cfg = node_config(parse_config(base + f'dataplane = "{value}"\n'))
        assert cfg.node.dataplane == value
    with pytest.raises(ConfigError, match="dataplane must be one of auto, kernel, userspace"):
        node_config(parse_config(base + 'dataplane = "dpdk"\n'))
