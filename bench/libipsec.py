"""strongSwan's kernel-libipsec as the gateway of a data-plane benchmark (helper of bench/node).

The baseline the node is compared with: a charon responder whose ESP runs in userspace
(kernel-libipsec: the kernel has no ESP), standing where the node stands — the VIP on its
loopback, decrypted packets leaving its TUN (`ipsec0`) towards the sink. charon is configured
as the lab's baseline gateway (cluster/lab, `--gateway strongswan`) configures it, with a PSK
on both sides so no certificate work is involved:

- the plugins of `cluster.lab.strongswan.PLUGINS` (`kdf` included: charon 5.9.8 derives its
  keys through it, and `kernel-libipsec`), in a private mount namespace (own /run);
- `encap = yes`: kernel-libipsec carries only UDP-encapsulated ESP, and with no NAT between
  the two ends charon fakes NAT detection so the initiator floats to 4500 and encapsulates;
- a pool holding exactly the generator's inner source address, so the Child SA's remote
  traffic selector is that address, and `local_ts` the sink's network; kernel-libipsec routes
  the remote selector into its TUN with a source address from `local_ts`, so the caller puts
  one such address on the gateway's loopback (`LOCAL_INSIDE`).

The ESP keys come from the project's own IKE initiator (`keyd.client.IkeClient`), which
`python -m bench.libipsec establish` runs inside the generator's namespace: it brings the
IKE SA and its first Child SA up with charon (PSK, aes128gcm16), writes the initiator's side
of the Child SA to a file (0600) and leaves the IKE SA standing (charon runs no DPD here).
The generator (`python -m bench.node generate --sa FILE`) then seals its packets with those
keys, exactly as it does for the node.

bench/node_kernel runs the same responder with its ESP in the kernel instead (`kernel_ipsec`:
kernel-netlink, no kernel-libipsec; XFRM states and policies in its namespace), with the
node's ESP proposal and replay window, inside the VM where the kernel has ESP.

Public API: `swanctl_conf`, `strongswan_conf`, `start_gateway`, `stop_gateway`,
`establish` (the subcommand's body), `client_sa` (the sealing side from the file),
`forwarded_by_charon` (the Child SAs' inbound packet count `swanctl --list-sas` shows,
`in_packets` parses it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"
GATEWAY_ID = "gateway@libipsec.bench.example"
CLIENT_ID = "client@libipsec.bench.example"
PSK = "libipsec-bench-psk-not-a-secret"
LOCAL_INSIDE = "10.20.0.1"   # on the gateway's lo, inside local_ts (see the module docstring)


def strongswan_conf(log_path: Path, kernel_ipsec: bool = False,
                    replay_window: int | None = None) -> str:
    """charon's strongswan.conf: the lab's baseline gateway's (`cluster.lab.strongswan`);
    with `kernel_ipsec` its ESP in the kernel (kernel-netlink, no kernel-libipsec), and with
    `replay_window` that window on its inbound states (charon's default is 32)."""
    from cluster.lab import strongswan
    conf = strongswan.strongswan_conf(log_path, kernel_ipsec=kernel_ipsec)
    if replay_window is not None:
        conf = conf.replace("charon {\n", f"charon {{\n  replay_window = {replay_window}\n", 1)
    return conf


def swanctl_conf(vip: str, client_vip: str, local_ts: str,
                 esp_proposal: str = ESP_PROPOSAL) -> str:
    """The responder: PSK both ways, `esp_proposal` (aes128gcm16), UDP encapsulation forced,
    the client's inner address from a one-address pool."""
    return f"""\
connections {{
  bench {{
    version = 2
    local_addrs = {vip}
    encap = yes
    mobike = no
    pools = bench-pool
    proposals = {IKE_PROPOSAL}
    local {{
      auth = psk
      id = {GATEWAY_ID}
    }}
    remote {{
      auth = psk
      id = {CLIENT_ID}
    }}
    children {{
      bench {{
        local_ts = {local_ts}
        esp_proposals = {esp_proposal}
      }}
    }}
  }}
}}
pools {{
  bench-pool {{
    addrs = {client_vip}/32
  }}
}}
secrets {{
  ike-bench {{
    id-gw = {GATEWAY_ID}
    id-cl = {CLIENT_ID}
    secret = "{PSK}"
  }}
}}
"""


def start_gateway(netns: str, workdir: Path, vip: str, client_vip: str, local_ts: str, *,
                  kernel_ipsec: bool = False, esp_proposal: str = ESP_PROPOSAL,
                  replay_window: int | None = None) -> subprocess.Popen[bytes]:
    """charon with kernel-libipsec (`kernel_ipsec`: kernel-netlink, ESP in XFRM) in `netns`,
    connections loaded; the Popen's pid is charon's own (see
    `cluster.lab.strongswan.charon_argv`). Raises RuntimeError with the end of charon's log
    when it does not come up."""
    from cluster.lab import strongswan
    from cluster.lab.errors import LabError
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "charon.log"
    conf = workdir / "strongswan.conf"
    conf.write_text(strongswan_conf(log, kernel_ipsec, replay_window))
    swanctl = strongswan.swanctl_dir(workdir, swanctl_conf(vip, client_vip, local_ts,
                                                           esp_proposal), None)
    proc = subprocess.Popen(strongswan.charon_argv(netns, conf), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        strongswan.wait_vici(proc.pid)
        strongswan.load(proc.pid, swanctl)
    except (LabError, subprocess.SubprocessError) as exc:
        stop_gateway(proc)
        kind = "kernel-netlink" if kernel_ipsec else "kernel-libipsec"
        raise RuntimeError(f"charon ({kind}) did not start: {exc}; log: "
                           f"{_tail(log)}") from exc
    return proc


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM charon (by its pid), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


_CHILD_IN = re.compile(r"^\s+in\s+([0-9a-f]{8})[^\n]*?,\s+(\d+) bytes,\s+(\d+) packets", re.M)


def forwarded_by_charon(pid: int) -> int:
    """Packets charon's installed Child SAs received and decrypted (the `in` counter of
    `swanctl --list-sas`): the gateway's own count, as the node's `packets_in` is."""
    from cluster.lab import strongswan
    from cluster.lab.errors import LabError
    try:
        text = strongswan.swanctl(pid, "--list-sas", timeout_s=15)
    except LabError as exc:
        raise RuntimeError(f"charon's SA counters unreadable: {exc}") from None
    return in_packets(text)


def in_packets(list_sas: str) -> int:
    """The inbound packet counts of every Child SA in `swanctl --list-sas` output, summed."""
    return sum(int(m.group(3)) for m in _CHILD_IN.finditer(list_sas))


# -- inside the generator's namespace --------------------------------------------------------
def establish(local_ip: str, vip: str, natt_port: int, out: Path,
              esp_proposal: str = ESP_PROPOSAL) -> dict[str, Any]:
    """IKE_SA_INIT + IKE_AUTH with charon from `local_ip`; the initiator's side of the first
    Child SA written to `out` (keys hex, 0600). The IKE SA is left up."""
    from keyd.client import IkeClient
    client = IkeClient.psk(PSK.encode(), CLIENT_ID, GATEWAY_ID, local_ip, (vip, 500),
                           natt_port, IKE_PROPOSAL, esp_proposal)
    with client:
        client.connect(timeout_s=30)
        children = client.children()
    if not children:
        raise RuntimeError("charon established the IKE SA without a Child SA")
    c = children[0].child
    if not c.udp_encap:
        raise RuntimeError("the Child SA is not UDP-encapsulated: kernel-libipsec would not "
                           "receive it")
    sa = {"spi_in": c.spi_in, "spi_out": c.spi_out, "encr": c.encr, "integ": c.integ,
          "esn": c.esn, "enc_key_in": c.enc_key_in.hex(), "enc_key_out": c.enc_key_out.hex(),
          "integ_key_in": c.integ_key_in.hex(), "integ_key_out": c.integ_key_out.hex(),
          "virtual_ip": c.virtual_ip, "ts_local": list(c.ts_local),
          "ts_remote": list(c.ts_remote), "peer": [c.peer_addr, c.peer_port]}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(sa, f)
    return {k: sa[k] for k in ("spi_in", "spi_out", "encr", "esn", "virtual_ip", "ts_local",
                               "ts_remote", "peer")}


def client_sa(path: Path) -> Any:
    """The sealing side (a `cluster.esp.ChildSa`) of the Child SA `establish` wrote."""
    from cluster.esp import ChildSa, IvSource, SaKeys
    d = json.loads(path.read_text())
    keys = SaKeys(bytes.fromhex(d["enc_key_in"]), bytes.fromhex(d["enc_key_out"]),
                  bytes.fromhex(d["integ_key_in"]), bytes.fromhex(d["integ_key_out"]))
    return ChildSa(spi_in=d["spi_in"], spi_out=d["spi_out"], encr=d["encr"], integ=d["integ"],
                   esn=d["esn"], keys=keys, iv_source=IvSource(b"\x00\x00\x00\x02"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.libipsec")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("establish", help="bring a Child SA up with charon, keys to a file")
    e.add_argument("--local", required=True, help="our address")
    e.add_argument("--vip", required=True, help="charon's address")
    e.add_argument("--natt-port", type=int, default=4500)
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--esp", default=ESP_PROPOSAL, help="the ESP proposal")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        info = establish(args.local, args.vip, args.natt_port, args.out, args.esp)
    except Exception as exc:  # one line for the orchestrator, never a traceback
        print(f"establish failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**info, "seconds": time.monotonic() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
