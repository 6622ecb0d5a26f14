"""EAP-MSCHAPv2 with a real strongSwan client (charon's eap-identity and eap-mschapv2 plugins)
against keyd in the lab, configured as Windows is: its IKE identity is its address, the user
name goes in EAP-Identity, the gateway proves itself by certificate."""

from __future__ import annotations

import pytest
from test_keyd import ike_id, lab_store, only_sa

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
