"""A byte buffer with bounded reads: every codec in the core pulls from and pushes to one."""

from __future__ import annotations

import struct

from .constants import Notify
from .errors import IkeProtocolError


class Buffer:
    """Reads fail with IkeProtocolError(INVALID_SYNTAX) instead of running off the end."""

    __slots__ = ("_data", "_end", "_out", "_pos")

    def __init__(self, data: bytes = b"") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._end = len(data)
        self._out = bytearray()

    # reading
    @property
    def position(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def pull_bytes(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    # the small integers are read in place (no bytes object per field: the codec reads
    # hundreds per message)
    def pull_uint8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        self._pos = pos + 1
        return self._data[pos]

    def pull_uint16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        self._pos = pos + 2
        d = self._data
        return (d[pos] << 8) | d[pos + 1]

    def pull_uint32(self) -> int:
        pos = self._pos
        if pos + 4 > self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        self._pos = pos + 4
        return int.from_bytes(self._data[pos:pos + 4], "big")

    def pull_uint64(self) -> int:
        pos = self._pos
        if pos + 8 > self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        self._pos = pos + 8
        return int.from_bytes(self._data[pos:pos + 8], "big")

    def pull_struct(self, fmt: struct.Struct) -> tuple[int, ...]:
        """Several fixed-size fields at once (a header): one call instead of one each."""
        pos = self._pos
        if pos + fmt.size > self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        self._pos = pos + fmt.size
        return fmt.unpack_from(self._data, pos)

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining())

    def sub(self, n: int) -> Buffer:
        """A buffer over the next `n` bytes (a length-prefixed block), consumed here; it
        reads the same memory (no copy)."""
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise IkeProtocolError("truncated data", Notify.INVALID_SYNTAX)
        self._pos = pos + n
        sub = Buffer.__new__(Buffer)
        sub._data, sub._pos, sub._end, sub._out = self._data, pos, pos + n, bytearray()
        return sub

    # writing
    def push_bytes(self, data: bytes) -> None:
        self._out += data

    def push_uint8(self, v: int) -> None:
        self._out.append(v)

    def push_uint16(self, v: int) -> None:
        self._out += v.to_bytes(2, "big")

    def push_uint32(self, v: int) -> None:
        self._out += v.to_bytes(4, "big")

    def push_uint64(self, v: int) -> None:
        self._out += v.to_bytes(8, "big")

    def push_struct(self, fmt: struct.Struct, *values: int) -> None:
        self._out += fmt.pack(*values)

    def data(self) -> bytes:
        return bytes(self._out)

    def __len__(self) -> int:
        return len(self._out)
