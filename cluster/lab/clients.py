"""Lab clients: a namespace each, with a strongSwan charon that connects to the VIP."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cluster.lab import addresses as A
from cluster.lab import mobility, strongswan, teardown, topology
from cluster.lab.base import LabBase, _mutating, _require_root
from cluster.lab.errors import LabError
from cluster.lab.pki import SHARED_USERS
from cluster.lab.state import ClientRecord, check_name

RESERVED = {"router", "server", "etcd", "nat", "sprayer", "gateway", "forwarder"}
CLIENT_DOMAIN = "clients.lab.example"


class LabClients(LabBase):
    """The clients of a lab (`Lab` is one)."""

    @_mutating
    def add_client(self, name: str, auth: str = "psk", behind_nat: bool = False,
                   ike: bool = True, ike_proposal: str = strongswan.DEFAULT_IKE_PROPOSAL,
                   esp_proposal: str = strongswan.DEFAULT_ESP_PROPOSAL,
                   dpd_delay_s: int = 10, identity: str | None = None,
                   psk: str | None = None, remote_auth: str = "pubkey",
                   eap_user: str = "carol", eap_password: str | None = None,
                   ipv6: bool = False, kernel_ipsec: bool = False) -> ClientRecord:
        """A client namespace; with ike, a charon in it that has connected to the VIP.
        `auth`: psk, cert, eap-mschapv2 (as `eap_user`, with the lab's EAP password unless
        `eap_password` says otherwise; its IKE identity is its address, as Windows', unless
        `identity` is given, as Android's) or eap-tls (labs with radius).
        `identity` (default <name>.clients.lab.example) and `psk` (default: the PSK the
        secrets file gives a shared-secret user, else the lab PSK): what the client claims
        and proves; `remote_auth`: how it checks the gateway
        ("pubkey": its certificate; "psk": the same PSK, both ways). `ipv6`: the client
        asks for an IPv6 virtual address too, and for everything of both families.
        `kernel_ipsec`: its charon keeps its Child SAs in the kernel (XFRM, kernel-netlink)
        instead of kernel-libipsec; refused where the kernel has no ESP (this machine's:
        such clients run in the VM of cluster/lab/vm.py)."""
        _require_root()
        check_name(name, "client name")
        if name in RESERVED or name.startswith(("keyd-", "node-")) \
                or name in self.state.clients:
            raise LabError(f"client name {name!r} is taken")
        if auth not in ("psk", "cert", "eap-mschapv2", "eap-tls"):
            raise LabError(f"unknown auth {auth!r}: psk, cert, eap-mschapv2 or eap-tls")
        if auth == "eap-tls" and not self.state.radius:
            raise LabError("eap-tls clients need a lab with --radius")
        if remote_auth not in ("pubkey", "psk"):
            raise LabError(f"unknown remote_auth {remote_auth!r}: pubkey or psk")
        if kernel_ipsec and ike:
            why = strongswan.kernel_esp_missing()
            if why is not None:
                raise LabError(f"client {name!r} cannot use kernel IPsec here: {why} (kernel-"
                               "IPsec clients run in the VM: cluster/lab/vm.py, tests/kernel)")
        used = {c.slot for c in self.state.clients.values()}
        slot = next((i for i in range(1, A.MAX_CLIENTS + 1) if i not in used), None)
        if slot is None:
            raise LabError(f"the lab holds at most {A.MAX_CLIENTS} clients")
        address = A.client_ip(slot, behind_nat)
        # an EAP-MSCHAPv2 client claims its address unless told otherwise
        ike_id = identity or ("" if auth == "eap-mschapv2" else f"{name}.{CLIENT_DOMAIN}")
        identity = identity or f"{name}.{CLIENT_DOMAIN}"
        rec = ClientRecord(name=name, slot=slot, netns=self.ns(f"c-{name}"),
                           address=address, auth=auth, behind_nat=behind_nat, ike=ike,
                           identity=identity)
        if behind_nat and self.ns("nat") not in self.state.namespaces:
            topology.nat(self._add_ns, self.ns("router"))
        self.state.clients[name] = rec
        ns = self._add_ns(f"c-{name}")
        topology.client(ns, self.ns("nat" if behind_nat else "router"), slot, address,
                        behind_nat)
        if ike:
            self._start_client_charon(rec, strongswan.ClientConfig(
                identity=ike_id, auth=auth, psk=psk or self._psk_for(identity),
                ca_cert=self.pki.ca_cert, ike_proposal=ike_proposal, esp_proposal=esp_proposal,
                dpd_delay_s=dpd_delay_s, remote_auth=remote_auth, eap_user=eap_user, ipv6=ipv6,
                kernel_ipsec=kernel_ipsec,
                eap_password=eap_password if eap_password is not None else (
                    self.pki.eap_password() if auth == "eap-mschapv2" else "")))
        return rec

    def _psk_for(self, identity: str) -> str:
        return self.pki.user_psk(identity) if identity in SHARED_USERS else self.pki.psk()

    def _start_client_charon(self, rec: ClientRecord, cfg: strongswan.ClientConfig) -> None:
        conf_dir = self.dir / "clients" / rec.name
        conf_dir.mkdir(parents=True, exist_ok=True)
        if cfg.auth in ("cert", "eap-tls"):
            cert, key = self.pki.issue(f"client-{rec.name}", [rec.identity])
            cfg = strongswan.ClientConfig(**{**_fields(cfg), "cert": cert, "key": key})
        (conf_dir / "strongswan.conf").write_text(
            strongswan.strongswan_conf(self.dir / "logs" / f"client-{rec.name}-charon.log",
                                       kernel_ipsec=cfg.kernel_ipsec))
        swanctl_conf = strongswan.swanctl_dir(conf_dir, strongswan.client_swanctl_conf(cfg),
                                              cfg.key)
        rec.swanctl_conf = str(swanctl_conf)
        self.state.save()
        self._connect_client(rec)

    def _connect_client(self, rec: ClientRecord) -> None:
        assert rec.swanctl_conf is not None
        conf = Path(rec.swanctl_conf).parent / "strongswan.conf"
        proc = self._spawn(f"client:{rec.name}", strongswan.charon_argv(rec.netns, conf),
                           rec.netns)
        strongswan.wait_vici(proc.pid)
        strongswan.load(proc.pid, Path(rec.swanctl_conf))
        strongswan.initiate(proc.pid)

    @_mutating
    def remove_client(self, name: str) -> None:
        """Stop a client's processes and delete its namespace (its logs stay)."""
        rec = self.state.clients.get(name)
        if rec is None:
            raise LabError(f"no client {name!r} in lab {self.name!r}")
        procs = [p for p in self.state.processes.values() if p.netns == rec.netns]
        teardown.teardown([rec.netns], procs)
        topology.unwire_client(self.ns("nat" if rec.behind_nat else "router"), rec.slot)
        del self.state.clients[name]
        self.state.namespaces.remove(rec.netns)
        shutil.rmtree(self.dir / "clients" / name, ignore_errors=True)

    @_mutating
    def move_client(self, name: str, address: str) -> str:
        """The client's front-network address changes (cluster/lab/mobility.py)."""
        return mobility.move_client(self, name, address)

    @_mutating
    def start_other_gateway(self) -> int:
        """A charon gateway beside the cluster, for redirects (cluster/lab/mobility.py)."""
        return mobility.start_other_gateway(self)

    def client_sas(self, name: str) -> list[strongswan.IkeSaView]:
        """The IKE SAs a client's charon holds."""
        return strongswan.list_sas(self._client_pid(name))

    def client_pid(self, name: str) -> int:
        """The PID of a client's charon (for strongswan.swanctl and friends)."""
        return self._client_pid(name)

    def _client_pid(self, name: str) -> int:
        rec = self.state.processes.get(f"client:{name}")
        if name not in self.state.clients:
            raise LabError(f"no client {name!r} in lab {self.name!r}")
        if rec is None or not rec.alive():
            raise LabError(f"client {name!r} runs no charon")
        return rec.pid


def _fields(cfg: strongswan.ClientConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__slots__}
