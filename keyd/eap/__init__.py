"""Sans-I/O EAP (RFC 3748) for IKEv2's EAP round (RFC 7296 §2.16): the packet codec,
EAP-Identity, EAP-MSCHAPv2 (authenticator and peer) and the relay to RADIUS (RFC 3579).
No sockets, no clock: the caller carries packets and datagrams and says when a RADIUS server
timed out."""

from .authenticator import METHODS, Authenticator
from .errors import EapError, LocalEapError, RemoteEapError
from .events import EapAction, EapFailed, EapSucceeded, SendToPeer, SendToRadius
from .peer import Peer
from .relay import NasInfo, RadiusRelay, RadiusServer

__all__ = [
    "METHODS",
    "Authenticator",
    "EapAction",
    "EapError",
    "EapFailed",
    "EapSucceeded",
    "LocalEapError",
    "NasInfo",
    "Peer",
    "RadiusRelay",
    "RadiusServer",
    "RemoteEapError",
    "SendToPeer",
    "SendToRadius",
]
