"""Real strongSwan in the lab: charon with kernel-libipsec (ESP in userspace over TUN), one per
namespace, each in its own mount namespace with a private /run (pid file, VICI socket).

A client may run with kernel IPsec instead (`kernel_ipsec`): charon loads kernel-netlink for
both its IPsec and its networking backend and no kernel-libipsec, so its Child SAs are XFRM
states and policies in its namespace's kernel, its virtual IP sits on its outer interface and
its routes go into table 220 (charon's defaults), and a MOBIKE update changes the states'
addresses in place. That needs a kernel with ESP (`kernel_esp_missing` says why not): this
machine's has none, the VM of cluster/lab/vm.py has (tests/kernel).

Renders strongswan.conf / swanctl.conf for lab clients and for the "baseline gateway" (a
charon responder standing at the VIP in keyd's place), starts charon, and talks to it with
swanctl inside the same mount namespace.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.lab import addresses as A
from cluster.lab.errors import LabError
from cluster.lab.netns import run
from cluster.lab.teardown import running
from cluster.lab.vm import patient

CHARON = "/usr/lib/ipsec/charon"
PLUGINS = ("openssl nonce random x509 pem pkcs1 pkcs8 pubkey revocation constraints curve25519 "
           "gmp aes sha1 sha2 hmac gcm chapoly ctr cmac kdf attr kernel-libipsec kernel-netlink "
           "socket-default vici eap-identity eap-mschapv2 eap-tls")
#: a client with kernel IPsec: kernel-netlink for SAs and policies too
KERNEL_IPSEC_PLUGINS = " ".join(p for p in PLUGINS.split() if p != "kernel-libipsec")
DEFAULT_IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
DEFAULT_ESP_PROPOSAL = "aes128gcm16"
# What the baseline gateway accepts: the proposals docs/configuration.md lists for keyd.
GATEWAY_IKE_PROPOSALS = ("aes128gcm16-prfsha256-x25519, aes256-sha384-ecp384, "
                         "chacha20poly1305-prfsha256-x25519, aes128-sha256-modp2048, default")
GATEWAY_ESP_PROPOSALS = "aes128gcm16, aes256-sha256, chacha20poly1305, aes128gcm16-esn, default"


def strongswan_conf(log_path: Path, kernel_ipsec: bool = False) -> str:
    """charon's strongswan.conf: ESP in kernel-libipsec, or with `kernel_ipsec` in the
    kernel (XFRM, through kernel-netlink)."""
    return f"""\
charon {{
  load_modular = no
  load = {KERNEL_IPSEC_PLUGINS if kernel_ipsec else PLUGINS}
  install_routes = yes
  retransmit_timeout = 2.0
  retransmit_tries = 3
  filelog {{
    lab {{
      path = {log_path}
      time_format = %b %e %T
      default = 1
      ike = 2
      flush_line = yes
    }}
  }}
}}
"""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What one lab client asks for."""

    identity: str            # eap-mschapv2: "" claims the client's address (as Windows)
    auth: str                # "psk" | "cert" | "eap-mschapv2" | "eap-tls"
    psk: str
    ca_cert: Path
    cert: Path | None = None
    key: Path | None = None
    ike_proposal: str = DEFAULT_IKE_PROPOSAL
    esp_proposal: str = DEFAULT_ESP_PROPOSAL
    dpd_delay_s: int = 10
    # also an IPv6 virtual address (`vips = 0.0.0.0,::`) and every destination of both
    # families (`remote_ts = 0.0.0.0/0,::/0`, narrowed by the gateway), as a dual-stack
    # native client asks
    ipv6: bool = False
    eap_user: str = ""       # eap-mschapv2: the EAP identity and its password
    eap_password: str = ""
    # how the client authenticates the gateway: "pubkey" (its certificate, from the lab CA)
    # or "psk" (the client's own PSK, both ways: Apple's "shared secret", Android's
    # "IKEv2/IPSec PSK")
    remote_auth: str = "pubkey"
    # ESP in the kernel (XFRM through kernel-netlink) instead of kernel-libipsec: rendered
    # into strongswan.conf, not swanctl.conf
    kernel_ipsec: bool = False


def client_swanctl_conf(c: ClientConfig) -> str:
    # The gateway proves itself with its certificate, or (remote_auth = psk) with the PSK
    # the client proves itself with; the client with the PSK or its own certificate.
    if c.remote_auth == "psk":
        remote = f"auth = psk\n      id = {A.GATEWAY_ID}"
    else:
        remote = f"auth = pubkey\n      cacerts = {c.ca_cert}\n      id = {A.GATEWAY_ID}"
    if c.auth == "cert":
        local = f"auth = pubkey\n      certs = {c.cert}\n      id = {c.identity}"
        secrets = ""   # the private key is loaded from the swanctl directory's private/
    elif c.auth == "eap-tls":
        # as the strongSwan app: EAP-TLS with a client certificate, checked by the RADIUS
        # server behind keyd; the EAP server must prove the gateway's identity
        local = f"auth = eap-tls\n      certs = {c.cert}\n      id = {c.identity}"
        secrets = ""
    elif c.auth == "eap-mschapv2":
        # as Windows: the IKE identity is the client's address (charon's default), the user
        # name goes in EAP-Identity; as Android: an IKE identity of the user's choosing
        local = f"auth = eap-mschapv2\n      eap_id = {_quote(c.eap_user)}"
        if c.identity:
            local += f"\n      id = {c.identity}"
        secrets = (f"eap-lab {{\n    id = {_quote(c.eap_user)}\n"
                   f"    secret = {_quote(c.eap_password)}\n  }}")
    else:
        local = f"auth = psk\n      id = {c.identity}"
        secrets = f"ike-lab {{\n    secret = {_quote(c.psk)}\n  }}"
    return f"""\
connections {{
  lab {{
    version = 2
    remote_addrs = {A.VIP}
    vips = {"0.0.0.0,::" if c.ipv6 else "0.0.0.0"}
    encap = yes
    proposals = {c.ike_proposal}
    dpd_delay = {c.dpd_delay_s}s
    local {{
      {local}
    }}
    remote {{
      {remote}
    }}
    children {{
      lab {{
        remote_ts = {"0.0.0.0/0,::/0" if c.ipv6 else A.PROTECTED_NETWORK}
        esp_proposals = {c.esp_proposal}
        dpd_action = restart
      }}
    }}
  }}
}}
secrets {{
  {secrets}
}}
"""


def gateway_swanctl_conf(psk: str, cert: Path, ca_cert: Path,
                         eap_users: Sequence[tuple[str, str]] = (),
                         local_addr: str = A.VIP) -> str:
    """The baseline gateway: a charon responder at the VIP that proves itself with its
    certificate, as keyd does, and accepts clients with the PSK or a lab certificate, and
    the `eap_users` (name, password) by EAP-MSCHAPv2 (any IKE identity; the user name is
    asked for with EAP-Identity, as keyd's lab-eap connection does)."""
    children = f"""children {{
      lab {{
        local_ts = {A.PROTECTED_NETWORK}
        esp_proposals = {GATEWAY_ESP_PROPOSALS}
      }}
    }}"""
    eap = "".join(f"  eap-{i} {{\n    id = {_quote(user)}\n    secret = {_quote(password)}\n"
                  "  }\n" for i, (user, password) in enumerate(eap_users))
    # No MOBIKE: the gateway would announce its back-end address and the client would move
    # its IKE SA there, around the VIP.
    common = f"""version = 2
    local_addrs = {local_addr}
    mobike = no
    pools = lab-pool
    proposals = {GATEWAY_IKE_PROPOSALS}
    dpd_delay = 30s"""
    remotes = {"lab-psk": "auth = psk",
               "lab-cert": f"auth = pubkey\n      cacerts = {ca_cert}",
               "lab-eap": "auth = eap-mschapv2\n      eap_id = %any"}
    connections = "".join(f"""  {name} {{
    {common}
    local {{
      auth = pubkey
      certs = {cert}
      id = {A.GATEWAY_ID}
    }}
    remote {{
      {remote}
    }}
    {children}
  }}
""" for name, remote in remotes.items())
    return f"""\
connections {{
{connections}}}
pools {{
  lab-pool {{
    addrs = {A.POOL}
  }}
}}
secrets {{
  ike-lab {{
    secret = {_quote(psk)}
  }}
{eap}}}
"""


#: a throw-away ESP state (in UDP, AES-GCM, as the lab's clients use) in a throw-away network
#: namespace: what a kernel-IPsec client's charon will ask the kernel for
_PROBE_STATE = ("ip xfrm state add src 192.0.2.250 dst 192.0.2.251 proto esp spi 0x00000101 "
                "reqid 1 mode tunnel encap espinudp 4500 4500 0.0.0.0 "
                "aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128")


def kernel_esp_missing() -> str | None:
    """Why this machine's kernel cannot hold a kernel-IPsec client's Child SAs (None: it can):
    it is asked to install an ESP-in-UDP state in a network namespace that goes away with the
    probe."""
    script = f"modprobe -q -a esp4 xfrm_user 2>/dev/null; {_PROBE_STATE}"
    r = run(["unshare", "--net", "sh", "-c", script], check=False, timeout_s=15)
    if r.returncode == 0:
        return None
    said = " ".join((r.stderr or r.stdout).split())[-200:] or f"exit {r.returncode}"
    return f"the kernel ({os.uname().release}) cannot install an XFRM ESP state: {said}"


def swanctl_dir(directory: Path, conf: str, key: Path | None) -> Path:
    """A swanctl directory: swanctl.conf (0600) and, for certificate auth, private/<key>.

    swanctl loads private keys only from its directory (secrets.private* holds passphrases),
    so each charon gets its own directory, passed as SWANCTL_DIR.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "swanctl.conf"
    path.touch(mode=0o600)
    path.write_text(conf)
    if key is not None:
        private = directory / "private"
        private.mkdir(mode=0o700, exist_ok=True)
        (private / key.name).touch(mode=0o600)
        (private / key.name).write_bytes(key.read_bytes())
    return path


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def charon_argv(netns: str, conf: Path) -> list[str]:
    """charon in netns, in a fresh mount namespace whose /run is a private tmpfs.

    `ip netns exec` and `unshare` exec in place and the shell execs charon, so the PID the
    caller sees is charon's own, and nsenter -t PID -m -n reaches its /run and network.
    """
    script = (f"mount -t tmpfs -o mode=0755 tmpfs /run && "
              f"STRONGSWAN_CONF={shlex.quote(str(conf))} exec {CHARON}")
    return ["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private",
            "sh", "-c", script]


def in_charon(pid: int, argv: list[str]) -> list[str]:
    """argv run inside charon's network and mount namespace, and its root: entering a mount
    namespace puts a process at that namespace's own root, which is not charon's where the
    lab runs in a chroot (`make fresh-check`)."""
    return ["nsenter", "-t", str(pid), "-m", "-n", "-r", *argv]


def swanctl(pid: int, *args: str, timeout_s: float = 30.0, check: bool = True) -> str:
    return run(in_charon(pid, ["swanctl", *args]), timeout_s=timeout_s, check=check).stdout


def wait_vici(pid: int, timeout_s: float = 15.0) -> None:
    """Wait until charon answers on its VICI socket."""
    timeout_s = patient(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        r = run(in_charon(pid, ["swanctl", "--stats"]), check=False, timeout_s=10)
        if r.returncode == 0:
            return
        if not running(pid):
            raise LabError(f"charon (pid {pid}) exited before it answered on VICI")
        if time.monotonic() > deadline:
            raise LabError(f"charon (pid {pid}) does not answer on VICI after {timeout_s:g}s: "
                           f"{(r.stderr or r.stdout).strip()[-200:]}")
        time.sleep(0.1)


def load(pid: int, swanctl_conf: Path) -> None:
    """Load connections, pools and credentials from swanctl_conf's directory."""
    run(in_charon(pid, ["env", f"SWANCTL_DIR={swanctl_conf.parent}", "swanctl", "--load-all",
                        "--noprompt", "--file", str(swanctl_conf)]), timeout_s=30)


def initiate(pid: int, timeout_s: int = 20) -> None:
    """Bring the lab connection up; a clear error with charon's last words if it fails."""
    timeout_s = int(patient(timeout_s))
    r = run(in_charon(pid, ["swanctl", "--initiate", "--ike", "lab", "--child", "lab",
                            "--timeout", str(timeout_s)]), check=False, timeout_s=timeout_s + 10)
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        raise LabError("strongSwan client could not connect: " + " | ".join(lines[-3:]))


@dataclass(frozen=True, slots=True)
class IkeSaView:
    """One IKE SA as `swanctl --list-sas` shows it."""

    name: str
    uniqueid: int
    state: str
    spi_i: str
    spi_r: str
    local: str
    remote: str
    virtual_ip: str | None
    child_spis: tuple[tuple[str, str], ...]   # (in, out) per installed Child SA
    virtual_ip6: str | None = None


_IKE = re.compile(r"^(\S+): #(\d+), (\w+), IKEv2, ([0-9a-f]+)_i\*? ([0-9a-f]+)_r\*?", re.M)
_LOCAL = re.compile(r"^  local\s+'[^']*' @ (\S+)(?: \[([^\]]+)\])?", re.M)
_REMOTE = re.compile(r"^  remote\s+'[^']*' @ (\S+)", re.M)
_CHILD = re.compile(r"^  \S+: #\d+, reqid \d+, (\w+),[^\n]*\n(?:    .*\n)*?"
                    r"    in  ([0-9a-f]{8}).*\n    out ([0-9a-f]{8})", re.M)


def parse_sas(text: str) -> list[IkeSaView]:
    """Parse the text `swanctl --list-sas` prints (strongSwan 5.9)."""
    starts = [m.start() for m in _IKE.finditer(text)] + [len(text)]
    views = []
    for a, b in itertools.pairwise(starts):
        block = text[a:b]
        m = _IKE.match(block)
        assert m is not None
        local = _LOCAL.search(block)
        remote = _REMOTE.search(block)
        children = tuple((c.group(2), c.group(3)) for c in _CHILD.finditer(block)
                         if c.group(1) == "INSTALLED")
        # the client's virtual IPs, IPv4 and/or IPv6: `[10.99.0.1 fd00:99::1]`
        vips = re.split(r"[\s,]+", local.group(2).strip()) if local and local.group(2) else []
        views.append(IkeSaView(
            name=m.group(1), uniqueid=int(m.group(2)), state=m.group(3), spi_i=m.group(4),
            spi_r=m.group(5), local=local.group(1) if local else "",
            remote=remote.group(1) if remote else "",
            virtual_ip=next((v for v in vips if ":" not in v), None),
            child_spis=children,
            virtual_ip6=next((v for v in vips if ":" in v), None),
        ))
    return views


def list_sas(pid: int) -> list[IkeSaView]:
    """The IKE SAs of one charon."""
    return parse_sas(swanctl(pid, "--list-sas", timeout_s=15))
