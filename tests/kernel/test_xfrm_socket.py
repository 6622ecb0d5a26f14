"""cluster.xfrm against the VM's kernel: states installed with counters carry ESP between
two namespaces, GETAE reads the counters, NEWAE sets an inbound window, aevents arrive, and
refusals come back typed."""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from cluster.host import inside_netns
from cluster.xfrm import Aead, KernelError, Replay, Template, XfrmPolicy, XfrmState
from cluster.xfrm.kernel import Aevents, XfrmSocket
from cluster.xfrm.state import XFRM_AE_CR, window_from_ring

A, B = "10.9.0.1", "10.9.0.2"
SPI = 0x0C0FFEE0
KEY = bytes(range(1, 21))
WINDOW = 128


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces on one veth link: (sender, receiver)."""
    subprocess.run(["modprobe", "-a", "xfrm_user", "esp4"], check=True)
    na, nb = "xfrm-a", "xfrm-b"
    for ns in (na, nb):
        _ip("netns", "add", ns)
    try:
        _ip("link", "add", "va", "netns", na, "type", "veth", "peer", "vb", "netns", nb)
        for ns, dev, addr in ((na, "va", A), (nb, "vb", B)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        yield na, nb
    finally:
        for ns in (na, nb):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _state(src: str, dst: str, replay: Replay) -> XfrmState:
    return XfrmState(src=src, dst=dst, spi=SPI, reqid=1,
                     aead=Aead("rfc4106(gcm(aes))", KEY, 128), replay=replay, esn=True)


def _send(ns: str, count: int) -> None:
    with inside_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"x" * 100, (B, 9))
    time.sleep(0.3)


def test_states_installed_with_counters_carry_esp(pair: tuple[str, str]) -> None:
    na, nb = pair
    with inside_netns(na):
        xa = XfrmSocket()
    with inside_netns(nb):
        xb = XfrmSocket()
        events = Aevents()
    try:
        # the sender starts at 1000, as a node taking over with checkpoint + jump does
        xa.add_state(_state(A, B, Replay(WINDOW, out_seq=1000)))
        xa.add_policy(XfrmPolicy(f"{A}/32", f"{B}/32", "out", Template(A, B, 1)))
        xb.add_state(_state(A, B, Replay(WINDOW)))
        xb.set_ae(B, SPI, A, replay_thresh=2)
        _send(na, 5)

        got = xb.get_ae(B, SPI, A)
        assert got.replay is not None and got.replay.in_seq == 1005
        assert got.replay.bitmap is not None
        assert window_from_ring(1005, got.replay.bitmap, WINDOW) == 0b11111
        sent = xa.get_ae(B, SPI, A)
        assert sent.replay is not None and sent.replay.out_seq == 1005
        assert xb.get_state(B, SPI, A).lifetime.packets == 5

        # the replay threshold (2 packets) pushed at least one aevent to the subscriber
        assert select.select([events], [], [], 2.0)[0]
        pushed = events.read()
        assert any(e.spi == SPI and e.flags & XFRM_AE_CR for e in pushed), pushed

        # a restored window that has seen the sender's next numbers (1006..1008): replays.
        # (Far below the window an ESN receiver infers the next subspace and counts an
        # integrity failure instead: RFC 4303 Appendix A.)
        xb.set_ae(B, SPI, A, Replay(WINDOW, in_seq=1010, bitmap=(0xFFFFFFFF,) * 4))
        _send(na, 3)
        info = xb.get_state(B, SPI, A)
        assert info.replay_drops == 3 and info.integrity_failures == 0
        assert info.state.replay is not None and info.state.replay.in_seq == 1010

        with pytest.raises(KernelError) as e:
            xb.add_state(_state(A, B, Replay(WINDOW)))
        assert e.value.exists and "add state spi 0c0ffee0" in str(e.value)
        assert xb.delete_state(B, SPI, A) is True
        assert xb.delete_state(B, SPI, A) is False
        with pytest.raises(KernelError) as e:
            xb.get_ae(B, SPI, A)
        assert e.value.missing
    finally:
        for s in (xa, xb, events):
            s.close()
