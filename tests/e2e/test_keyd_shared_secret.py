"""keyd's connections and secrets by identity with real strongSwan clients in the lab.

- an Apple-"shared secret"-style client (PSK both ways: it checks the gateway by the PSK
  too, so keyd must prove itself by PSK, not by its certificate) with its own PSK from the
  secrets file reaches ESTABLISHED on the `shared-secret` connection, gets a virtual IP and
  pings the protected server;
- a client that claims another user's identity with a valid PSK (alice's, as bob) and one
  whose identity the secrets file does not know are refused with AUTHENTICATION_FAILED, and
  keyd's counters say which (`psk_mismatch`, `unknown_identity`);
- the lab's ordinary PSK client (gateway by certificate) still establishes on `lab-psk`.
"""

from __future__ import annotations

import re

import pytest
from test_keyd import ike_id, lab_store, only_sa

from cluster.lab import addresses as A
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from cluster.lab.pki import SHARED_DOMAIN, SHARED_USERS
from cluster.store.records import IkeSaRecord


def auth_failures(lab: Lab) -> dict[str, float]:
    r = lab.run("keyd-1", ["curl", "-sf", "--max-time", "5", "http://127.0.0.1:9410/metrics"],
                timeout_s=15)
    assert r.returncode == 0, r.stderr
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^keyd_auth_failures_total\{reason="([a-z_]+)"\} (\S+)$', r.stdout, re.M)}


def client_log(lab: Lab, name: str) -> str:
    return (lab.dir / "logs" / f"client-{name}-charon.log").read_text()


@pytest.mark.lab(nodes=1, keyd=1)
def test_shared_secret_clients_by_identity(lab: Lab) -> None:
    alice, bob = SHARED_USERS[:2]
    alice_psk = lab.pki.user_psk(alice)
    lab.add_client("apple", auth="psk", identity=alice, psk=alice_psk, remote_auth="psk")
    sa = only_sa(lab, "apple")
    assert sa.virtual_ip is not None and sa.virtual_ip.startswith("10.99.0.")
    log = client_log(lab, "apple")
    assert "authentication of 'vpn.lab.example' with pre-shared key successful" in log
    # the connection's split-DNS domain and protected network came with the address
    assert "CPRP(ADDR DOMAIN SUBNET)" in log
    ping = lab.run("apple", ["ping", "-c", "3", "-i", "0.2", "-W", "2", A.SERVER_IP])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    with lab_store(lab) as store:
        held = store.get(IkeSaRecord, ike_id(sa))
        assert held is not None and held.record.identity == alice

    assert auth_failures(lab) == {}
    # bob's identity, alice's (valid) PSK
    with pytest.raises(LabError):
        lab.add_client("thief", auth="psk", identity=bob, psk=alice_psk, remote_auth="psk")
    assert "received AUTHENTICATION_FAILED notify error" in client_log(lab, "thief")
    assert auth_failures(lab) == {"psk_mismatch": 1.0}
    # an identity the shared-secret connection accepts, but no secret names
    with pytest.raises(LabError):
        lab.add_client("stranger", auth="psk", identity=f"mallory@{SHARED_DOMAIN}",
                       psk=alice_psk, remote_auth="psk")
    assert "received AUTHENTICATION_FAILED notify error" in client_log(lab, "stranger")
    assert auth_failures(lab) == {"psk_mismatch": 1.0, "unknown_identity": 1.0}
    keyd_log = (lab.dir / "logs" / "keyd-1.log").read_text()
    assert alice_psk not in keyd_log

    # the lab's own PSK client, gateway by certificate: the `lab-psk` connection
    lab.add_client("plain", auth="psk")
    assert only_sa(lab, "plain").virtual_ip is not None
    assert "authentication of 'vpn.lab.example' with pre-shared key" \
        not in client_log(lab, "plain")
