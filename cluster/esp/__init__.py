"""Sans-I/O ESP (RFC 4303 tunnel mode, RFC 3948 UDP encapsulation) for the node data plane.

No sockets, no clock (`now` is passed in), no etcd. `ChildSa` seals and opens packets and
keeps the sequence state (`SaCounters`) another node needs to continue it; `SaTable`
demultiplexes UDP/4500 payloads by SPI; `IvSource` makes AEAD nonces cluster-unique.
"""

from cluster.esp.errors import DropReason, EspProtocolError, EspUsageError
from cluster.esp.nonce import IvSource, prefix_from_revision
from cluster.esp.replay import MAX_WINDOW, MIN_WINDOW, ReplayWindow, infer_seq
from cluster.esp.sa import ChildSa, SaCounters, SaKeys
from cluster.esp.selector import TrafficSelector
from cluster.esp.suites import ENCR_NAMES, INTEG_NAMES, Suite, suite
from cluster.esp.table import Decrypted, Dropped, EspEvent, IkeMessage, Keepalive, SaTable

__all__ = [
    "ENCR_NAMES",
    "INTEG_NAMES",
    "MAX_WINDOW",
    "MIN_WINDOW",
    "ChildSa",
    "Decrypted",
    "DropReason",
    "Dropped",
    "EspEvent",
    "EspProtocolError",
    "EspUsageError",
    "IkeMessage",
    "IvSource",
    "Keepalive",
    "ReplayWindow",
    "SaCounters",
    "SaKeys",
    "SaTable",
    "Suite",
    "TrafficSelector",
    "infer_seq",
    "prefix_from_revision",
    "suite",
]
