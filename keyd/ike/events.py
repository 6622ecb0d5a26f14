"""Events the IKE core emits (pulled with `next_event()`), and its counters.

Events of one step come out before that step's datagrams: the shell persists IKE SA and
Child SA state first, then sends (`datagrams_to_send()` refuses while events are pending).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ChildSa:
    """A Child SA (ESP, tunnel mode) as a node needs it. Field names match the store's
    ChildSaRecord. GCM / ChaCha20-Poly1305 keys carry their 4-byte salt at the end."""

    spi_in: int  # the cluster receives with this SPI (ours)
    spi_out: int  # the client's SPI: the cluster sends with it
    ike_sa_id: str
    encr: str  # a cluster/esp name: "aes128gcm16", "aes256", "aes128ctr", "chacha20poly1305" …
    integ: str | None  # "sha256" | "sha384" | "sha512" | "sha1" | "aescmac"; None: an AEAD
    esn: bool
    enc_key_in: bytes = field(repr=False)  # decrypts what the client sends
    integ_key_in: bytes = field(repr=False)
    enc_key_out: bytes = field(repr=False)  # encrypts what the cluster sends
    integ_key_out: bytes = field(repr=False)
    ts_local: tuple[str, ...]  # our side (protected networks), CIDRs
    ts_remote: tuple[str, ...]  # the client side (virtual_ip/32 usually), CIDRs
    peer_addr: str
    peer_port: int
    udp_encap: bool
    virtual_ip: str | None
    identity: str  # the client's authenticated identity
    created_at: float  # the core's `now` when the SA was made
    soft_lifetime_s: int
    hard_lifetime_s: int
    replaces: int | None = None  # spi_in of the Child SA this one rekeyed
    policy: str | None = None  # the connection's traffic policy (policy/<name>) for the nodes
    # MOBIKE (RFC 4555) was negotiated: the client's address changes only by
    # UPDATE_SA_ADDRESSES, written to the record; nodes do not follow its ESP elsewhere
    mobike: bool = False
    virtual_ip6: str | None = None  # the client's IPv6 virtual address (INTERNAL_IP6_ADDRESS)


class IkeEvent:
    """Marker base class of every event of the IKE core."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class IkeSaUpdated(IkeEvent):
    """The IKE SA's exportable state changed: persist `export_ike_sa(ike_sa_id)`."""

    ike_sa_id: str


@dataclass(frozen=True, slots=True)
class IkeSaEstablished(IkeEvent):
    """IKE_AUTH completed. `initial_contact`: the peer asks to drop its older IKE SAs (§2.4)."""

    ike_sa_id: str
    identity: str
    peer_addr: str
    peer_port: int
    virtual_ip: str | None
    initial_contact: bool
    connection: str = ""  # the connection the client was accepted on
    virtual_ip6: str | None = None


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed(IkeEvent):
    """CREATE_CHILD_SA moved every Child SA of `old_ike_sa_id` to `new_ike_sa_id` (§2.18)."""

    old_ike_sa_id: str
    new_ike_sa_id: str
    children: tuple[ChildSa, ...]  # now under the new IKE SA: rewrite their ike_sa_id


@dataclass(frozen=True, slots=True)
class IkeSaMoved(IkeEvent):
    """MOBIKE (RFC 4555 §3.5): the client's verified new address; its Child SAs (in
    `children`, with the new address) are rewritten with the IKE SA, in one step."""

    ike_sa_id: str
    peer_addr: str
    peer_port: int
    children: tuple[ChildSa, ...]


@dataclass(frozen=True, slots=True)
class Redirected(IkeEvent):
    """RFC 5685: the gateway sends the client elsewhere. Initiator: `gateway` is where to
    connect next (with REDIRECTED_FROM); `during` is "ike_sa_init" (no IKE SA was made),
    "ike_auth" or "informational" (delete this IKE SA once the new one exists). Responder:
    a client was redirected (`during` "ike_sa_init" or "informational", answered)."""

    ike_sa_id: str
    gateway: str
    during: str


@dataclass(frozen=True, slots=True)
class IkeSaDeleted(IkeEvent):
    """The IKE SA is gone (DELETE, failed authentication, timeout): remove its record."""

    ike_sa_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChildSaEstablished(IkeEvent):
    """A Child SA exists: write it to the SA repository before the reply goes out."""

    child: ChildSa


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(IkeEvent):
    """A Child SA was deleted (DELETE, rekey completed, IKE SA gone)."""

    ike_sa_id: str
    spi_in: int


@dataclass(frozen=True, slots=True)
class AddressRequested(IkeEvent):
    """The peer asked for a virtual IP (CP CFG_REQUEST): answer with `assign_address`.

    It asks for an IPv4 address (INTERNAL_IP4_ADDRESS: `ipv4`), an IPv6 one
    (INTERNAL_IP6_ADDRESS: `ipv6`), or both; `requested` / `requested6` are the addresses it
    asked for, or None for "any". The IKE_AUTH answer waits for the decision; retransmits of
    the request meanwhile are ignored.
    """

    ike_sa_id: str
    identity: str
    requested: str | None
    # the peer sent INITIAL_CONTACT (RFC 7296 §2.4): it holds no other IKE SA with us, so
    # an address still leased to its identity may be given to it again
    initial_contact: bool = False
    connection: str = ""  # the connection the client was accepted on
    pool: str | None = None  # its pool (CIDR); None: the shell's default pool
    ipv4: bool = True
    ipv6: bool = False
    requested6: str | None = None
    pool6: str | None = None  # its IPv6 pool (CIDR); None: no IPv6 address is given


@dataclass(frozen=True, slots=True)
class RadiusRequested(IkeEvent):
    """An EAP response must go to a RADIUS server before the IKE_AUTH can be answered: send
    `datagram` to server number `server` of the EAP configuration (resend the same bytes on
    retransmission), then call `radius_answer(ike_sa_id, reply or None on timeout)`.
    Retransmits of the client's request meanwhile are ignored."""

    ike_sa_id: str
    datagram: bytes = field(repr=False)
    server: int
    identifier: int  # RADIUS Identifier: answers with another one are not for this request


@dataclass(frozen=True, slots=True)
class AuthenticationFailed(IkeEvent):
    """IKE_AUTH failed (AUTHENTICATION_FAILED sent, the IKE SA is dropped)."""

    ike_sa_id: str
    identity: str
    reason: str  # what went wrong, for the log (never a secret)
    cause: str = "other"  # the counter label (errors.AuthenticationError.cause)
    connection: str = ""  # the connection chosen, if one was


@dataclass(frozen=True, slots=True)
class ExchangeFailed(IkeEvent):
    """Initiator side: the peer answered with an error notify, or our request timed out."""

    ike_sa_id: str
    exchange: int
    notify: int | None
    reason: str


@dataclass(slots=True)
class IkeCounters:
    """Counters the shell exports (Prometheus): plain Counter objects keyed by label."""

    exchanges: Counter[str] = field(default_factory=Counter)  # by exchange name, requests
    errors: Counter[str] = field(default_factory=Counter)  # by notify name sent or reason
    drops: Counter[str] = field(default_factory=Counter)  # silently dropped, by reason
    handshakes: Counter[str] = field(default_factory=Counter)  # "ok" / "failed"
    # EAP conversations that failed, by reason (unknown user, bad password, radius reject,
    # radius timeout, bad auth, ...)
    eap_failures: Counter[str] = field(default_factory=Counter)
    auth_failures: Counter[str] = field(default_factory=Counter)  # by AuthenticationError.cause
    retransmits_answered: int = 0  # retransmitted requests answered from the cache
    retransmits_sent: int = 0  # our own requests sent again
    cookies_sent: int = 0
    half_open: int = 0  # gauge: IKE SAs between IKE_SA_INIT and IKE_AUTH
    fragments_incomplete: int = 0  # gauge: fragmented messages being reassembled (RFC 7383)
