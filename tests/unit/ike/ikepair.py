"""Two IKE endpoints in one process: `transfer(a, b)`, a virtual clock, PSK/cert configs."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from keyd.ike import (
    AddressRequested,
    Credentials,
    Datagram,
    IkeEvent,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)

CLIENT = ("192.0.2.10", 500)
VIP = ("203.0.113.10", 500)
PSK = b"correct horse battery staple"


@dataclass
class Clock:
    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Side:
    """An endpoint plus everything it emitted, in order."""

    endpoint: Any  # a Responder or an Initiator
    events: list[IkeEvent] = field(default_factory=list)
    sent: list[Datagram] = field(default_factory=list)

    def drain(self) -> list[Datagram]:
        while (ev := self.endpoint.next_event()) is not None:
            self.events.append(ev)
        out = self.endpoint.datagrams_to_send()
        self.sent += out
        return out

    def pull_events(self) -> list[IkeEvent]:
        got = []
        while (ev := self.endpoint.next_event()) is not None:
            self.events.append(ev)
            got.append(ev)
        return got

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


def transfer(a: Side, b: Side, now: float, mutate: Callable[[bytes], bytes] | None = None) -> int:
    """Deliver everything `a` wants to send to `b`; returns how many datagrams moved."""
    grams = a.drain()
    for d in grams:
        b.endpoint.receive_datagram(mutate(d.data) if mutate else d.data, d.src, d.dst, now)
    return len(grams)


def run(client: Side, server: Side, clock: Clock, pool: str | None = "10.99.0.1",
        rounds: int = 10) -> None:
    """Exchange until both are quiet; answer address requests from `pool` (one address)."""
    for _ in range(rounds):
        moved = transfer(client, server, clock.now)
        for ev in server.pull_events():
            if isinstance(ev, AddressRequested) and isinstance(server.endpoint, Responder):
                server.endpoint.assign_address(ev.ike_sa_id, pool, clock.now)
        moved += transfer(server, client, clock.now)
        if not moved:
            return


# ---- certificates -----------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-cluster test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    ca: x509.Certificate
    ca_key: Any

    def issue(self, cn: str, san: list[x509.GeneralName], key: Any,
              days: int = 30, issuer: tuple[x509.Certificate, Any] | None = None,
              ca: bool = False) -> x509.Certificate:
        icert, ikey = issuer or (self.ca, self.ca_key)
        now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(icert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days)))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        return b.sign(ikey, hashes.SHA256())


def make_pki(kind: str = "ecdsa") -> Pki:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    ca = (x509.CertificateBuilder().subject_name(_name("Test CA")).issuer_name(_name("Test CA"))
          .public_key(key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    return Pki(ca, key)


CERT_TIME = datetime.datetime(2026, 1, 15, tzinfo=datetime.UTC)


def psk_pair(ike: str = "aes128gcm16-prfsha256-x25519", esp: str = "aes128gcm16",
             server_ike: list[str] | None = None, server_esp: list[str] | None = None,
             client_esp: list[str] | None = None, client_kw: dict[str, Any] | None = None,
             **server_kw: Any) -> tuple[Side, Side]:
    server = Responder(ResponderConfig(
        identity="vpn.example.net", credentials=Credentials(psk=PSK),
        ike_proposals=server_ike or [ike], esp_proposals=server_esp or [esp],
        protected_networks=["10.20.0.0/16"], dns=["10.20.0.53"], **server_kw))
    client = Initiator(InitiatorConfig(
        identity="client@example.net", credentials=Credentials(psk=PSK),
        ike_proposals=[ike], esp_proposals=client_esp or [esp], **(client_kw or {})))
    return Side(client), Side(server)
