"""The rule syntax of a traffic policy (policy/<name> `allowed` and `denied`).

A rule names destinations a client may (allowed) or may not (denied) reach:

    [ADDRESS] [PROTOCOL[/PORTS]]

- ADDRESS: an IPv4 or IPv6 network in CIDR form (`10.20.0.0/16`, `2001:db8::/32`), a bare
  address (a /32 or /128), or `any` (both families); omitted: `any`.
- PROTOCOL: `tcp`, `udp`, `sctp`, `icmp`, `icmpv6` (or `ipv6-icmp`), `gre`, `esp`, `ah`, or an
  IP protocol number 1-255; omitted: every protocol.
- PORTS (tcp, udp, sctp only): destination ports, a comma list of ports and ranges
  (`80,443`, `8000-8999`).

Either part may be left out, not both: `10.20.0.0/16`, `10.20.0.80/32 tcp/80,443`, `udp/53`,
`any icmp`. Host bits in a network are ignored (`10.20.0.1/16` is `10.20.0.0/16`), as they
are for traffic selectors. The canonical text (`format_rule`) is what `clusterctl policy
show` prints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Mode = Literal["full", "split", "guest"]
MODES: tuple[Mode, ...] = ("full", "split", "guest")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS: dict[str, int] = {
    "icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58,
    "ipv6-icmp": 58, "sctp": 132,
}
_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6", 47: "gre", 50: "esp",
          51: "ah"}
#: protocols whose packets carry ports where TCP's are (RFC 793, RFC 768, RFC 4960)
PORT_PROTOCOLS = frozenset((6, 17, 132))
MAX_RULES = 1024  # per list: a policy is a short list, not a routing table


class PolicyError(ValueError):
    """A rule or policy that is not valid; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule. `network` None: any address of both families; `protocol` None: any;
    `ports`: inclusive (first, last) destination port ranges, empty: any port."""

    network: Network | None
    protocol: int | None = None
    ports: tuple[tuple[int, int], ...] = ()

    @property
    def specificity(self) -> tuple[int, bool, bool]:
        """How narrow the rule is: the longer prefix first, then a named protocol, then
        ports. The narrowest matching rule decides (matcher.py)."""
        return (self.network.prefixlen if self.network is not None else 0,
                self.protocol is not None, bool(self.ports))


def _network(token: str) -> Network | None:
    if token.lower() == "any":
        return None
    try:
        return ipaddress.ip_network(token, strict=False)
    except ValueError:
        raise PolicyError(f"not an address or network: {token!r}") from None


def _looks_like_address(token: str) -> bool:
    return token.lower() == "any" or "." in token or ":" in token


def _port(text: str, rule: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 0xFFFF:
        raise PolicyError(f"{rule!r}: not a port 0-65535: {text!r}")
    return int(text)


def _protocol(token: str, rule: str) -> tuple[int, tuple[tuple[int, int], ...]]:
    name, slash, port_text = token.partition("/")
    key = name.lower()
    if key in PROTOCOLS:
        protocol = PROTOCOLS[key]
    elif key.isdigit() and 1 <= int(key) <= 255:
        protocol = int(key)
    else:
        raise PolicyError(f"{rule!r}: unknown protocol {name!r} (tcp, udp, sctp, icmp, "
                          "icmpv6, gre, esp, ah or a number 1-255)")
    if not slash:
        return protocol, ()
    if protocol not in PORT_PROTOCOLS:
        raise PolicyError(f"{rule!r}: ports only with tcp, udp or sctp")
    ports = []
    for part in port_text.split(","):
        first, dash, last = part.partition("-")
        lo = _port(first, rule)
        hi = _port(last, rule) if dash else lo
        if lo > hi:
            raise PolicyError(f"{rule!r}: port range {part!r} runs backwards")
        ports.append((lo, hi))
    return protocol, tuple(sorted(set(ports)))


def parse_rule(text: str) -> Rule:
    """The rule `text` stands for; PolicyError (one line) if it is not one."""
    if not isinstance(text, str):
        raise PolicyError(f"a rule is a string, not {type(text).__name__}")
    tokens = text.split()
    if not tokens:
        raise PolicyError("empty rule")
    if len(tokens) > 2:
        raise PolicyError(f"{text!r}: expected [ADDRESS] [PROTOCOL[/PORTS]]")
    network: Network | None = None
    protocol: int | None = None
    ports: tuple[tuple[int, int], ...] = ()
    first = tokens[0]
    if _looks_like_address(first):
        network = _network(first)
        rest = tokens[1:]
    elif len(tokens) == 2:
        raise PolicyError(f"{text!r}: the address comes first: ADDRESS PROTOCOL[/PORTS]")
    else:
        rest = tokens
    if rest:
        protocol, ports = _protocol(rest[0], text)
        if network is not None and (
                (protocol == 1 and network.version == 6)
                or (protocol == 58 and network.version == 4)):
            raise PolicyError(f"{text!r}: {_NAMES[protocol]} never runs over "
                              f"IPv{network.version}")
    return Rule(network, protocol, ports)


def format_rule(rule: Rule) -> str:
    """The canonical text of `rule` (parse_rule(format_rule(r)) == r)."""
    parts = []
    if rule.network is not None:
        parts.append(str(rule.network))
    if rule.protocol is not None:
        proto = _NAMES.get(rule.protocol, str(rule.protocol))
        if rule.ports:
            proto += "/" + ",".join(str(lo) if lo == hi else f"{lo}-{hi}"
                                    for lo, hi in rule.ports)
        parts.append(proto)
    return " ".join(parts) or "any"


def parse_rules(texts: list[str], what: str) -> tuple[Rule, ...]:
    """Every rule of one list (`allowed`, `denied`); PolicyError names the list."""
    if len(texts) > MAX_RULES:
        raise PolicyError(f"{what}: more than {MAX_RULES} rules")
    out = []
    for text in texts:
        try:
            out.append(parse_rule(text))
        except PolicyError as e:
            raise PolicyError(f"{what}: {e}") from None
    return tuple(out)
