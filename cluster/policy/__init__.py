"""Per-identity traffic policy (DESIGN.md, "packet filters at edge routers").

`rules`: the rule syntax (`10.20.0.0/16`, `10.20.0.80/32 tcp/80,443`, `udp/53`);
`matcher`: a policy compiled for the data plane's per-packet verdict (sans-I/O);
`binding`: which policy a Child SA carries, as keyd writes it into `sa/<spi>`.
docs/operator-guide.md ("Traffic policy") is the operator's description of all three.
"""

from cluster.policy.binding import ChildPolicy, bind_policy, policy_of_identity
from cluster.policy.matcher import (
    DropVerdict,
    PacketFilter,
    compile_policy,
    compile_rules,
    fail_closed,
)
from cluster.policy.rules import MODES, Mode, PolicyError, Rule, format_rule, parse_rule

__all__ = ["MODES", "ChildPolicy", "DropVerdict", "Mode", "PacketFilter", "PolicyError",
           "Rule", "bind_policy", "compile_policy", "compile_rules", "fail_closed",
           "format_rule", "parse_rule", "policy_of_identity"]
