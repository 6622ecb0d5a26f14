"""The one socket wrapper: XFRM requests to the kernel, and the aevents subscription.

`XfrmSocket` sends a message built by cluster.xfrm.state / policy and reads its answer on a
NETLINK_XFRM socket of its own; a refusal is a `KernelError` carrying the kernel's errno,
the request that caused it and the kernel's extended-ack text. `Aevents` is a second socket
bound to XFRMNLGRP_AEVENTS: the kernel pushes a state's replay state there when its
thresholds (XFRMA_REPLAY_THRESH packets, XFRMA_ETIMER_THRESH timer) are crossed.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar

from cluster.xfrm import policy as pol
from cluster.xfrm import state as sa
from cluster.xfrm.wire import (
    NETLINK_EXT_ACK,
    NETLINK_XFRM,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    XFRM_MSG_DELSA,
    XFRM_MSG_GETPOLICY,
    XFRM_MSG_GETSA,
    XFRM_MSG_NEWAE,
    KernelError,
    Message,
    XfrmProtocolError,
    error_of,
    pull_messages,
    push_message,
)

XFRMNLGRP_SA, XFRMNLGRP_AEVENTS = 3, 5
NETLINK_ADD_MEMBERSHIP = 1
_RECV = 1 << 16
T = TypeVar("T")


def _open(timeout_s: float | None) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    with contextlib.suppress(OSError):  # kernels before 4.12: no extended acks
        s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    s.bind((0, 0))
    s.settimeout(timeout_s)
    return s



class XfrmSocket:
    """Requests to the kernel's XFRM tables, one at a time, each answered before the next.
    OSError if the kernel has no XFRM netlink (module xfrm_user missing)."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.sock = _open(timeout_s)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def request(self, build: bytes, what: str) -> Message | None:
        """Send one message and wait for its answer: None for an acknowledgement, the
        kernel's message for a request that returns one; KernelError for a refusal."""
        seq = int.from_bytes(build[8:12], "little")
        wants_ack = int.from_bytes(build[6:8], "little") & NLM_F_ACK
        self.sock.send(build)
        while True:
            for msg in pull_messages(self.sock.recv(_RECV)):
                if msg.seq != seq:
                    continue  # an answer to an earlier request that timed out
                if msg.kind == NLMSG_ERROR:
                    err = error_of(msg)
                    if err is None:
                        return None
                    raise KernelError(err.errno, err.kind, err.seq, what, err.detail)
                if msg.kind == NLMSG_DONE:
                    return None
                if not wants_ack:
                    return msg

    # -- states ----------------------------------------------------------------------------
    def add_state(self, st: sa.XfrmState, *, update: bool = False) -> None:
        self.request(sa.push_new_state(self._next(), st, update=update),
                     f"{'update' if update else 'add'} state spi {st.spi:08x} to {st.dst}")

    def delete_state(self, dst: str, spi: int, src: str, *, missing_ok: bool = True) -> bool:
        """Remove the state; False if it was not there (KernelError if not `missing_ok`)."""
        try:
            self.request(sa.push_delete_state(self._next(), dst, spi, src),
                         f"delete state spi {spi:08x} to {dst}")
        except KernelError as e:
            if missing_ok and e.missing:
                return False
            raise
        return True

    def get_state(self, dst: str, spi: int, src: str) -> sa.StateInfo:
        msg = self.request(sa.push_get_state(self._next(), dst, spi, src),
                           f"get state spi {spi:08x} to {dst}")
        if msg is None:
            raise XfrmProtocolError("GETSA answered without a state")
        return sa.pull_state(msg)

    def dump_states(self) -> list[sa.StateInfo]:
        """Every state of this network namespace (XFRM_MSG_GETSA with NLM_F_DUMP); other
        protocols' (AH, IPcomp) are left out."""
        return self._dump(XFRM_MSG_GETSA, "dump states", sa.pull_state)

    def get_ae(self, dst: str, spi: int, src: str) -> sa.AeEvent:
        msg = self.request(sa.push_get_ae(self._next(), dst, spi, src),
                           f"get replay state of spi {spi:08x} to {dst}")
        if msg is None or msg.kind != XFRM_MSG_NEWAE:
            raise XfrmProtocolError("GETAE answered without a replay state")
        return sa.pull_ae(msg)

    def set_ae(self, dst: str, spi: int, src: str, replay: sa.Replay | None = None, *,
               replay_thresh: int | None = None, etimer_thresh: int | None = None) -> None:
        self.request(sa.push_new_ae(self._next(), dst, spi, src, replay,
                                    replay_thresh=replay_thresh, etimer_thresh=etimer_thresh),
                     f"set replay state of spi {spi:08x} to {dst}")

    # -- policies --------------------------------------------------------------------------
    def add_policy(self, p: pol.XfrmPolicy, *, update: bool = True) -> None:
        self.request(pol.push_new_policy(self._next(), p, update=update),
                     f"policy {p.src} -> {p.dst} {p.direction}")

    def dump_policies(self) -> list[pol.XfrmPolicy]:
        """Every policy of this network namespace (XFRM_MSG_GETPOLICY with NLM_F_DUMP); the
        per-socket ones are not in a dump."""
        return self._dump(XFRM_MSG_GETPOLICY, "dump policies", pol.pull_policy)

    def _dump(self, kind: int, what: str, pull: Callable[[Message], T]) -> list[T]:
        """The answers to a dump request of `kind`, each parsed by `pull` (one that is not
        what `pull` reads — XfrmProtocolError — is skipped)."""
        seq = self._next()
        self.sock.send(push_message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, b""))
        out: list[T] = []
        while True:
            for msg in pull_messages(self.sock.recv(_RECV)):
                if msg.seq != seq:
                    continue
                if msg.kind == NLMSG_DONE:
                    return out
                if msg.kind == NLMSG_ERROR:
                    err = error_of(msg)
                    if err is None:
                        return out
                    raise KernelError(err.errno, err.kind, err.seq, what, err.detail)
                with contextlib.suppress(XfrmProtocolError):
                    out.append(pull(msg))

    def delete_policy(self, src: str, dst: str, direction: str, if_id: int = 0) -> bool:
        try:
            self.request(pol.push_delete_policy(self._next(), src, dst, direction, if_id),
                         f"delete policy {src} -> {dst} {direction}")
        except KernelError as e:
            if e.missing:
                return False
            raise
        return True


class Aevents:
    """The XFRMNLGRP_AEVENTS subscription, non-blocking: `fileno()` for a poll loop,
    `read()` for what arrived."""

    def __init__(self) -> None:
        self.sock = _open(None)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, XFRMNLGRP_AEVENTS)
        self.sock.setblocking(False)
        self.malformed = 0  # events that did not read as one (counted, skipped)
        self.overruns = 0  # ENOBUFS: the kernel dropped events (socket buffer full)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[sa.AeEvent]:
        out: list[sa.AeEvent] = []
        while True:
            try:
                data = self.sock.recv(_RECV)
            except BlockingIOError:
                return out
            except OSError:
                self.overruns += 1
                continue
            try:
                for msg in pull_messages(data):
                    if msg.kind == XFRM_MSG_NEWAE:
                        out.append(sa.pull_ae(msg))
            except XfrmProtocolError:
                self.malformed += 1

    def close(self) -> None:
        self.sock.close()


class SaEvents:
    """The XFRMNLGRP_SA subscription, non-blocking, for what it says of deleted states:
    `deleted()` returns the XFRM_MSG_DELSA notifications that arrived (the others are
    skipped). A full socket buffer loses notifications (counted in `overruns`)."""

    def __init__(self) -> None:
        self.sock = _open(None)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, XFRMNLGRP_SA)
        self.sock.setblocking(False)
        self.malformed = 0
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def deleted(self) -> list[sa.DeletedState]:
        out: list[sa.DeletedState] = []
        while True:
            try:
                data = self.sock.recv(_RECV)
            except BlockingIOError:
                return out
            except OSError:  # ENOBUFS: the kernel dropped notifications
                self.overruns += 1
                continue
            try:
                for msg in pull_messages(data):
                    if msg.kind == XFRM_MSG_DELSA:
                        out.append(sa.pull_deleted_state(msg))
            except XfrmProtocolError:
                self.malformed += 1

    def close(self) -> None:
        self.sock.close()


def esp_missing(dst: str) -> str | None:
    """Why this kernel cannot carry ESP, in one line (None: an ESP state with ESP-in-UDP to
    `dst` installs in this network namespace; it is removed at once)."""
    probe = sa.XfrmState(src="192.0.2.254", dst=dst, spi=0xC1C5FFFF, reqid=0xC1C5FFFF,
                      aead=sa.Aead("rfc4106(gcm(aes))", bytes(20), 128),
                      replay=sa.Replay(32), esn=True,
                         encap=sa.Encap(4500, 4500))
    try:
        x = XfrmSocket()
    except OSError as e:
        return f"no XFRM netlink (xfrm_user): {e.strerror or e}"
    try:
        x.add_state(probe)
        x.delete_state(probe.dst, probe.spi, probe.src)
    except KernelError as e:
        return f"no ESP state can be installed: {e}"
    except OSError as e:
        return f"no ESP state can be installed: {e}"
    finally:
        x.close()
    return None
