"""A lab whose etcd is a cluster of three members (`etcd_members=3`): every component lists all
three, and the cluster serves on when one member is SIGKILLed — keyd still commits a new
client's IKE SA and Child SA — and the member catches up when it is started again."""

from __future__ import annotations

import json
import signal
import time
import tomllib

import pytest

from cluster.lab import addresses as A
from cluster.lab.lab import Lab


def _leader(lab: Lab, endpoints: list[str]) -> str:
    """The endpoint (in the lab) of the member that leads the cluster now."""
    out = lab.run("etcd", ["etcdctl", "--endpoints", ",".join(endpoints), "endpoint",
                           "status", "-w", "json"], check=True).stdout
    status = json.loads(out)
    (leader,) = [s["Endpoint"] for s in status
                 if s["Status"]["header"]["member_id"] == s["Status"]["leader"]]
    return str(leader)


@pytest.mark.lab(nodes=0, etcd_members=3)
def test_three_members_survive_one_members_sigkill(lab: Lab) -> None:
    st = lab.status()
    endpoints = st["etcd_endpoints_in_lab"]
    assert endpoints == [f"http://{A.etcd_ip(i)}:{A.ETCD_PORT}" for i in (1, 2, 3)]
    assert [m["name"] for m in st["etcd_members"]] == ["etcd-1", "etcd-2", "etcd-3"]
    assert all(m["alive"] for m in st["etcd_members"])
    for daemon in ("keyd-1", "sprayer"):
        config = tomllib.loads((lab.dir / "config" / f"{daemon}.toml").read_text())
        assert config["etcd"]["endpoints"] == endpoints

    # the leader goes: the other two elect another and keyd commits through them
    victim = f"etcd-{endpoints.index(_leader(lab, endpoints)) + 1}"
    lab.kill(victim, signal.SIGKILL)
    assert not next(m for m in lab.status()["etcd_members"] if m["name"] == victim)["alive"]
    lab.add_client("alice")
    (sa,) = lab.client_sas("alice")
    assert sa.state == "ESTABLISHED" and sa.child_spis
    _, cluster_spi_in = sa.child_spis[0]
    key = f"/ipsec-cluster/{lab.name}/sa/{cluster_spi_in}"
    assert lab.etcd_json(f"sa/{cluster_spi_in}") is not None

    # started again, it rejoins and holds what was committed while it was down
    lab.start(victim)
    member = endpoints[int(victim[-1]) - 1]

    def local_read() -> str:  # what the member itself holds (serializable: no quorum read)
        return lab.run("etcd", ["etcdctl", "--endpoints", member, "get", "--consistency=s",
                                "--keys-only", key]).stdout

    deadline = time.monotonic() + 20
    while key not in local_read():
        assert time.monotonic() < deadline, f"{victim} did not catch up with {key}"
        time.sleep(0.2)
