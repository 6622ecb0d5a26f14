"""Fixtures for the store against a real etcd: plain (session etcd) and TLS + RBAC."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.pki import CertAuthority
from cluster.procs import EtcdServer
from cluster.store import (
    ChildSaRecord,
    DataKey,
    IkeSaRecord,
    Keyspace,
    Store,
    load_data_key,
    write_data_key,
)
from cluster.store.rbac import setup_etcd_rbac


def child_sa(spi_in: int, **kw: object) -> ChildSaRecord:
    fields: dict[str, object] = dict(
        spi_in=spi_in, spi_out=0x0C000001, ike_sa_id="11" * 8 + "22" * 8, encr="aes128gcm16",
        integ=None, esn=True, enc_key_in=os.urandom(20), integ_key_in=b"",
        enc_key_out=os.urandom(20), integ_key_out=b"", ts_local=["10.20.0.0/16"],
        ts_remote=["10.99.0.7/32"], peer_addr="192.0.2.7", peer_port=4500, udp_encap=True,
        virtual_ip="10.99.0.7", identity="alice@example.net", created_at=time.time(),
        soft_lifetime_s=3300, hard_lifetime_s=3600)
    fields.update(kw)
    return ChildSaRecord(**fields)  # type: ignore[arg-type]


def ike_sa(spi_i: int = 0x1111111111111111, spi_r: int = 0x2222222222222222) -> IkeSaRecord:
    return IkeSaRecord(
        ike_sa_id=f"{spi_i:016x}{spi_r:016x}", spi_i=spi_i, spi_r=spi_r, peer_addr="192.0.2.7",
        peer_port=4500, local_port=4500, identity="alice@example.net", virtual_ip="10.99.0.7",
        child_spis=[0xC1000001], keyd_id="keyd-1", updated_at=time.time(),
        state=os.urandom(200))


@pytest.fixture(name="child_sa")
def child_sa_factory() -> object:
    """Builds a Child SA record with fresh random keys: child_sa(spi_in, **overrides)."""
    return child_sa


@pytest.fixture(name="ike_sa")
def ike_sa_factory() -> object:
    return ike_sa


@pytest.fixture
def data_key(tmp_path: Path) -> DataKey:
    return write_data_key(tmp_path / "data.key")


@pytest.fixture
def keyspace() -> Keyspace:
    """A cluster name of its own per test, so tests on the shared etcd do not meet."""
    return Keyspace(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def store(etcd_endpoint: str, keyspace: Keyspace, data_key: DataKey) -> Iterator[Store]:
    s = Store([etcd_endpoint], keyspace, data_key, timeout_s=5.0)
    yield s
    s.close()


@dataclass
class TlsCluster:
    server: EtcdServer
    ca: Path
    certs: dict[str, tuple[Path, Path]]   # CN -> (cert, key)
    keyspace: Keyspace
    data_key: DataKey

    def store(self, cn: str | None) -> Store:
        cert, key = self.certs[cn] if cn else (None, None)
        return Store([self.server.endpoint], self.keyspace, self.data_key, cacert=str(self.ca),
                     cert=str(cert) if cert else None, key=str(key) if key else None,
                     timeout_s=5.0)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    """A second etcd, TLS with client-certificate auth, RBAC for root, keyd-1, node-1,
    node-2 and sprayer-1 (each certificate's CN is its etcd user)."""
    d = tmp_path_factory.mktemp("etcd-tls")
    ca = CertAuthority.create("test etcd CA")
    ca_pem = d / "ca.pem"
    ca_pem.write_bytes(ca.cert_pem())
    server_cert, server_key = ca.issue("etcd", ["localhost", "127.0.0.1"], kind="rsa").write_pem(
        d / "server.pem", d / "server-key.pem")
    certs = {}
    for cn in ("root", "keyd-1", "node-1", "node-2", "sprayer-1"):
        certs[cn] = ca.issue(cn, [f"{cn}.example.net"], server=False).write_pem(
            d / f"{cn}.pem", d / f"{cn}-key.pem")
    (d / "data.key").write_text(os.urandom(32).hex())
    os.chmod(d / "data.key", 0o600)
    server = EtcdServer(d / "data", tls=(ca_pem, server_cert, server_key))
    server.start()
    try:
        cluster = TlsCluster(server, ca_pem, certs, Keyspace("tls"), load_data_key(d / "data.key"))
        with cluster.store("root") as root:
            setup_etcd_rbac(root, [("keyd", "keyd-1"), ("node", "node-1"), ("node", "node-2"),
                                   ("sprayer", "sprayer-1")])
        yield cluster
    finally:
        server.stop()
