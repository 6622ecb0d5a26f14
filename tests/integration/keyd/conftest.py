"""Fixtures for keyd's integration tests: a Store on the session's real etcd, in a keyspace
(cluster name) of its own per test so tests never see each other's keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.seal import DataKey


@pytest.fixture
def data_key() -> DataKey:
    return DataKey(os.urandom(32), "test")


@pytest.fixture
def cluster_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def store(etcd_endpoint: str, cluster_name: str, data_key: DataKey) -> Iterator[Store]:
    s = Store([etcd_endpoint], Keyspace(cluster_name), data_key, timeout_s=5.0)
    try:
        yield s
    finally:
        s.raw.delete_prefix(s.keyspace.root)
        s.close()
