"""Sans-I/O IKEv2 (RFC 7296) for keyd: the responder that negotiates for the cluster's VIP,
and an initiator for tests and the benchmark. No sockets, no asyncio, no etcd, no clock.

Driving it (aioquic style)::

    core = Responder(ResponderConfig(...), random=os.urandom, allocate_spi=spi_from_etcd)
    core.receive_datagram(udp_payload, src=(ip, port), dst=(ip, port), now=loop.time())
    core.handle_timer(now)            # when now >= core.get_timer()
    while (ev := core.next_event()):  # FIRST: persist (IkeSaUpdated -> export_ike_sa, ...)
        ...
    for d in core.datagrams_to_send():  # THEN send d.data from d.src to d.dst
        ...

- Datagrams are whole UDP payloads both ways: on the NAT-T port (`natt_port`, 4500) the core
  strips and adds the 4-byte non-ESP marker itself; ESP or anything else arriving there is
  dropped and counted (`counters.drops["esp_on_ike_port"]`), a NAT keepalive too.
- Events (keyd.ike.events) of one step come out before its datagrams, and
  `datagrams_to_send()` raises IkeUsageError while events are pending: persist, then send.
  IkeSaUpdated(id) → write `export_ike_sa(id)`; ChildSaEstablished(child) → write sa/<spi_in>;
  ChildSaDeleted / IkeSaDeleted → remove; IkeSaRekeyed(old, new, children) → rewrite the
  children's ike_sa_id; IkeSaEstablished, AuthenticationFailed, ExchangeFailed → log/metrics.
- Virtual IPs: an IKE_AUTH with CP(INTERNAL_IP4_ADDRESS and/or INTERNAL_IP6_ADDRESS, the
  latter on a connection with `pool6`) emits AddressRequested(ike_sa_id, identity,
  requested, …, ipv4, ipv6, requested6, pool6) and waits; the shell leases addresses and
  calls `assign_address(ike_sa_id, ip_or_None, now, ip6_or_None)`, which produces the
  IKE_AUTH answer (none of those asked for → INTERNAL_ADDRESS_FAILURE, IKE SA without Child
  SA). Retransmits meanwhile: ignored.
- EAP (§2.16, keyd/ike/eap_auth.py): an IKE_AUTH without AUTH starts the EAP round when
  `ResponderConfig.eap` is set. EAP relayed to RADIUS emits RadiusRequested(ike_sa_id,
  datagram, server, identifier) and waits: the shell sends the datagram (retransmitting the
  same bytes) and calls `radius_answer(ike_sa_id, reply_or_None, now)` (None: timed out;
  False back: the reply did not verify, keep waiting). Retransmits meanwhile: ignored.
- Stateless IKE_SA_INIT answers: `answer_statelessly(data, src, dst, now)` answers a new
  IKE_SA_INIT from its header and payload chain alone — a COOKIE when one is due (§2.6), or
  the error notify `refuse_new` names while the shell sets it (keyd: TEMPORARY_FAILURE
  while etcd is away) — and returns ("cookie" | "refused", UDP payload to send) without
  queueing it or keeping state; None: hand the datagram to `receive_datagram`, which
  decides the same for requests the peek cannot read.
- SPIs: `allocate_spi()` (injected) returns a cluster-unique inbound ESP SPI; `random(n)`
  (injected) gives nonces, IKE SPIs, IVs and cookie secrets.
- Persistence: `export_ike_sa(id) -> dict` (JSON-able, bytes as hex, contains keys: seal it)
  and `import_ike_sa(dict) -> id` let another keyd continue an IKE SA: answer the next or a
  retransmitted request (the cached last response is part of the state), rekey, delete,
  liveness. A malformed record raises IkeUsageError.
- Errors: IkeProtocolError (peer's fault, carries the notify to answer with) is caught at
  the edge of the core and becomes the RFC's answer or silence plus a counter in
  `core.counters` (IkeCounters: exchanges, errors, drops, handshakes, retransmits, cookies,
  half_open). IkeUsageError is the caller's misuse (unknown IKE SA, wrong state).
- `now` is seconds (float). Exported state carries absolute times (created_at, expires_at),
  so instances that continue each other's IKE SAs must pass the same clock: wall-clock time.
- Shell helpers: `has_ike_sa(id)`, `ike_sa_ids()`, `forget_ike_sa(id)` (drop from memory
  silently, e.g. to undo a step that could not be persisted), `busy(id)` (a request of ours
  is in flight), `get_timer()`.
- IKE fragmentation (RFC 7383, keyd/ike/fragments.py): announced when
  `ResponderConfig.fragmentation`; messages above `fragment_mtu` leave as several datagrams
  (a retransmission resends them all), received fragments are held within
  `fragment_limits` until complete (`core.fragments`: `incomplete`, `bytes_held`). The shell
  does nothing more: an IKE SA's fragments must only all reach the same core.
- Whom it accepts: `ResponderConfig.connections` (keyd/ike/connections.py: the first that
  accepts the client's IDi, auth round and suite is used) and `secrets` (PSKs and EAP
  passwords by identity), replaced at run time with `use_secrets(secrets)`.
- Our own requests: `delete_ike_sa(id, now)`, `delete_child_sa(id, spi_in, now)`,
  `check_liveness(id, now)`; retransmitted by `handle_timer`, the IKE SA is dropped when the
  peer never answers.
"""

from .config import Credentials, InitiatorConfig, ResponderConfig
from .connections import Connection, LocalAuth, RemoteAuth, select_connection
from .core import IkeEndpoint
from .datagram import Datagram
from .errors import IkeError, IkeProtocolError, IkeUsageError
from .events import (
    AddressRequested,
    AuthenticationFailed,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ExchangeFailed,
    IkeCounters,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRekeyed,
    IkeSaUpdated,
    RadiusRequested,
    Redirected,
)
from .initiator import Initiator
from .responder import Responder
from .secrets import Secrets

__all__ = [
    "AddressRequested",
    "AuthenticationFailed",
    "ChildSa",
    "ChildSaDeleted",
    "ChildSaEstablished",
    "Connection",
    "Credentials",
    "Datagram",
    "ExchangeFailed",
    "IkeCounters",
    "IkeEndpoint",
    "IkeError",
    "IkeEvent",
    "IkeProtocolError",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaMoved",
    "IkeSaRekeyed",
    "IkeSaUpdated",
    "IkeUsageError",
    "Initiator",
    "InitiatorConfig",
    "LocalAuth",
    "RadiusRequested",
    "Redirected",
    "RemoteAuth",
    "Responder",
    "ResponderConfig",
    "Secrets",
    "select_connection",
]
