"""The store's exceptions, and the one place where etcd/gRPC failures are translated.

Nothing outside cluster/store imports grpc or etcd3: callers see StoreError and its
subclasses only, each with a one-line message that names the endpoint(s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import etcd3.exceptions as etcd_exc
import grpc

from .records import MalformedRecord, UnknownVersion
from .seal import DataKeyError, WrongDataKey

__all__ = [
    "CompactedError", "DataKeyError", "FutureRevision", "MalformedRecord", "PermissionDenied",
    "StoreError", "StoreUnavailable", "UnknownVersion", "WrongDataKey", "translated",
]


class StoreError(Exception):
    """Any failure of the cluster store (etcd)."""


class StoreUnavailable(StoreError):
    """etcd cannot be reached (down, partitioned, timed out, TLS handshake failed)."""

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"etcd at {endpoint} is unavailable: {detail}")
        self.endpoint = endpoint
        self.detail = detail


class PermissionDenied(StoreError):
    """The credentials in use may not do this (etcd RBAC)."""


class CompactedError(StoreError):
    """A watch or read asked for a revision etcd has compacted away.

    `compacted_revision` is etcd's compaction point when etcd said it (a watch does; a read
    does not: then None). `revision` is the revision asked for, when known."""

    def __init__(self, compacted_revision: int | None = None,
                 revision: int | None = None) -> None:
        asked = f"revision {revision}" if revision is not None else "revision"
        kept = f" (compacted up to {compacted_revision})" if compacted_revision else ""
        super().__init__(f"{asked} is compacted{kept}: etcd no longer has it")
        self.compacted_revision = compacted_revision
        self.revision = revision


class FutureRevision(StoreError):
    """A read asked for a revision etcd has not reached yet."""

    def __init__(self, revision: int | None = None) -> None:
        super().__init__(f"revision {revision if revision is not None else '?'} is in the "
                         "future: etcd has not reached it")
        self.revision = revision


_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED}
_DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}

# etcd's API errors are fixed (status code, description) pairs (etcd's
# api/v3rpc/rpctypes/error.go); etcd's own client maps them back by that pair, as here.
ETCD_COMPACTED = (grpc.StatusCode.OUT_OF_RANGE,
                  "etcdserver: mvcc: required revision has been compacted")
ETCD_FUTURE_REV = (grpc.StatusCode.OUT_OF_RANGE,
                   "etcdserver: mvcc: required revision is a future revision")


def translate(exc: BaseException, endpoint: str, revision: int | None = None) -> StoreError:
    """The store exception for an etcd3 / gRPC exception; `revision` is the revision the
    failed call asked for, if any (named in CompactedError / FutureRevision)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, etcd_exc.RevisionCompactedError):
        return CompactedError(int(exc.compacted_revision), revision)
    if isinstance(exc, etcd_exc.ConnectionFailedError | etcd_exc.NoServerAvailableError):
        return StoreUnavailable(endpoint, "connection failed")
    if isinstance(exc, etcd_exc.ConnectionTimeoutError | etcd_exc.WatchTimedOut):
        return StoreUnavailable(endpoint, "timed out")
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        status = (code, details.strip())
        if status == ETCD_COMPACTED:
            return CompactedError(None, revision)
        if status == ETCD_FUTURE_REV:
            return FutureRevision(revision)
        details = details.splitlines()[0] if details else str(code)
        if code in _UNAVAILABLE:
            return StoreUnavailable(endpoint, details)
        if code in _DENIED:
            return PermissionDenied(f"etcd at {endpoint} refused: {details}")
        return StoreError(f"etcd at {endpoint}: {details}")
    if isinstance(exc, etcd_exc.Etcd3Exception):
        return StoreError(f"etcd at {endpoint}: {type(exc).__name__} {exc}")
    return StoreError(f"etcd at {endpoint}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def translated(endpoint: str, revision: int | None = None) -> Iterator[None]:
    """Run a block of etcd calls; re-raise anything etcd/gRPC raises as a StoreError.
    `revision`: the revision the block reads at, if any (for CompactedError)."""
    try:
        yield
    except (StoreError, MalformedRecord, WrongDataKey, DataKeyError):
        raise
    except (grpc.RpcError, etcd_exc.Etcd3Exception) as exc:
        raise translate(exc, endpoint, revision) from None
    except ValueError as exc:
        # etcd3 raises a bare ValueError for an endpoint it marked failed a moment ago
        if "failed node" in str(exc):
            raise StoreUnavailable(endpoint, "connection failed recently") from None
        raise
