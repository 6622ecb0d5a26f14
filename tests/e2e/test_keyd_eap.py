"""EAP-MSCHAPv2 with a real strongSwan client (charon's eap-identity and eap-mschapv2 plugins)
against keyd in the lab, configured as Windows is: its IKE identity is its address, the user
name goes in EAP-Identity, the gateway proves itself by certificate."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from test_keyd import ike_id, lab_store, only_sa, wait_until
from test_keyd_ha import ike_steered_to

from cluster.lab import addresses as A
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from cluster.store.records import IkeSaRecord


@pytest.mark.lab(nodes=1, keyd=1)
def test_eap_mschapv2_client_establishes_pings_and_a_wrong_password_is_refused(
        lab: Lab) -> None:
    lab.add_client("win", auth="eap-mschapv2", eap_user="carol")
    sa = only_sa(lab, "win")
    assert sa.virtual_ip is not None and sa.virtual_ip.startswith("10.99.0.")
    ping = lab.run("win", ["ping", "-c", "3", "-i", "0.2", "-W", "2", A.SERVER_IP])
    assert ping.returncode == 0, ping.stdout
    with lab_store(lab) as store:
        record = store.get(IkeSaRecord, ike_id(sa))
        assert record is not None and record.record.identity == "carol"
    log = (lab.dir / "logs" / "client-win-charon.log").read_text()
    assert "EAP method EAP_MSCHAPV2 succeeded, MSK established" in log

    with pytest.raises(LabError):
        lab.add_client("bad", auth="eap-mschapv2", eap_user="dave",
                       eap_password="not-daves-password")
    bad_log = (lab.dir / "logs" / "client-bad-charon.log").read_text()
    assert "EAP_FAILURE" in bad_log or "AUTHENTICATION_FAILED" in bad_log, bad_log[-2000:]
    keyd_log = (lab.dir / "logs" / "keyd-1.log").read_text()
    assert "bad password" in keyd_log and "not-daves-password" not in keyd_log


@pytest.mark.lab(nodes=1, keyd=1, radius=True)
def test_eap_tls_and_mschapv2_through_freeradius(lab: Lab) -> None:
    """keyd relays EAP to a real FreeRADIUS: a strongSwan client with EAP-TLS and a client
    certificate (as the strongSwan app), and one with EAP-MSCHAPv2, establish and ping; the
    AUTH each sends is made with the MSK FreeRADIUS gave keyd (MS-MPPE keys)."""
    lab.add_client("app", auth="eap-tls")
    lab.add_client("win", auth="eap-mschapv2", eap_user="dave")
    for name in ("app", "win"):
        sa = only_sa(lab, name)
        assert sa.virtual_ip is not None
        ping = lab.run(name, ["ping", "-c", "3", "-i", "0.2", "-W", "2", A.SERVER_IP])
        assert ping.returncode == 0, ping.stdout
    app_log = (lab.dir / "logs" / "client-app-charon.log").read_text()
    assert "EAP method EAP_TLS succeeded, MSK established" in app_log
    with pytest.raises(LabError):
        lab.add_client("bad", auth="eap-mschapv2", eap_user="dave", eap_password="nope-nope")
    keyd_log = (lab.dir / "logs" / "keyd-1.log").read_text()
    assert "radius reject" in keyd_log


CLIENT_ADDR = A.client_ip(1, False)  # the lab's first client
# In the router, drop the client's IKE message with Message ID 3 (its MSCHAPv2 Response):
# on port 4500 the UDP payload is the non-ESP marker (4 bytes), then the IKE header, whose
# Message ID is at offset 20 — bit 8 * (8 + 4 + 20) = 256 from the UDP header.
HOLD_RESPONSE = f"""table inet eaptest {{
  chain hold {{
    type filter hook forward priority -10; policy accept;
    ip saddr {CLIENT_ADDR} udp dport 4500 @th,256,32 3 counter drop
  }}
}}
"""


@pytest.mark.lab(nodes=1, keyd=2)
def test_keyd_killed_in_the_middle_of_eap_another_continues(lab: Lab, tmp_path: Path) -> None:
    """The keyd that sent the EAP-MSCHAPv2 challenge is SIGKILLed before the client's Response
    reaches it (held in the router); the client's retransmission goes to the other keyd,
    which continues the conversation from etcd, and the client establishes."""
    wait_until(lambda: ike_steered_to(lab) == {"keyd-1", "keyd-2"}, 30,
               "IKE hashed over both keyd instances")
    rules = tmp_path / "hold.nft"
    rules.write_text(HOLD_RESPONSE)
    lab.run("router", ["nft", "-f", str(rules)], check=True)
    result: dict[str, BaseException | None] = {}

    def connect() -> None:
        try:
            lab.add_client("win", auth="eap-mschapv2", eap_user="carol")
            result["error"] = None
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        log = lab.dir / "logs" / "client-win-charon.log"
        wait_until(lambda: log.exists() and "generating IKE_AUTH request 3" in log.read_text(),
                   20, "the client's MSCHAPv2 Response (held in the router)")
        with lab_store(lab) as store:
            # the challenge round (IKE_AUTH message 2) is written right after its answer
            records = wait_until(
                lambda: [r for r in store.list(IkeSaRecord).items
                         if json.loads(r.record.state)["peer_next_id"] >= 3], 10,
                "the IKE SA, written with the challenge round")
            served = records[0].record.keyd_id
        other = "keyd-2" if served == "keyd-1" else "keyd-1"
        os.killpg(lab.state.processes[served].pid, signal.SIGKILL)
        wait_until(lambda: ike_steered_to(lab) == {other}, 10, f"{served} out of steering")
        lab.run("router", ["nft", "delete", "table", "inet", "eaptest"], check=True)
    finally:
        thread.join(60)
    assert result.get("error") is None, result
    sa = only_sa(lab, "win")
    assert sa.virtual_ip is not None
    with lab_store(lab) as store:
        record = store.get(IkeSaRecord, ike_id(sa))
        assert record is not None and record.record.keyd_id == other
        assert record.record.identity == "carol"
    assert "IKE SA established" in (lab.dir / "logs" / f"{other}.log").read_text()
    ping = lab.run("win", ["ping", "-c", "3", "-i", "0.2", "-W", "2", A.SERVER_IP])
    assert ping.returncode == 0, ping.stdout
