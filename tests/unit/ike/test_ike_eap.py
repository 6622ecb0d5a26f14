"""EAP in IKE_AUTH (RFC 7296 §2.16), driven in one process: keyd's responder and keyd's own
initiator doing EAP-MSCHAPv2, against local EAP users and relayed to RADIUS (the RADIUS
server's side is keyd.eap's MSCHAPv2 authenticator behind the RADIUS codec's server half)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from ikepair import CERT_TIME, CLIENT, VIP, Clock, Side, make_pki, run, transfer

from keyd.eap import Authenticator, EapSucceeded, RadiusServer, SendToPeer, radius
from keyd.eap.radius import Attr, RadiusCode
from keyd.ike import (
    AddressRequested,
    AuthenticationFailed,
    ChildSaEstablished,
    Credentials,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)
from keyd.ike.config import EapConfig
from keyd.ike.connections import Connection, LocalAuth, RemoteAuth
from keyd.ike.constants import Notify
from keyd.ike.events import RadiusRequested

USERS = {"carol": "s3cret", "ACME\\dave": "pässwörd"}
SECRET = b"radius-secret"
RADIUS = (RadiusServer("192.0.2.53", 1812, SECRET),)


def gateway_creds() -> tuple[Credentials, Credentials]:
    pki = make_pki()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue("vpn.example.net", [x509.DNSName("vpn.example.net")], key)
    server = Credentials(cert=cert, private_key=key, cas=(pki.ca,), clock=lambda: CERT_TIME)
    client = Credentials(cas=(pki.ca,), clock=lambda: CERT_TIME)
    return server, client


def pair(eap: EapConfig, user: str = "carol", password: str = "s3cret",
         client_id: str = "192.0.2.10") -> tuple[Side, Side]:
    server_creds, client_creds = gateway_creds()
    server = Responder(ResponderConfig(identity="vpn.example.net", credentials=server_creds,
                                       protected_networks=["10.20.0.0/16"], eap=eap))
    client = Initiator(InitiatorConfig(identity=client_id, credentials=client_creds,
                                       remote_identity="vpn.example.net",
                                       eap_identity=user, eap_password=password))
    return Side(client), Side(server)


def local_eap(**kw: Any) -> EapConfig:
    return EapConfig("eap-mschapv2", password_for=USERS.get, **kw)


def connect(client: Side, clock: Clock) -> None:
    client.endpoint.connect(CLIENT, VIP, clock.now)


@pytest.mark.parametrize(("user", "password", "ask"), [
    ("carol", "s3cret", True), ("ACME\\dave", "pässwörd", True), ("carol", "s3cret", False)])
def test_eap_mschapv2_establishes_with_the_eap_identity(user: str, password: str,
                                                        ask: bool) -> None:
    client_id = "192.0.2.10" if ask else user
    client, server = pair(local_eap(ask_identity=ask), user, password, client_id)
    clock = Clock()
    connect(client, clock)
    run(client, server, clock)
    [est] = server.of(IkeSaEstablished)
    assert est.identity == user
    assert [e.identity for e in server.of(AddressRequested)] == [user]
    assert client.of(IkeSaEstablished) and client.endpoint.virtual_ip == "10.99.0.1"
    assert len(client.of(ChildSaEstablished)) == len(server.of(ChildSaEstablished)) == 1
    c, s = client.of(ChildSaEstablished)[0].child, server.of(ChildSaEstablished)[0].child
    assert c.enc_key_out == s.enc_key_in and s.identity == user
    # the IKE SA record keeps no MSK once established
    record = server.endpoint.export_ike_sa(est.ike_sa_id)
    assert record["eap"] is None and record["state"] == "established"


@pytest.mark.parametrize(("user", "password", "reason"), [
    ("carol", "wrong", "bad password"), ("mallory", "s3cret", "unknown user")])
def test_refused_with_authentication_failed_and_counted(user: str, password: str,
                                                        reason: str) -> None:
    client, server = pair(local_eap(), user, password)
    clock = Clock()
    connect(client, clock)
    run(client, server, clock)
    [failed] = server.of(AuthenticationFailed)
    assert reason in failed.reason
    assert server.endpoint.counters.eap_failures[reason] == 1
    assert server.endpoint.counters.handshakes["failed"] == 1
    assert not server.of(IkeSaEstablished) and not server.endpoint.ike_sa_ids()
    [exch] = client.of(ExchangeFailed)
    assert exch.notify == Notify.AUTHENTICATION_FAILED


def test_another_instance_continues_the_conversation_at_every_message() -> None:
    """After each answer the IKE SA moves to a new Responder through its JSON record, as when
    the keyd that answered is killed and another one takes the client's next message."""
    eap = local_eap()
    client, server = pair(eap)
    clock = Clock()
    connect(client, clock)
    config = server.endpoint.config
    instances = 0
    for _ in range(12):
        moved = transfer(client, server, clock.now)
        for ev in server.pull_events():
            if isinstance(ev, AddressRequested):
                server.endpoint.assign_address(ev.ike_sa_id, "10.99.0.9", clock.now)
        moved += transfer(server, client, clock.now)
        for ike_sa_id in server.endpoint.ike_sa_ids():
            record = json.loads(json.dumps(server.endpoint.export_ike_sa(ike_sa_id)))
            fresh = Responder(config)
            fresh.import_ike_sa(record)
            server = Side(fresh, server.events)
            instances += 1
        if not moved:
            break
    assert instances >= 5  # INIT, identity, challenge, success, final AUTH
    assert [e.identity for e in server.of(IkeSaEstablished)] == ["carol"]
    assert client.endpoint.virtual_ip == "10.99.0.9"


def test_final_auth_not_made_with_the_msk_is_refused() -> None:
    client, server = pair(local_eap())
    clock = Clock()
    connect(client, clock)
    run(client, server, clock, rounds=2)  # IKE_SA_INIT, then IKE_AUTH 1: identity asked
    [sa_id] = server.endpoint.ike_sa_ids()
    assert server.endpoint.export_ike_sa(sa_id)["state"] == "eap"
    for _ in range(2):  # identity → challenge, response → MSCHAPv2 success
        transfer(client, server, clock.now)
        transfer(server, client, clock.now)
    assert server.endpoint.export_ike_sa(sa_id)["state"] == "eap"
    client.endpoint._eap_peer._mschapv2.msk = bytes(64)  # a client whose MSK is not the one
    run(client, server, clock)
    [failed] = server.of(AuthenticationFailed)
    assert "bad auth" in failed.reason
    assert server.endpoint.counters.eap_failures["bad auth"] == 1
    assert client.of(ExchangeFailed)[0].notify == Notify.AUTHENTICATION_FAILED


class FakeRadiusServer:
    """The RADIUS server's side for unit tests: EAP-MSCHAPv2 with keyd.eap's authenticator,
    answered through the RADIUS codec (Access-Challenge / Accept with MPPE keys / Reject)."""

    def __init__(self, framed_ip: str | None = None) -> None:
        self.auth: Authenticator | None = None
        self.framed_ip = framed_ip
        self.requests = 0

    def answer(self, datagram: bytes) -> bytes:
        self.requests += 1
        request = radius.pull_packet(datagram)
        eap = request.eap_message()
        assert eap is not None
        if self.auth is None:  # the Response/Identity opens the conversation
            user = request.first(Attr.USER_NAME)
            assert user is not None
            self.auth = Authenticator("mschapv2", identity=user.decode(),
                                      password_for=USERS.get)
            action = self.auth.start()
        else:
            action = self.auth.receive(eap)
        authn = request.authenticator
        if isinstance(action, SendToPeer):
            return radius.push_response(RadiusCode.ACCESS_CHALLENGE, request.identifier, authn,
                                        [*radius.eap_attributes(action.packet),
                                         (Attr.STATE, b"st")], SECRET)
        if isinstance(action, EapSucceeded):
            attrs = [(Attr.EAP_MESSAGE, action.packet)]
            for kind, key in ((radius.MS_MPPE_RECV_KEY, action.msk[:32]),
                              (radius.MS_MPPE_SEND_KEY, action.msk[32:])):
                value = radius.encrypt_mppe_key(key, b"\x80\x07", authn, SECRET)
                attrs.append((Attr.VENDOR_SPECIFIC, radius.MICROSOFT.to_bytes(4, "big")
                              + bytes([kind, 2 + len(value)]) + value))
            if self.framed_ip:
                attrs.append((Attr.FRAMED_IP_ADDRESS, bytes(map(int,
                                                               self.framed_ip.split(".")))))
            return radius.push_response(RadiusCode.ACCESS_ACCEPT, request.identifier, authn,
                                        attrs, SECRET)
        return radius.push_response(RadiusCode.ACCESS_REJECT, request.identifier, authn,
                                    [(Attr.EAP_MESSAGE, action.packet)], SECRET)  # type: ignore[attr-defined]


def run_with_radius(client: Side, server: Side, clock: Clock, rad: FakeRadiusServer,
                    lose_first: bool = False) -> None:
    lost = False
    for _ in range(20):
        moved = transfer(client, server, clock.now)
        for ev in server.pull_events():
            if isinstance(ev, AddressRequested):
                server.endpoint.assign_address(ev.ike_sa_id, "10.99.0.1", clock.now)
            elif isinstance(ev, RadiusRequested):
                if lose_first and not lost:
                    lost = True
                    assert server.endpoint.radius_answer(ev.ike_sa_id, None, clock.now)
                    continue
                reply = rad.answer(ev.datagram)
                # a stray datagram first (the last byte flipped): dropped, the IKE SA
                # keeps waiting
                forged = reply[:-1] + bytes([reply[-1] ^ 0xFF])
                assert not server.endpoint.radius_answer(ev.ike_sa_id, forged, clock.now)
                assert server.endpoint.radius_answer(ev.ike_sa_id, reply, clock.now)
                moved += 1
        moved += transfer(server, client, clock.now)
        if not moved:
            return


def test_eap_radius_relay_establishes_with_framed_ip() -> None:
    client, server = pair(EapConfig("eap-radius", radius_servers=RADIUS))
    clock = Clock()
    connect(client, clock)
    rad = FakeRadiusServer(framed_ip="10.77.0.5")
    run_with_radius(client, server, clock, rad)
    [est] = server.of(IkeSaEstablished)
    assert est.identity == "carol" and est.virtual_ip == "10.77.0.5"
    assert not server.of(AddressRequested)  # RADIUS chose the address
    assert client.endpoint.virtual_ip == "10.77.0.5"
    assert rad.requests == 3  # identity, challenge response, success acknowledged


def test_eap_radius_reject_and_timeout_are_refused_and_counted() -> None:
    client, server = pair(EapConfig("eap-radius", radius_servers=RADIUS), password="nope")
    clock = Clock()
    connect(client, clock)
    run_with_radius(client, server, clock, FakeRadiusServer())
    assert server.endpoint.counters.eap_failures["radius reject"] == 1
    assert client.of(ExchangeFailed)[0].notify == Notify.AUTHENTICATION_FAILED
    client, server = pair(EapConfig("eap-radius", radius_servers=RADIUS))
    connect(client, clock)
    run_with_radius(client, server, clock, FakeRadiusServer(), lose_first=True)
    assert server.endpoint.counters.eap_failures["radius timeout"] == 1
    assert not server.of(IkeSaEstablished)


def test_retransmits_while_waiting_for_radius_are_ignored() -> None:
    client, server = pair(EapConfig("eap-radius", radius_servers=RADIUS))
    clock = Clock()
    connect(client, clock)
    transfer(client, server, clock.now)
    transfer(server, client, clock.now)   # IKE_SA_INIT done
    transfer(client, server, clock.now)   # IKE_AUTH 1: EAP-Identity asked locally
    transfer(server, client, clock.now)
    transfer(client, server, clock.now)   # identity → RADIUS
    [req] = [e for e in server.pull_events() if isinstance(e, RadiusRequested)]
    sent = client.sent[-1]
    server.endpoint.receive_datagram(sent.data, sent.src, sent.dst, clock.now)
    assert server.endpoint.counters.drops["waiting_for_radius"] == 1
    assert not server.drain()
    # an IKE SA record written now continues from before the relayed message
    record = server.endpoint.export_ike_sa(req.ike_sa_id)
    fresh = Responder(server.endpoint.config)
    fresh.import_ike_sa(json.loads(json.dumps(record)))
    fresh.receive_datagram(sent.data, sent.src, sent.dst, clock.now)
    assert [type(e) for e in Side(fresh).pull_events()] == [RadiusRequested]


def test_a_conversation_the_client_abandons_expires_and_each_round_renews_it() -> None:
    client, server = pair(local_eap())
    clock = Clock()
    connect(client, clock)
    run(client, server, clock, rounds=2)  # IKE_SA_INIT, IKE_AUTH 1: identity asked
    [sa_id] = server.endpoint.ike_sa_ids()
    clock.advance(20)
    transfer(client, server, clock.now)   # the identity, 20 s later: challenge sent
    transfer(server, client, clock.now)
    server.endpoint.handle_timer(clock.advance(20))  # 40 s after IKE_SA_INIT
    assert server.endpoint.has_ike_sa(sa_id)
    server.endpoint.handle_timer(clock.advance(11))  # the client never answers the challenge
    assert not server.endpoint.has_ike_sa(sa_id)
    assert any(isinstance(e, IkeSaDeleted) and "eap timed out" in e.reason
               for e in server.pull_events())


def test_eap_radius_framed_ip_is_kept_and_the_ipv6_address_comes_from_pool6() -> None:
    server_creds, client_creds = gateway_creds()
    conn = Connection("dual-eap", ("aes128gcm16-prfsha256-x25519",), ("aes128gcm16",),
                      remote_auth=RemoteAuth.EAP_RADIUS, local_auth=LocalAuth.PUBKEY,
                      pool6="fd00:99::/112", protected_networks=("10.20.0.0/16", "::/0"))
    server = Side(Responder(ResponderConfig(
        identity="vpn.example.net", credentials=server_creds, connections=[conn],
        eap=EapConfig("eap-radius", radius_servers=RADIUS))))
    client = Side(Initiator(InitiatorConfig(
        identity="192.0.2.10", credentials=client_creds, remote_identity="vpn.example.net",
        eap_identity="carol", eap_password="s3cret", request_address6=True,
        ts_local=("0.0.0.0/0", "::/0"), ts_remote=("0.0.0.0/0", "::/0"))))
    clock = Clock()
    connect(client, clock)
    rad = FakeRadiusServer(framed_ip="10.77.0.5")
    for _ in range(20):
        moved = transfer(client, server, clock.now)
        for ev in server.pull_events():
            if isinstance(ev, RadiusRequested):
                assert server.endpoint.radius_answer(ev.ike_sa_id, rad.answer(ev.datagram),
                                                     clock.now)
                moved += 1
            elif isinstance(ev, AddressRequested):
                # only the IPv6 address is left to decide: RADIUS gave the IPv4 one
                assert ev.ipv6 and not ev.ipv4 and ev.pool6 == "fd00:99::/112"
                server.endpoint.assign_address(ev.ike_sa_id, None, clock.now, "fd00:99::5")
        moved += transfer(server, client, clock.now)
        if not moved:
            break
    assert (client.endpoint.virtual_ip, client.endpoint.virtual_ip6) == ("10.77.0.5",
                                                                         "fd00:99::5")
    child = server.of(ChildSaEstablished)[0].child
    assert child.ts_remote == ("10.77.0.5/32", "fd00:99::5/128")
    assert child.ts_local == ("10.20.0.0/16", "::/0")
