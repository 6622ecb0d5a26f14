"""Every decoder the soak drives, imported here and nowhere else in soak/.

The studies and fuzz targets reach the project's decoders only through this module, so a
module moving between packages costs one line here, not a hunt through the soak code.
"""

from __future__ import annotations

from cluster.esp import (
    ENCR_NAMES,
    INTEG_NAMES,
    ChildSa,
    IvSource,
    SaCounters,
    SaKeys,
    SaTable,
    TrafficSelector,
    suite,
)
from cluster.esp import EspProtocolError as EspRemoteError
from cluster.esp.suites import make_cipher
from cluster.grants import component_grants
from cluster.node.handoff import HandoffError as HandoffRemoteError
from cluster.node.handoff import Ready, is_ready_message, pull_ready, push_ready
from cluster.pki import CertAuthority
from cluster.probe import ProbeError as HealthRemoteError
from cluster.probe import pull_probe, pull_reply, push_probe, push_reply
from cluster.procs import EtcdServer
from cluster.store import (
    Assignment,
    ChildSaRecord,
    DataKey,
    IkeSaRecord,
    KeydRecord,
    Keyspace,
    MalformedRecord,
    NodeRecord,
    PermissionDenied,
    Policy,
    PoolLease,
    PublicView,
    Record,
    SeqRecord,
    Store,
    WrongDataKey,
    decode_record,
    encode_record,
)
from cluster.store.rbac import setup_etcd_rbac
from keyd.eap import RemoteEapError
from keyd.eap.mschapv2 import MschapV2Server
from keyd.eap.packet import EapType, pull_eap, push_eap, read_identity
from keyd.eap.radius import (
    InvalidRadiusPacket,
    encrypt_mppe_key,
    framed_ip,
    mppe_key,
    pull_packet,
    push_response,
    verify_response,
)
from keyd.ike import (
    AddressRequested,
    Credentials,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)
from keyd.ike import IkeProtocolError as IkeRemoteError
from keyd.ike.message import Header, pull_message, push_message
from keyd.ike.payloads import EapPayload
from keyd.ike.protect import SkKeys, open_sk
from keyd.ike.protect import seal as seal_sk
from keyd.ike.transforms import ENCRS, INTEGS

__all__ = [
    "ENCRS",
    "ENCR_NAMES",
    "INTEGS",
    "INTEG_NAMES",
    "AddressRequested",
    "Assignment",
    "CertAuthority",
    "ChildSa",
    "ChildSaRecord",
    "Credentials",
    "DataKey",
    "EapPayload",
    "EapType",
    "EspRemoteError",
    "EtcdServer",
    "HandoffRemoteError",
    "Header",
    "HealthRemoteError",
    "IkeRemoteError",
    "IkeSaRecord",
    "Initiator",
    "InitiatorConfig",
    "InvalidRadiusPacket",
    "IvSource",
    "KeydRecord",
    "Keyspace",
    "MalformedRecord",
    "MschapV2Server",
    "NodeRecord",
    "PermissionDenied",
    "Policy",
    "PoolLease",
    "PublicView",
    "Ready",
    "Record",
    "RemoteEapError",
    "Responder",
    "ResponderConfig",
    "SaCounters",
    "SaKeys",
    "SaTable",
    "SeqRecord",
    "SkKeys",
    "Store",
    "TrafficSelector",
    "WrongDataKey",
    "component_grants",
    "decode_record",
    "encode_record",
    "encrypt_mppe_key",
    "framed_ip",
    "is_ready_message",
    "make_cipher",
    "mppe_key",
    "open_sk",
    "pull_eap",
    "pull_message",
    "pull_packet",
    "pull_probe",
    "pull_ready",
    "pull_reply",
    "push_eap",
    "push_message",
    "push_probe",
    "push_ready",
    "push_reply",
    "push_response",
    "read_identity",
    "seal_sk",
    "setup_etcd_rbac",
    "suite",
    "verify_response",
]
