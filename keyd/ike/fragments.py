"""IKE fragmentation (RFC 7383): splitting our large SK messages into SKF fragments, and
reassembling the peer's, with limits.

Sending (§2.5): a message whose datagram would exceed the fragment MTU (the whole IP
datagram, as strongSwan's `fragment_size`) is sent as SKF fragments instead, each sealed on
its own, once the peer has announced IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT. The
fragments are kept as one byte string, the datagrams back to back (each IKE header carries
its length): `IkeSa.last_response` and `IkeSa.outstanding` stay plain bytes, a retransmission
resends every fragment, and another keyd instance that imports the IKE SA resends the same.

Receiving (§2.6): each fragment is checked for integrity *before* it is stored, so only the
peer of an IKE SA (someone who holds its keys) can make us hold anything. What is held is
bounded by `FragmentLimits`:

- fragments per message (`max_fragments`) and reassembled bytes per message
  (`max_message_bytes`): larger messages are dropped as they arrive;
- incomplete messages per IKE SA (`max_incomplete_per_sa`; with the window size of 1, §2.3,
  one request and one response) and in all (`max_incomplete`): the one that has waited
  longest for its next fragment goes first, so a message whose fragments keep arriving is
  not pushed out by a flood of messages that never complete;
- time (`timeout_s`): an incomplete message older than this is dropped (the peer's
  retransmission starts it again).

So the reassembler never holds more than `max_incomplete * max_message_bytes` bytes of
fragment contents (plus a small per-fragment overhead, at most `max_fragments` each).

Fragments of one message must all reach the same keyd instance (the incomplete message lives
in that instance's memory): the sprayer hashes IKE on the client's address only
(docs/sprayer.md), which is the same for every fragment of a message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .buffer import Buffer
from .constants import Notify, PayloadType
from .errors import IkeProtocolError, IkeUsageError
from .message import HEADER_LENGTH, Header, Message, payload_type_of, push_payloads
from .payloads import NotifyPayload, Payload, SkfPayload
from .protect import SkKeys, open_plain, pull_inner, seal, seal_plain, sealed_overhead

IPV4_HEADER = 20
IPV6_HEADER = 40
UDP_HEADER = 8
NON_ESP_MARKER_LEN = 4
SKF_HEADER = 4 + 4  # generic payload header, Fragment Number and Total Fragments (§2.5)
MIN_FRAGMENT_MTU = 576  # RFC 791: every IPv4 host accepts datagrams of 576 bytes


@dataclass(frozen=True, slots=True)
class FragmentLimits:
    """What the reassembler may hold (module docstring); `[keyd] fragment_*` in the config."""

    max_fragments: int = 64
    max_message_bytes: int = 65535
    max_incomplete_per_sa: int = 2
    max_incomplete: int = 128
    timeout_s: float = 10.0

    @property
    def memory_bound_bytes(self) -> int:
        """The most fragment content held at once."""
        return self.max_incomplete * self.max_message_bytes


class FragmentError(IkeProtocolError):
    """A fragment that is dropped (silently, with a counter named `reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason.replace("_", " "), None)
        self.reason = reason


@dataclass(slots=True)
class _Partial:
    """An incomplete message: its fragments' decrypted contents by number."""

    total: int
    started: float
    first_inner: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


# (IKE SA id, message ID, is a response)
_Key = tuple[str, int, bool]


class Reassembler:
    """The incomplete fragmented messages of one IKE endpoint (every IKE SA it holds)."""

    def __init__(self, limits: FragmentLimits, drop: Callable[[str], None]) -> None:
        self.limits = limits
        self._drop = drop
        # least recently fed first: the order of eviction
        self._partial: OrderedDict[_Key, _Partial] = OrderedDict()

    @property
    def incomplete(self) -> int:
        return len(self._partial)

    @property
    def bytes_held(self) -> int:
        return sum(p.size for p in self._partial.values())

    def open(self, ike_sa_id: str, msg: Message, skf: SkfPayload, keys: SkKeys,
             now: float) -> list[Payload] | None:
        """One authentic fragment: the whole message's payloads once every fragment is
        in, else None. FragmentError for a fragment that is dropped; IkeProtocolError
        (notify None) when it is not authentic, (INVALID_SYNTAX) when the reassembled
        message does not parse."""
        lim = self.limits
        number, total = skf.fragment_number, skf.total_fragments
        if not 1 <= number <= total:
            raise FragmentError("fragment_number_invalid")
        if total > lim.max_fragments:
            raise FragmentError("fragment_too_many")
        plain = open_plain(msg, skf, keys)  # §2.6: integrity before anything is stored
        self.expire(now)
        key = (ike_sa_id, msg.header.message_id, msg.header.is_response)
        part = self._partial.get(key)
        if part is not None and total != part.total:
            if total < part.total:  # §2.6.1: a smaller total is stale, a larger one restarts
                raise FragmentError("fragment_total_mismatch")
            del self._partial[key]
            part = None
        if part is None:
            part = self._start(key, total, now)
        if number in part.chunks:
            raise FragmentError("fragment_duplicate")
        if part.size + len(plain) > lim.max_message_bytes:
            del self._partial[key]
            raise FragmentError("fragment_message_too_large")
        part.chunks[number] = plain
        part.size += len(plain)
        self._partial.move_to_end(key)  # least recently fed first in line for eviction
        if number == 1:
            part.first_inner = skf.first_inner  # §2.5: only fragment 1 names it
        if len(part.chunks) < part.total:
            return None
        del self._partial[key]
        whole = b"".join(part.chunks[n] for n in range(1, part.total + 1))
        return pull_inner(whole, part.first_inner)

    def _start(self, key: _Key, total: int, now: float) -> _Partial:
        lim = self.limits
        ike_sa_id, _, is_response = key
        mine = []
        for k in [k for k in self._partial if k[0] == ike_sa_id]:
            if k[2] == is_response:  # a newer message in the same direction: the old is over
                del self._partial[k]
                self._drop("fragments_superseded")
            else:
                mine.append(k)
        while len(mine) >= lim.max_incomplete_per_sa:
            del self._partial[mine.pop(0)]
            self._drop("fragments_evicted")
        while len(self._partial) >= lim.max_incomplete:
            self._partial.popitem(last=False)
            self._drop("fragments_evicted")
        part = _Partial(total, now)
        self._partial[key] = part
        return part

    def expire(self, now: float) -> None:
        """Drop incomplete messages whose first fragment came `timeout_s` ago or more."""
        for key in [k for k, p in self._partial.items()
                    if now - p.started >= self.limits.timeout_s]:
            del self._partial[key]
            self._drop("fragments_timed_out")

    def forget(self, ike_sa_id: str) -> None:
        """The IKE SA is gone: so are its incomplete messages."""
        for k in [k for k in self._partial if k[0] == ike_sa_id]:
            del self._partial[k]


def offers_fragmentation(payloads: Sequence[Payload]) -> bool:
    """IKE_SA_INIT carries IKEV2_FRAGMENTATION_SUPPORTED (§2.3)."""
    return any(isinstance(p, NotifyPayload) and p.type == Notify.IKEV2_FRAGMENTATION_SUPPORTED
               for p in payloads)


def fragment_budget(mtu: int, local: tuple[str, int], natt_port: int) -> int:
    """The largest IKE message (bytes from the IKE header on) that fits one IP datagram of
    `mtu` bytes sent from `local` (§2.5.1: IP and UDP headers, the non-ESP marker on 4500)."""
    ip = IPV6_HEADER if ":" in local[0] else IPV4_HEADER
    return mtu - ip - UDP_HEADER - (NON_ESP_MARKER_LEN if local[1] == natt_port else 0)


def seal_message(header: Header, payloads: Sequence[Payload], keys: SkKeys,
                 random: Callable[[int], bytes], max_len: int | None) -> bytes:
    """The sealed message, or (when it is longer than `max_len`, None: never) its SKF
    fragments back to back, each at most `max_len` bytes."""
    data = seal(header, payloads, keys, random)
    if max_len is None or len(data) <= max_len:
        return data
    inner = Buffer()
    push_payloads(inner, payloads)
    plain = inner.data()
    first = payload_type_of(payloads[0]) if payloads else 0
    room = max_len - HEADER_LENGTH - SKF_HEADER
    chunk = room - sealed_overhead(keys, 0)
    while chunk > 0 and chunk + sealed_overhead(keys, chunk) > room:
        chunk -= 1
    if chunk <= 0:
        raise IkeUsageError(f"fragment MTU too small: {max_len} bytes per message")
    pieces = [plain[i : i + chunk] for i in range(0, len(plain), chunk)]
    total = len(pieces)
    return b"".join(
        seal_plain(header, PayloadType.SKF, first if n == 1 else 0,
                   n.to_bytes(2, "big") + total.to_bytes(2, "big"), piece, keys, random)
        for n, piece in enumerate(pieces, 1))


def split_datagrams(data: bytes) -> list[bytes]:
    """The IKE messages of `seal_message` output (one, or the fragments), by header length.
    Bytes that do not split cleanly (a damaged record) stay one datagram, never a loop."""
    out = []
    while data:
        length = int.from_bytes(data[24:28], "big")
        if not HEADER_LENGTH <= length <= len(data):
            out.append(data)
            break
        out.append(data[:length])
        data = data[length:]
    return out
