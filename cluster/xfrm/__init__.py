"""Linux XFRM (the kernel's IPsec) over netlink, sans-I/O: states with their replay
counters, policies, replay-state events; one socket wrapper (`kernel`)."""

from cluster.xfrm.policy import Template, XfrmPolicy
from cluster.xfrm.state import (
    Aead,
    AeEvent,
    Auth,
    Cipher,
    Encap,
    Lifetime,
    Replay,
    StateInfo,
    XfrmState,
)
from cluster.xfrm.wire import KernelError, XfrmProtocolError

__all__ = [
    "AeEvent", "Aead", "Auth", "Cipher", "Encap", "KernelError", "Lifetime", "Replay",
    "StateInfo", "Template", "XfrmPolicy", "XfrmProtocolError", "XfrmState",
]
