"""The charon plugins the project loads, which Debian package ships each, and a check.

Every `load =` list the project renders (the lab clients, the baseline gateway, the benches: all
of them `cluster.lab.strongswan.PLUGINS` today) must name plugins that exist on the machine:
with `load_modular = no` charon only logs `plugin 'gcm': failed to load` and carries on, and
the first sign is a connection that fails to load much later. `make bootstrap` runs
`python -m cluster.lab.plugins`, which names each missing plugin and the package to install,
and exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

#: Debian 12 (strongSwan 5.9.8): the package that ships each plugin the project may load.
PACKAGES: dict[str, str] = {
    **dict.fromkeys(
        ("aes", "attr", "constraints", "dnskey", "drbg", "fips-prf", "gmp", "hmac", "kdf",
         "kernel-netlink", "md5", "mgf1", "nonce", "pem", "pgp", "pkcs1", "pkcs12", "pkcs7",
         "pkcs8", "pubkey", "random", "rc2", "resolve", "revocation", "sha1", "sha2", "sshkey",
         "x509", "xcbc"), "libstrongswan"),
    **dict.fromkeys(("aesni", "agent", "connmark", "gcm", "openssl"),
                    "libstrongswan-standard-plugins"),
    **dict.fromkeys(("af-alg", "ccm", "chapoly", "cmac", "ctr", "curl", "curve25519", "gcrypt",
                     "ldap", "pkcs11", "rdrand", "test-vectors", "tpm"),
                    "libstrongswan-extra-plugins"),
    **dict.fromkeys(("bypass-lan", "counters", "socket-default", "updown"),
                    "strongswan-libcharon"),
    **dict.fromkeys(("eap-mschapv2", "xauth-generic"), "libcharon-extauth-plugins"),
    **dict.fromkeys(("addrblock", "certexpire", "dhcp", "eap-aka", "eap-gtc", "eap-identity",
                     "eap-md5", "eap-radius", "eap-tls", "eap-tnc", "eap-ttls", "error-notify",
                     "farp", "forecast", "ha", "kernel-libipsec", "led", "lookip", "tnc-tnccs",
                     "unity", "xauth-eap", "xauth-pam"), "libcharon-extra-plugins"),
    "vici": "strongswan-swanctl",
    "stroke": "strongswan-starter",
}


@dataclass(frozen=True, slots=True)
class Missing:
    plugin: str
    path: Path
    package: str | None      # None: not in PACKAGES (a plugin the table does not know)

    def line(self) -> str:
        where = (f"install the Debian package {self.package}" if self.package
                 else "no Debian package is known for it (cluster/lab/plugins.py PACKAGES)")
        return f"charon plugin '{self.plugin}' is missing ({self.path}): {where}"


def plugin_path(name: str, plugin_dir: Path = PLUGIN_DIR) -> Path:
    return plugin_dir / f"libstrongswan-{name}.so"


def missing(plugins: Iterable[str], plugin_dir: Path = PLUGIN_DIR) -> list[Missing]:
    """The plugins of `plugins` that have no file in `plugin_dir`, in order, once each."""
    out: list[Missing] = []
    for name in dict.fromkeys(plugins):
        path = plugin_path(name, plugin_dir)
        if not path.is_file():
            out.append(Missing(name, path, PACKAGES.get(name)))
    return out


def loaded_plugins() -> list[str]:
    """Every plugin some `load =` list of the project names."""
    from cluster.lab.strongswan import PLUGINS

    return PLUGINS.split()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m cluster.lab.plugins [PLUGIN_DIR]\n"
              "checks that every charon plugin the project loads exists")
        return 0
    plugin_dir = Path(args[0]) if args else PLUGIN_DIR
    gone = missing(loaded_plugins(), plugin_dir)
    for m in gone:
        print(f"bootstrap: {m.line()}", file=sys.stderr)
    return 1 if gone else 0


if __name__ == "__main__":
    sys.exit(main())
