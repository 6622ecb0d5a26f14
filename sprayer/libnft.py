"""Running nftables commands: through libnftables in-process, or the `nft` command.

A map flip is on the critical path of every move (the client's traffic waits for it), and
forking `nft` costs 5-15 ms on a busy host; libnftables (the library `nft` itself is built
on, loaded with ctypes) applies the same batch in well under a millisecond. The library's
netlink socket belongs to the network namespace the context was created in, so a context
made inside `netns` keeps working there from any thread. Where the library cannot be loaded
the `nft` command is used instead; both take the same text or JSON batches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

from cluster.host import DriverError, in_netns, inside_netns, run

log = logging.getLogger("sprayer.nft")

#: libnftables.h: NFT_CTX_DEFAULT; output flags NFT_CTX_OUTPUT_JSON (also makes
#: nft_run_cmd_from_buffer try JSON input first, then the nft syntax)
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


_LIB = _load()


class Nft:
    """One nftables command channel (library context, or the command) for one namespace."""

    def __init__(self, netns: str | None = None, *, use_library: bool = True) -> None:
        self.netns = netns
        self._lock = threading.Lock()
        self._ctx: int | None = None
        if use_library and _LIB is not None:
            self._ctx = self._new_context()

    @property
    def in_process(self) -> bool:
        return self._ctx is not None

    def _new_context(self) -> int | None:
        assert _LIB is not None
        with inside_netns(self.netns):
            ctx = _LIB.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            log.warning("libnftables: no context; using the nft command")
            return None
        _LIB.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        _LIB.nft_ctx_buffer_output(ctx)
        _LIB.nft_ctx_buffer_error(ctx)
        return int(ctx)

    def run(self, batch: str, *, json_input: bool) -> str:
        """Apply one batch (atomic: one netlink transaction); return nft's (JSON) output."""
        if self._ctx is None:
            argv = ["nft", "-j", "-f", "-"] if json_input else ["nft", "-f", "-"]
            return run(in_netns(self.netns, argv), stdin=batch)
        assert _LIB is not None
        with self._lock:
            rc = _LIB.nft_run_cmd_from_buffer(self._ctx, batch.encode())
            out = (_LIB.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (_LIB.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            lines = [x for x in err.strip().splitlines() if x.strip()]
            raise DriverError(f"nft: {' / '.join(lines[:5]) or f'error {rc}'}")
        return out

    def list_json(self, what: str) -> str:
        """`nft -j list <what>`."""
        if self._ctx is None:
            return run(in_netns(self.netns, ["nft", "-j", "list", *what.split()]))
        return self.run(f"list {what}\n", json_input=False)

    def close(self) -> None:
        if self._ctx is not None and _LIB is not None:
            with self._lock:
                _LIB.nft_ctx_free(self._ctx)
            self._ctx = None
