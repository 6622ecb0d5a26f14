"""A TCP forwarder from the root namespace's loopback into a lab namespace.

The root namespace holds no lab address, yet clusterctl and tests there must reach the lab's
etcd. This process binds 127.0.0.1:<port> in the root namespace, then moves itself into the
etcd namespace with setns(2): the listening socket stays where it was made, every socket it
opens afterwards lives in the etcd namespace. Run as
`python -m cluster.lab.forwarder --listen 127.0.0.1:P --netns NS --target 10.30.0.2:2379`.

`--target` may be given once per member of an etcd cluster: each connection goes to the first
member that accepts it, so a member that is down (its port refuses at once: it lives in the
same namespace) costs nothing, and a client whose connection broke with its member reconnects
to the next.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading

from cluster.lab.errors import LabError
from cluster.lab.netns import enter


def pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy src → dst until either end closes; then shut both down (one relay direction)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _connect(targets: list[tuple[str, int]]) -> socket.socket | None:
    for target in targets:
        try:
            return socket.create_connection(target, timeout=5)
        except OSError:
            continue
    return None


def _serve(conn: socket.socket, targets: list[tuple[str, int]]) -> None:
    upstream = _connect(targets)
    if upstream is None:
        conn.close()
        return
    upstream.settimeout(None)
    t = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
    t.start()
    pipe(conn, upstream)
    t.join()
    conn.close()
    upstream.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--listen", required=True, type=_addr, help="HOST:PORT in this namespace")
    p.add_argument("--netns", required=True, help="namespace the target lives in")
    p.add_argument("--target", required=True, type=_addr, action="append",
                   help="HOST:PORT in that namespace (again for each further member)")
    args = p.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(args.listen)
        listener.listen(128)
        enter(args.netns)
    except (OSError, LabError) as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return 1
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, args.target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
