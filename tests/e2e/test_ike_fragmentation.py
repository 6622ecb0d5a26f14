"""IKE fragmentation (RFC 7383) with a real strongSwan client (issue 13, "Done when", third
criterion).

The lab's keyd is given an RSA-4096 certificate chain (root → intermediate → gateway, made
with cluster.pki) and `fragment_mtu = 576`; a strongSwan client with `fragmentation = force`
and an RSA-4096 chain of its own sits behind a link of MTU 576, and IP fragments are dropped
on both sides of that link (before the kernel's defragmentation), so nothing larger than 576
bytes gets through whole: IKE_AUTH, several kB each way, can only pass as IKE fragments.
While it connects, another client floods keyd with fragments that never complete (each on
an IKE SA of its own, so keyd takes them as authentic): keyd holds at most
`fragment_max_incomplete` of them, evicts the rest, and the strongSwan client establishes.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from cluster.lab import addresses as A
from cluster.lab import strongswan
from cluster.lab.lab import Lab
from cluster.pki import CertAuthority

MTU = 576
MAX_INCOMPLETE = 8
FLOOD = Path(__file__).with_name("fragment_flood.py")
#: IP fragments (MF set or a non-zero offset), caught before conntrack reassembles them
DROP_IP_FRAGMENTS = """
table ip e2e_frag {
  chain pre {
    type filter hook prerouting priority -500; policy accept;
    ip frag-off & 0x3fff != 0 counter drop
  }
}
"""


def _metric(lab: Lab, name: str, labels: str = "") -> float:
    deadline = time.monotonic() + 15  # keyd's metrics listener comes up after its IKE socket
    while True:
        r = lab.run("keyd-1", ["curl", "-sf", "--max-time", "5",
                               "http://127.0.0.1:9410/metrics"])
        if r.returncode == 0:
            break
        assert time.monotonic() < deadline, f"keyd-1's metrics: {r.returncode} {r.stderr}"
        time.sleep(0.2)
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", re.M)
    m = pattern.search(r.stdout)
    return float(m.group(1)) if m else 0.0


def _fragments_dropped(lab: Lab, member: str) -> int:
    out = lab.run(member, ["nft", "list", "table", "ip", "e2e_frag"], check=True).stdout
    m = re.search(r"counter packets (\d+)", out)
    assert m, out
    return int(m.group(1))


def _rsa4096_chain(directory: Path, identity: str) -> dict[str, Path]:
    """Root and intermediate CA, the gateway's and the client's certificates: RSA-4096."""
    root = CertAuthority.create("ipsec-cluster fragmentation root", kind="rsa", bits=4096,
                                days=2)
    inter = CertAuthority.create("ipsec-cluster fragmentation intermediate", kind="rsa",
                                 bits=4096, days=2, issuer=root)
    gw = inter.issue(A.GATEWAY_ID, [A.GATEWAY_ID, A.VIP], kind="rsa", bits=4096,
                     server=True, client=False, days=2)
    cl = inter.issue(identity, [identity], kind="rsa", bits=4096, server=False, client=True,
                     days=2)
    directory.mkdir(parents=True, exist_ok=True)
    p = {n: directory / f"{n}.pem" for n in ("root", "inter", "gw", "gw-key", "gw-chain",
                                             "client", "client-key")}
    root.write_pem(p["root"], directory / "root-key.pem")
    inter.write_pem(p["inter"], directory / "inter-key.pem")
    gw.write_pem(p["gw"], p["gw-key"])
    cl.write_pem(p["client"], p["client-key"])
    p["gw-chain"].write_bytes(p["gw"].read_bytes() + p["inter"].read_bytes())
    return p


def _keyd_with_chain(lab: Lab, pki: dict[str, Path]) -> None:
    """keyd-1 restarted with the RSA-4096 chain, the new root trusted besides the lab CA,
    fragments of at most 576 bytes and a small bound on incomplete messages."""
    cas = pki["root"].parent / "cas.pem"
    cas.write_bytes(lab.pki.ca_cert.read_bytes() + pki["root"].read_bytes())
    conf = lab.dir / "config" / "keyd-1.toml"
    text = conf.read_text()
    for key, value in (("cert_file", pki["gw-chain"]), ("key_file", pki["gw-key"]),
                       ("ca_file", cas)):
        text, n = re.subn(rf"^{key} = .*$", f'{key} = "{value}"', text, count=1, flags=re.M)
        assert n == 1, key
    text = text.replace("[keyd]\n", f"[keyd]\nfragment_mtu = {MTU}\n"
                                    f"fragment_max_incomplete = {MAX_INCOMPLETE}\n", 1)
    conf.write_text(text)
    lab.kill("keyd-1")
    lab.start("keyd-1")


def _narrow_link(lab: Lab, client: str, slot: int) -> None:
    """The client's link at MTU 576, IP fragments dropped where they would enter either
    side of it."""
    lab.run(client, ["ip", "link", "set", "dev", "eth0", "mtu", str(MTU)], check=True)
    lab.run("router", ["ip", "link", "set", "dev", f"c{slot}", "mtu", str(MTU)], check=True)
    rules = lab.dir / "e2e-drop-ip-fragments.nft"
    rules.write_text(DROP_IP_FRAGMENTS)
    for member in (client, "router"):
        lab.run(member, ["nft", "-f", str(rules)], check=True)


def start_fragmenting_client(lab: Lab, name: str, identity: str, ca: Path, cert: Path,
                             key: Path, intermediate: Path | None = None) -> None:
    """A charon for lab client `name` (added with ike=False) that authenticates with `cert`
    and sends IKE fragments of at most 576 bytes (`fragmentation = force`)."""
    rec = lab.state.clients[name]
    conf_dir = lab.dir / "clients" / name
    conf_dir.mkdir(parents=True, exist_ok=True)
    log = lab.dir / "logs" / f"client-{name}-charon.log"
    # IKE fragments of at most 576 bytes (the whole IP datagram); keyd's are set the same
    (conf_dir / "strongswan.conf").write_text(strongswan.strongswan_conf(log).replace(
        "  install_routes = yes\n", f"  install_routes = yes\n  fragment_size = {MTU}\n", 1))
    cfg = strongswan.ClientConfig(identity=identity, auth="cert", psk="", ca_cert=ca,
                                  cert=cert, key=key)
    swanctl = strongswan.client_swanctl_conf(cfg).replace(
        "    encap = yes\n", "    encap = yes\n    fragmentation = force\n", 1)
    path = strongswan.swanctl_dir(conf_dir, swanctl, key)
    if intermediate is not None:  # in x509ca/: charon sends it along with its certificate
        (conf_dir / "x509ca").mkdir(exist_ok=True)
        shutil.copy(intermediate, conf_dir / "x509ca" / "intermediate.pem")
    rec.swanctl_conf = str(path)
    lab.state.save()
    lab._connect_client(rec)


@pytest.mark.lab(nodes=1, keyd=1)
def test_rsa4096_chain_behind_mtu_576_establishes_during_a_fragment_flood(
        lab: Lab, tmp_path: Path) -> None:
    identity = "frag.clients.lab.example"
    pki = _rsa4096_chain(tmp_path / "pki", identity)
    _keyd_with_chain(lab, pki)

    flood = lab.add_client("flood", ike=False)
    lab.spawn_in("flood", "fragment-flood", [
        sys.executable, str(FLOOD), "--local", flood.address, "--vip", A.VIP,
        "--seconds", "120"])
    held = []
    for _ in range(10):  # the flood under way: keyd holds no more than its bound
        time.sleep(0.3)
        held.append(_metric(lab, "keyd_ike_fragments_incomplete"))
    assert max(held) <= MAX_INCOMPLETE and max(held) > 0, held
    assert _metric(lab, "keyd_messages_dropped_total", '{reason="fragments_evicted"}') > 0

    rec = lab.add_client("frag", auth="cert", ike=False, identity=identity)
    _narrow_link(lab, "frag", rec.slot)
    start_fragmenting_client(lab, "frag", identity, pki["root"], pki["client"],
                             pki["client-key"], pki["inter"])
    (sa,) = lab.client_sas("frag")
    assert sa.state == "ESTABLISHED" and sa.virtual_ip
    flooding = lab.state.processes["fragment-flood"].alive()

    log = (lab.dir / "logs" / "client-frag-charon.log").read_text()
    # its own IKE_AUTH went as fragments, and so did keyd's answer
    assert re.search(r"splitting IKE message \(\d+ bytes\) into \d+ fragments", log), log
    m = re.search(r"reassembled fragmented IKE message \((\d+) bytes\)", log)
    assert m and int(m.group(1)) > 4 * MTU, log
    assert lab.ping("frag")
    # nothing crossed the narrow link as IP fragments (none were needed)
    assert _fragments_dropped(lab, "frag") == 0
    assert _fragments_dropped(lab, "router") == 0

    # the flood was bounded while it ran, and keyd evicted what did not fit
    assert flooding, "the flood ended before the client connected"
    assert _metric(lab, "keyd_ike_fragments_incomplete") <= MAX_INCOMPLETE
    assert _metric(lab, "keyd_messages_dropped_total", '{reason="fragments_evicted"}') > 10
    lab.kill("fragment-flood", signal.SIGTERM)
    summary = json.loads(Path(lab.state.processes["fragment-flood"].log).read_text()
                         .strip().splitlines()[-1])
    assert summary["ike_sas"] > MAX_INCOMPLETE and summary["fragments"] > 100, summary
