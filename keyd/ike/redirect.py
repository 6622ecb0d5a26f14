"""Redirect (RFC 5685): a gateway sends clients to another gateway.

- IKE_SA_INIT (§4.2): a client that sends REDIRECT_SUPPORTED, to a responder configured to
  send new clients elsewhere (`redirect_to`: a draining keyd, a cluster in maintenance), is
  answered with REDIRECT alone (the new gateway and the client's nonce, which proves the
  answer belongs to its request); no IKE SA is made. A client that does not announce
  support is served as usual (it could not follow).
- INFORMATIONAL (§5): an established client is asked to move (`redirect`); it answers,
  connects to the new gateway (with REDIRECTED_FROM naming us) and deletes this IKE SA.
  A client that never announced REDIRECT_SUPPORTED is not asked (§3: it must not be).
- Initiator: announces support, follows a REDIRECT of either kind (`Redirected` event;
  the test or benchmark connects a new Initiator to the gateway named).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from .buffer import Buffer
from .constants import ExchangeType, Flag, Notify
from .core import IkeEndpoint
from .datagram import RequestContext
from .errors import IkeProtocolError, IkeUsageError
from .events import IkeSaUpdated, Redirected
from .ikesa import Address, IkeSa
from .message import Header, Message, push_message
from .payloads import NoncePayload, NotifyPayload, Payload, find, notifies

# §9: Gateway Identity Types
GW_IPV4, GW_IPV6, GW_FQDN = 1, 2, 3


def gateway_identity(gateway: str) -> bytes:
    """§9: type, length, identity — an address, else an FQDN."""
    try:
        ip = ipaddress.ip_address(gateway)
    except ValueError:
        name = gateway.rstrip(".").encode("ascii")
        if not name or len(name) > 255:
            raise IkeUsageError(f"not a gateway address or name: {gateway!r}") from None
        return bytes([GW_FQDN, len(name)]) + name
    packed = ip.packed
    return bytes([GW_IPV4 if ip.version == 4 else GW_IPV6, len(packed)]) + packed


def pull_gateway(buf: Buffer) -> str:
    """The gateway of a REDIRECT / REDIRECTED_FROM; IkeProtocolError if malformed."""
    kind, length = buf.pull_uint8(), buf.pull_uint8()
    data = buf.pull_bytes(length)
    if (kind, length) in ((GW_IPV4, 4), (GW_IPV6, 16)):
        return str(ipaddress.ip_address(data))
    if kind == GW_FQDN and length:
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            pass
    raise IkeProtocolError("malformed gateway identity", Notify.INVALID_SYNTAX)


def redirect_payload(gateway: str, nonce: bytes = b"") -> NotifyPayload:
    """§9: REDIRECT (with the initiator's nonce in IKE_SA_INIT only)."""
    return NotifyPayload(Notify.REDIRECT, gateway_identity(gateway) + nonce)


def parse_redirect(data: bytes) -> tuple[str, bytes]:
    """(gateway, nonce data) of a REDIRECT's data."""
    buf = Buffer(data)
    gateway = pull_gateway(buf)
    return gateway, buf.pull_rest()


class Redirection(IkeEndpoint):
    """The RFC 5685 exchanges of both roles (see the module docstring)."""

    redirect_supported: bool = True  # an initiator announces support (and follows)

    # ---- responder -----------------------------------------------------------------------

    def _redirect_new_client(self, msg: Message, src: Address, dst: Address,
                             gateway: str | None) -> bool:
        """§4.2: answer IKE_SA_INIT with REDIRECT if a gateway is set and the client can
        follow; True: answered (nothing else to do)."""
        ps = msg.payloads
        if gateway is None or not notifies(ps, Notify.REDIRECT_SUPPORTED):
            return False
        ni = find(ps, NoncePayload)
        h = msg.header
        reply = Header(h.spi_i, 0, 0, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
        self.counters.exchanges["REDIRECT"] += 1
        self._events.append(Redirected(f"{h.spi_i:016x}{0:016x}", gateway, "ike_sa_init"))
        answer = [redirect_payload(gateway, ni.data if ni else b"")]
        self._send(push_message(reply, answer), dst, src)
        return True

    def _note_redirect_support(self, sa: IkeSa, init_request: Sequence[Payload]) -> None:
        """Remember that the client may be redirected later (§3)."""
        if notifies(init_request, Notify.REDIRECT_SUPPORTED) \
                or notifies(init_request, Notify.REDIRECTED_FROM):
            sa.redirect_supported = True

    def redirect(self, ike_sa_id: str, gateway: str, now: float) -> None:
        """§5: ask an established client to move to `gateway` (an INFORMATIONAL with
        REDIRECT); IkeUsageError if it never said it can."""
        sa = self._requestable(ike_sa_id)
        if not sa.redirect_supported:
            raise IkeUsageError(f"IKE SA {ike_sa_id}: the client does not support "
                                     "redirect (RFC 5685)")
        self._start_request(sa, ExchangeType.INFORMATIONAL, [redirect_payload(gateway)],
                            "redirect", {"gateway": gateway}, now)

    def _on_redirect_response(self, sa: IkeSa, payloads: list[Payload], ctx: dict[str, Any],
                              now: float) -> None:
        self.counters.exchanges["REDIRECT"] += 1
        self._events.append(Redirected(sa.id, ctx["gateway"], "informational"))
        self._events.append(IkeSaUpdated(sa.id))

    # ---- initiator ------------------------------------------------------------------------

    def _redirect_init_payloads(self, redirected_from: str | None) -> list[Payload]:
        """§4.1: what an initiator's IKE_SA_INIT carries."""
        if redirected_from is not None:
            return [NotifyPayload(Notify.REDIRECTED_FROM, gateway_identity(redirected_from))]
        return [NotifyPayload(Notify.REDIRECT_SUPPORTED)] if self.redirect_supported else []

    def _redirected_in_init(self, sa: IkeSa, msg: Message) -> bool:
        """§4.2, initiator: a REDIRECT answering our IKE_SA_INIT (it must carry our nonce:
        else it is not for this request, and ignored). True: the SA is gone."""
        got = notifies(msg.payloads, Notify.REDIRECT)
        if not got or not self.redirect_supported:
            return False
        try:
            gateway, nonce = parse_redirect(got[0].data)
        except IkeProtocolError:
            self._drop("malformed_redirect")
            return True
        if nonce != sa.ni:
            self._drop("redirect_nonce_mismatch")
            return True
        self._events.append(Redirected(sa.id, gateway, "ike_sa_init"))
        self._remove_sa(sa, f"redirected to {gateway}")
        return True

    def _on_informational_request(
        self, sa: IkeSa, payloads: list[Payload], ctx: RequestContext, now: float
    ) -> list[Payload] | None:
        got = notifies(payloads, Notify.REDIRECT)
        if got and sa.is_initiator and self.redirect_supported:
            try:
                gateway, _ = parse_redirect(got[0].data)
            except IkeProtocolError:
                self._drop("malformed_redirect")
            else:
                self._events.append(Redirected(sa.id, gateway, "informational"))
        return super()._on_informational_request(sa, payloads, ctx, now)
