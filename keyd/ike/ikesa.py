"""The state of one IKE SA, and its export to / import from a plain JSON-able dict.

Everything another keyd instance needs to continue the SA is exported: SPIs, suite, keys,
message IDs, the cached last response, addresses, identity, virtual IP and Child SAs. What
is not exported: an in-flight request of our own and a pending address decision (a keyd that
imports the SA simply answers the peer's retransmitted request afresh).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import IkeUsageError
from .events import ChildSa
from .keys import IkeKeys
from .proposals import parse_ike_suite
from .state import IkeState
from .transforms import IkeSuite

EXPORT_VERSION = 1
Address = tuple[str, int]


def ike_sa_id(spi_i: int, spi_r: int) -> str:
    """The IKE SA's name: both SPIs in hex (the etcd key `ike/<ike-sa-id>`)."""
    return f"{spi_i:016x}{spi_r:016x}"


@dataclass(slots=True)
class IkeSa:
    """One IKE SA. `is_initiator`: we are its original initiator (§2.2, the I flag)."""

    spi_i: int
    spi_r: int
    is_initiator: bool
    suite: IkeSuite
    keys: IkeKeys
    state: IkeState
    peer: Address  # where the peer's requests come from (and replies go)
    local: Address  # our address the peer talks to
    created_at: float
    ni: bytes = b""
    nr: bytes = b""
    init_request: bytes = b""  # RealMessage1 / RealMessage2 until IKE_AUTH is done (§2.15)
    init_response: bytes = b""
    peer_next_id: int = 0  # message ID of the peer's next request (window size 1, §2.3)
    my_next_id: int = 0  # message ID of our next request
    last_response: bytes = b""  # cached reply to request peer_next_id - 1 (§2.1)
    udp_encap: bool = False  # NAT detected (or forced): ESP in UDP (RFC 3948)
    peer_behind_nat: bool = False
    peer_identity: str = ""
    connection: str = ""  # the connection the peer was accepted on (keyd/ike/connections.py)
    virtual_ip: str | None = None
    virtual_ip6: str | None = None  # INTERNAL_IP6_ADDRESS given to the peer (RFC 7296 §3.15.1)
    peer_hashes: tuple[int, ...] = ()  # SIGNATURE_HASH_ALGORITHMS the peer sent (RFC 7427)
    fragmentation: bool = False  # both sent IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 §2.3)
    children: dict[int, ChildSa] = field(default_factory=dict)  # by spi_in
    rekeyed_to: str | None = None
    expires_at: float | None = None  # half-open or rekeyed SAs go away after this
    # the EAP round of IKE_AUTH (§2.16), as of the last answer: see keyd/ike/eap_auth.py
    eap: dict[str, Any] | None = None
    # MOBIKE (RFC 4555), once negotiated: keyd/ike/mobike.py (None: not negotiated)
    mobike: dict[str, Any] | None = None
    redirect_supported: bool = False  # the peer can be redirected (RFC 5685 §3)
    # not exported: our request in flight and its retransmission schedule
    outstanding: bytes = b""
    outstanding_kind: str = ""
    outstanding_ctx: dict[str, Any] = field(default_factory=dict)
    retransmit_at: float | None = None
    retransmits: int = 0

    @property
    def id(self) -> str:
        return ike_sa_id(self.spi_i, self.spi_r)

    def child_by_spi_out(self, spi_out: int) -> ChildSa | None:
        return next((c for c in self.children.values() if c.spi_out == spi_out), None)


_BYTES_CHILD = ("enc_key_in", "integ_key_in", "enc_key_out", "integ_key_out")


_CHILD_FIELDS = tuple(f.name for f in fields(ChildSa))
_KEY_FIELDS = tuple(f.name for f in fields(IkeKeys))


def _child_to_dict(c: ChildSa) -> dict[str, Any]:
    # field by field: dataclasses.asdict deep-copies, and this runs for every write
    d = {name: getattr(c, name) for name in _CHILD_FIELDS}
    for k in _BYTES_CHILD:
        d[k] = d[k].hex()
    d["ts_local"], d["ts_remote"] = list(c.ts_local), list(c.ts_remote)
    return d


def _child_from_dict(d: dict[str, Any]) -> ChildSa:
    d = dict(d)
    for k in _BYTES_CHILD:
        d[k] = bytes.fromhex(d[k])
    d["ts_local"], d["ts_remote"] = tuple(d["ts_local"]), tuple(d["ts_remote"])
    return ChildSa(**d)


def export_sa(sa: IkeSa) -> dict[str, Any]:
    """A JSON-able dict of the SA; bytes as hex. Contains key material: seal it at rest."""
    return {
        "version": EXPORT_VERSION,
        "ike_sa_id": sa.id,
        "spi_i": f"{sa.spi_i:016x}",
        "spi_r": f"{sa.spi_r:016x}",
        "is_initiator": sa.is_initiator,
        "suite": sa.suite.name,
        "keys": {k: getattr(sa.keys, k).hex() for k in _KEY_FIELDS},
        "state": sa.state.value,
        "peer": list(sa.peer),
        "local": list(sa.local),
        "created_at": sa.created_at,
        "ni": sa.ni.hex(),
        "nr": sa.nr.hex(),
        "init_request": sa.init_request.hex(),
        "init_response": sa.init_response.hex(),
        "peer_next_id": sa.peer_next_id,
        "my_next_id": sa.my_next_id,
        "last_response": sa.last_response.hex(),
        "udp_encap": sa.udp_encap,
        "peer_behind_nat": sa.peer_behind_nat,
        "peer_identity": sa.peer_identity,
        "connection": sa.connection,
        "virtual_ip": sa.virtual_ip,
        "virtual_ip6": sa.virtual_ip6,
        "peer_hashes": list(sa.peer_hashes),
        "fragmentation": sa.fragmentation,
        "children": [_child_to_dict(c) for c in sa.children.values()],
        "rekeyed_to": sa.rekeyed_to,
        "expires_at": sa.expires_at,
        "eap": sa.eap,
        "mobike": sa.mobike,
        "redirect_supported": sa.redirect_supported,
    }


def import_sa(d: dict[str, Any]) -> IkeSa:
    """Rebuild an IkeSa from `export_sa` output; anything malformed is IkeUsageError."""
    try:
        if d["version"] != EXPORT_VERSION:
            raise ValueError(f"export version {d['version']}")
        state = IkeState(d["state"])
        eap = d.get("eap")  # absent in records written before EAP
        if eap is not None and not isinstance(eap, dict):
            raise ValueError("eap is not an object")
        mobike = d.get("mobike")  # absent in records written before MOBIKE
        if mobike is not None and not (isinstance(mobike, dict)
                                       and isinstance(mobike.get("verified"), list)
                                       and isinstance(mobike.get("update_id"), int)):
            raise ValueError("mobike is not a MOBIKE state")
        # the pending IKE_AUTH is answered afresh: back to where its request was taken up
        if state == IkeState.WAIT_ADDRESS:
            state = IkeState.EAP_DONE if eap is not None else IkeState.HALF_OPEN
        elif state == IkeState.WAIT_RADIUS:
            state = IkeState.EAP if eap is not None and eap.get("auth") else IkeState.HALF_OPEN
        sa = IkeSa(
            spi_i=int(d["spi_i"], 16),
            spi_r=int(d["spi_r"], 16),
            is_initiator=bool(d["is_initiator"]),
            suite=parse_ike_suite(d["suite"]),
            keys=IkeKeys(**{k: bytes.fromhex(v) for k, v in d["keys"].items()}),
            state=state,
            peer=(str(d["peer"][0]), int(d["peer"][1])),
            local=(str(d["local"][0]), int(d["local"][1])),
            created_at=float(d["created_at"]),
            ni=bytes.fromhex(d["ni"]),
            nr=bytes.fromhex(d["nr"]),
            init_request=bytes.fromhex(d["init_request"]),
            init_response=bytes.fromhex(d["init_response"]),
            peer_next_id=int(d["peer_next_id"]),
            my_next_id=int(d["my_next_id"]),
            last_response=bytes.fromhex(d["last_response"]),
            udp_encap=bool(d["udp_encap"]),
            peer_behind_nat=bool(d["peer_behind_nat"]),
            peer_identity=str(d["peer_identity"]),
            connection=str(d.get("connection", "")),  # absent in records of before connections
            virtual_ip=d["virtual_ip"],
            virtual_ip6=d.get("virtual_ip6"),  # absent in records of before IPv6 pools
            peer_hashes=tuple(int(h) for h in d["peer_hashes"]),
            fragmentation=bool(d.get("fragmentation", False)),  # absent: records of before
            rekeyed_to=d["rekeyed_to"],
            expires_at=d["expires_at"],
            eap=eap,
            mobike=mobike,
            redirect_supported=bool(d.get("redirect_supported", False)),
        )
        for c in d["children"]:
            child = _child_from_dict(c)
            sa.children[child.spi_in] = child
        if sa.id != d["ike_sa_id"]:
            raise ValueError("ike_sa_id does not match the SPIs")
        return sa
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, IkeUsageError) as e:
        raise IkeUsageError(f"malformed IKE SA record: {e}") from None
