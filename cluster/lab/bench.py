"""What benchmarks add to a running lab, without changing how the lab is built.

- `address_range`: a client namespace that holds a whole range of addresses (a local route on
  its loopback, "AnyIP"), routed from the router, so thousands of simulated clients can each
  have their own address and NAT-T port 4500;
- `sprayer_settings`: rewrite keys of the sprayer's [sprayer] section and restart it;
- `assignments`: assign/<ike-sa-id> → node as etcd holds it;
- `set_node_state`: `clusterctl node drain|undrain` against the lab.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time

from cluster.lab import netns
from cluster.lab.daemons import Value, _toml_value
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from cluster.lab.state import ClientRecord
from cluster.store import Assignment, Keyspace, Store


def address_range(lab: Lab, name: str, network: str) -> ClientRecord:
    """A client namespace (no IKE daemon) that owns every address of `network`; the router
    routes the network to it."""
    net = ipaddress.ip_network(network)
    if not net.is_private or net.version != 4:
        raise LabError(f"{network}: a private IPv4 network is expected")
    rec = lab.add_client(name, ike=False)
    netns.route(rec.netns, "local", str(net), "dev", "lo")
    netns.route(lab.ns("router"), str(net), "via", rec.address)
    return rec


def sprayer_settings(lab: Lab, **values: Value) -> None:
    """Set keys of the sprayer's [sprayer] section (docs/configuration.md) and restart it."""
    path = lab.dir / "config" / "sprayer.toml"
    text = path.read_text()
    head, sep, section = text.partition("[sprayer]\n")
    if not sep:
        raise LabError(f"{path}: no [sprayer] section")
    for key, value in values.items():
        line = f"{key} = {_toml_value(value)}"
        pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
        section = pattern.sub(line, section) if pattern.search(section) \
            else line + "\n" + section
    path.write_text(head + sep + section)
    lab.kill("sprayer")
    for attempt in range(3):
        try:
            lab.start("sprayer")
            return
        except LabError:       # exited at once (seen once on a busy machine): again
            if attempt == 2:
                raise
            time.sleep(1.0)


def lab_store(lab: Lab) -> Store:
    """A store on the lab's etcd (through the loopback forwarder), without the data key:
    enough for the clear records (nodes, assignments)."""
    return Store([lab.etcd_endpoint], Keyspace(lab.name), timeout_s=30.0)


def assignments(store: Store) -> dict[str, str]:
    """IKE SA id → the node that owns its traffic."""
    return {v.record.ike_sa_id: v.record.node for v in store.list(Assignment).items}


def set_node_state(lab: Lab, node: str, drain: bool) -> None:
    """`clusterctl --lab <lab> node drain|undrain <node>`."""
    cmd = [sys.executable, "-m", "cluster.cli", "--lab", lab.name, "node",
           "drain" if drain else "undrain", node]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise LabError(f"{' '.join(cmd[2:])}: {r.stderr.strip() or r.stdout.strip()}")
