"""IKE fragmentation (RFC 7383) through the keyd daemon, against a real etcd: the IKE_SA_INIT
is answered by one instance, the fragmented IKE_AUTH by another (which continues the IKE SA
from etcd and reassembles it), the fragmented answer fits the configured MTU, and a
retransmitted first fragment brings the cached answer back byte for byte."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from cluster.pki import CertAuthority
from cluster.store.client import Store
from cluster.store.records import IkeSaRecord, NodeRecord
from cluster.store.watch import wait_for
from keyd.client import IkeClient
from keyd.ike import Credentials, IkeSaEstablished, InitiatorConfig
from keyd.ike.fragments import split_datagrams

from .conftest import GATEWAY_ID, KeydSetup

MTU = 576
IDENTITY = "carol@clients.test"


def _certificates(directory: Path) -> tuple[str, Credentials]:
    """keyd's [keyd] lines for an RSA certificate, and a client's RSA credentials."""
    ca = CertAuthority.create("fragments test CA", kind="rsa")
    gw = ca.issue(GATEWAY_ID, [GATEWAY_ID], kind="rsa", server=True, client=False)
    cl = ca.issue(IDENTITY, [IDENTITY], kind="rsa", server=False, client=True)
    cert, key = gw.write_pem(directory / "gw.pem", directory / "gw-key.pem")
    ca_pem = directory / "ca.pem"
    ca_pem.write_bytes(ca.cert_pem())
    extra = (f'cert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{ca_pem}"\n'
             f"fragment_mtu = {MTU}\n")
    return extra, Credentials(cert=cl.cert, private_key=cl.key, cas=(ca.cert,))


def test_another_instance_reassembles_the_fragmented_ike_auth(keyd_setup: KeydSetup,
                                                              store: Store) -> None:
    store.put(NodeRecord(id="node-a", address="10.30.0.11", capacity=100, state="ready",
                         health_port=4501, version="test", started_at=time.time()))
    extra, creds = _certificates(keyd_setup.directory)
    first = keyd_setup.start("keyd-1", extra=extra)
    config = InitiatorConfig(identity=IDENTITY, credentials=creds, remote_identity=GATEWAY_ID,
                             natt_port=first.natt_port, fragmentation=True, fragment_mtu=MTU)
    with IkeClient(config, "127.0.0.2", ("127.0.0.1", first.ike_port), first.natt_port) as c:
        core = c.core
        core.connect(c.local, c.remote, time.time())
        (init,) = core.datagrams_to_send()
        core.receive_datagram(c.resend(init), c.remote, c.local, time.time())
        while core.next_event() is not None:
            pass
        auth = core.datagrams_to_send()  # the IKE_AUTH, in fragments: not sent yet
        assert len(auth) > 2 and all(len(d.data) <= MTU - 28 for d in auth)
        sa_id = core.ike_sa_id or ""
        assert wait_for(lambda: store.get(IkeSaRecord, sa_id) is not None, timeout_s=5)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        second = keyd_setup.start("keyd-2", first.ike_port, first.natt_port, extra=extra)
        for d in auth:
            c._socks[d.src[1]].sendto(d.data, d.dst)
        mark = len(c.received)
        c.pump(lambda: any(isinstance(e, IkeSaEstablished) for e in c.events), 30)
        answer = c.received[mark:]
        assert len(answer) > 1 and all(len(a) <= MTU - 28 for a in answer)
        assert all(len(split_datagrams(a[4:])) == 1 for a in answer)
        assert second.metric("keyd_ike_sas_imported_total") == 1
        assert second.metric("keyd_ike_fragments_incomplete") == 0
        # the answer was lost: the client's retransmission (fragment 1 first) brings it back
        assert c.resend(auth[0]) == answer[0]
        c.delete()
