"""Real strongSwan 5.9 clients configured as the native clients of issue 11 are (Windows,
Apple, Android, the strongSwan app, and strongSwan's own defaults), all in one lab at once,
and a failover of each client's node (issue 11, "Done when", first criterion).

One lab for the module (two nodes, one keyd with FreeRADIUS behind it): EAP-TLS, and the
EAP-MSCHAPv2 of clients that claim their address (Windows, Apple), are relayed to FreeRADIUS;
the EAP-MSCHAPv2 of clients that claim an identity in eap.lab.example (Android's "IPSec
identifier") and the PSKs are checked by keyd against its secrets file. Every client is up at
once and pings the protected server every 50 ms for the whole module (`ping -D`). Then the
node that carries the most clients not yet failed over is SIGKILLed and started again, until
every client's node has been killed once; after each kill its clients must keep their IKE SA
(same unique id, IKE SPIs and Child SA SPIs), log no rekey or reauthentication, and their
pings must be answered again.

Each client has an identity of its own: a client's INITIAL_CONTACT makes keyd remove the
other IKE SAs of the same identity, as a gateway must (RFC 7296 §2.4).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import _require_lab_tools, unique_lab_name
from test_failover import sa_identity
from test_keyd import ike_id

from cluster.lab import addresses as A
from cluster.lab import demo
from cluster.lab import lab as labmod
from cluster.lab.clients import CLIENT_DOMAIN
from cluster.lab.lab import Lab
from cluster.lab.pki import EAP_DOMAIN, SHARED_USERS
from cluster.lab.strongswan import IkeSaView

CLUSTERCTL = str(Path(sys.executable).parent / "clusterctl")
PING_INTERVAL = "0.05"
GATEWAY_BY_CERT = re.compile(r"authentication of 'vpn\.lab\.example' with (?!pre-shared key)"
                             r"[A-Z0-9_]+ successful")
GATEWAY_BY_PSK = "authentication of 'vpn.lab.example' with pre-shared key successful"
MSCHAPV2_OK = "EAP method EAP_MSCHAPV2 succeeded, MSK established"
EAP_TLS_OK = "EAP method EAP_TLS succeeded, MSK established"
#: what a client's charon logs when it rekeys, reauthenticates or starts over
NEW_KEYS = re.compile(r"rekey|reauth|IKE_SA_INIT|CREATE_CHILD_SA|initiating|restarting", re.I)


@dataclass(frozen=True, slots=True)
class Profile:
    """One native client: how the lab client is configured and what its log must show."""

    name: str
    options: dict[str, str]       # Lab.add_client keyword arguments
    ike_chosen: str               # charon's "selected proposal" for the IKE SA ...
    esp_chosen: str               # ... and for the Child SA
    connection: str               # the keyd connection it must get
    identity: str                 # the identity keyd holds the IKE SA for (EAP: the user's)
    log_shows: tuple[str | re.Pattern[str], ...]


def _psk_both_ways(identity: str) -> dict[str, str]:
    return {"auth": "psk", "identity": identity, "remote_auth": "psk"}


def _mschapv2(user: str, ike_id: str | None = None) -> dict[str, str]:
    return {"auth": "eap-mschapv2", "eap_user": user,
            **({"identity": ike_id} if ike_id else {})}


AES_SHA1_MODP2048 = ("aes256-sha1-modp2048", "IKE:AES_CBC_256/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048")
AES_SHA256_MODP2048 = ("aes256-sha256-modp2048",
                       "IKE:AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
AES_SHA512_MODP3072 = ("aes256-sha512-modp3072",
                       "IKE:AES_CBC_256/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/MODP_3072")
CHACHA_X25519 = ("chacha20poly1305-prfsha256-x25519",
                 "IKE:CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519")
ESP_AES_SHA1 = ("aes256-sha1", "ESP:AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ")
ESP_AES_SHA256 = ("aes256-sha256", "ESP:AES_CBC_256/HMAC_SHA2_256_128/NO_EXT_SEQ")
ESP_AES_SHA512 = ("aes256-sha512", "ESP:AES_CBC_256/HMAC_SHA2_512_256/NO_EXT_SEQ")
ESP_CHACHA = ("chacha20poly1305", "ESP:CHACHA20_POLY1305/NO_EXT_SEQ")


def _profile(name: str, ike: tuple[str, str], esp: tuple[str, str], options: dict[str, str],
             connection: str, *log_shows: str | re.Pattern[str]) -> Profile:
    identity = options.get("eap_user") or options.get("identity") \
        or f"{name}.{CLIENT_DOMAIN}"
    return Profile(name, {**options, "ike_proposal": ike[0], "esp_proposal": esp[0]},
                   ike[1], esp[1], connection, identity, log_shows)


ALICE, BOB, GRACE = SHARED_USERS
PROFILES = [
    # Windows 10/11 with NegotiateDH2048_AES256: EAP-MSCHAPv2, gateway by certificate
    _profile("win", AES_SHA1_MODP2048, ESP_AES_SHA1, _mschapv2("carol"), "lab-eap",
             MSCHAPV2_OK, GATEWAY_BY_CERT),
    # iOS/macOS: EAP-MSCHAPv2 (gateway by certificate), and "shared secret" (PSK both ways)
    _profile("mac-eap", AES_SHA256_MODP2048, ESP_AES_SHA256, _mschapv2("dave"), "lab-eap",
             MSCHAPV2_OK, GATEWAY_BY_CERT),
    _profile("mac-psk", AES_SHA256_MODP2048, ESP_AES_SHA256, _psk_both_ways(ALICE),
             "shared-secret", GATEWAY_BY_PSK),
    # Android 11+ native: "IKEv2/IPSec PSK" and "IKEv2/IPSec MSCHAPv2", both suites, no ESN
    _profile("droid-psk", AES_SHA512_MODP3072, ESP_AES_SHA512, _psk_both_ways(BOB),
             "shared-secret", GATEWAY_BY_PSK),
    _profile("droid-psk-cc", CHACHA_X25519, ESP_CHACHA, _psk_both_ways(GRACE),
             "shared-secret", GATEWAY_BY_PSK),
    _profile("droid-eap", AES_SHA512_MODP3072, ESP_AES_SHA512,
             _mschapv2("erin", f"erin@{EAP_DOMAIN}"), "eap-local", MSCHAPV2_OK, GATEWAY_BY_CERT),
    _profile("droid-eap-cc", CHACHA_X25519, ESP_CHACHA,
             _mschapv2("frank", f"frank@{EAP_DOMAIN}"), "eap-local", MSCHAPV2_OK,
             GATEWAY_BY_CERT),
    # the strongSwan app: EAP-TLS with a client certificate, checked by FreeRADIUS
    _profile("app", ("aes128gcm16-prfsha256-x25519", "IKE:AES_GCM_16_128/PRF_HMAC_SHA2_256/"
                     "CURVE_25519"), ("aes128gcm16", "ESP:AES_GCM_16_128/NO_EXT_SEQ"),
             {"auth": "eap-tls"}, "lab-eap", EAP_TLS_OK, GATEWAY_BY_CERT),
    # strongSwan's defaults against keyd's: the client's first proposal wins
    _profile("defaults", ("default", "IKE:AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/"
                          "CURVE_25519"),
             ("default", "ESP:AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ"), {"auth": "psk"},
             "lab-psk", GATEWAY_BY_CERT),
]
NAMES = [p.name for p in PROFILES]


@dataclass
class NativeLab:
    """The module's lab, its pinging clients and what each held once all were up."""

    lab: Lab
    sas: dict[str, IkeSaView] = field(default_factory=dict)
    pings: dict[str, Path] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)   # charon log size once up
    failed_over: dict[str, str] = field(default_factory=dict)   # client -> node killed

    def charon_log(self, client: str) -> Path:
        return self.lab.dir / "logs" / f"client-{client}-charon.log"

    def one_sa(self, client: str) -> IkeSaView:
        sas = [sa for sa in self.lab.client_sas(client) if sa.state == "ESTABLISHED"]
        assert len(sas) == 1, f"{client} holds {len(sas)} established IKE SAs: {sas}"
        return sas[0]

    def ctl(self, *args: str) -> Any:
        r = subprocess.run([CLUSTERCTL, "--lab", self.lab.name, "-o", "json", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"clusterctl {' '.join(args)}: {r.stderr.strip()}"
        return json.loads(r.stdout) if r.stdout.strip() else None

    def settled(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until every client's assignment is active on a live node and nothing is left
        to rebalance; returns each client's node."""
        ids = {ike_id(sa): c for c, sa in self.sas.items()}
        deadline = time.monotonic() + timeout_s
        while True:
            rows = {ids[r["ike_sa_id"]]: r for r in self.ctl("client", "list")
                    if r["ike_sa_id"] in ids}
            if len(rows) == len(ids) and all(
                    r["phase"] == "active" and r["owner_alive"] for r in rows.values()) \
                    and not self.ctl("rebalance", "--dry-run")["moves"]:
                return {c: r["owner"] for c, r in rows.items()}
            assert time.monotonic() < deadline, f"the cluster did not settle: {rows}"
            time.sleep(0.5)

    def answered_after(self, client: str, t: float) -> bool:
        return any(ts > t for ts, _ in demo.replies(self.pings[client]))

    def wait_answers(self, clients: list[str], after: float, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while silent := [c for c in clients if not self.answered_after(c, after)]:
            assert time.monotonic() < deadline, f"no ping answered since {after}: {silent}"
            time.sleep(0.1)

    def new_keys(self, client: str) -> list[str]:
        """Lines of the client's charon log, since all were up, that show new keys."""
        with self.charon_log(client).open("rb") as f:
            f.seek(self.log_offsets[client])
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if NEW_KEYS.search(line)]


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeLab]:
    _require_lab_tools()
    name = unique_lab_name("native")
    logs = tmp_path_factory.mktemp("native-clients") / "lab-logs"
    try:
        lab = Lab.up(name, nodes=2, keyd=1, radius=True, save_logs_to=logs)
        n = NativeLab(lab)
        for p in PROFILES:
            lab.add_client(p.name, **p.options)
        for p in PROFILES:
            n.sas[p.name] = n.one_sa(p.name)
            n.log_offsets[p.name] = n.charon_log(p.name).stat().st_size
            rec = lab.spawn_in(p.name, f"ping:{p.name}", [
                "ping", "-D", "-n", "-i", PING_INTERVAL, "-W", "1", A.SERVER_IP])
            n.pings[p.name] = Path(rec.log)
        n.wait_answers(NAMES, 0.0)
        yield n
    finally:
        labmod.down(name, logs)
        print(f"\nlab logs: {logs}")


def selected(log: str) -> list[str]:
    return re.findall(r"selected proposal: (\S+)", log)


def established_in_keyd(lab: Lab, client: str) -> dict[str, str]:
    """The fields of keyd's "IKE SA established" line for the client's address."""
    address = lab.state.clients[client].address
    text = (lab.dir / "logs" / "keyd-1.log").read_text(errors="replace")
    lines = [ln for ln in text.splitlines()
             if "IKE SA established" in ln and f" peer={address}:" in ln]
    assert len(lines) == 1, f"{client}: keyd logged {lines}"
    return dict(re.findall(r"(\w+)=(\S+)", lines[0]))


@pytest.mark.parametrize("profile", PROFILES, ids=NAMES)
def test_native_client_establishes_with_a_virtual_ip_and_pings(
        native: NativeLab, profile: Profile) -> None:
    sa = native.sas[profile.name]
    assert sa.virtual_ip is not None and sa.virtual_ip.startswith("10.99.0."), sa
    assert len(sa.child_spis) == 1, sa
    log = native.charon_log(profile.name).read_text()
    assert selected(log)[:2] == [profile.ike_chosen, profile.esp_chosen], selected(log)
    for expected in profile.log_shows:
        if isinstance(expected, re.Pattern):
            assert expected.search(log), f"{profile.name}: nothing like {expected.pattern}"
        else:
            assert expected in log, f"{profile.name}: no {expected!r} in its log"
    keyd = established_in_keyd(native.lab, profile.name)
    assert (keyd["connection"], keyd["identity"], keyd["virtual_ip"]) == \
        (profile.connection, profile.identity, sa.virtual_ip), keyd
    native.wait_answers([profile.name], time.time())


def test_every_clients_node_fails_over_and_the_clients_keep_their_sas(
        native: NativeLab) -> None:
    lab = native.lab
    untested = set(NAMES)
    rounds = 0
    while untested:
        rounds += 1
        assert rounds <= 2 * lab.state.nodes, f"{sorted(untested)} never on a killed node"
        owners = native.settled()
        counts = {n: sum(1 for c in untested if owners[c] == n) for n in set(owners.values())}
        victim = max(sorted(counts), key=lambda n: counts[n])
        moved = sorted(c for c in untested if owners[c] == victim)
        killed_at = time.time()
        lab.kill(victim, signal.SIGKILL)
        # every client's ping goes on, those of the killed node through the other
        native.wait_answers(NAMES, killed_at + 0.5)
        after = native.settled()
        print(f"\n{victim} killed: {moved} moved to "
              f"{sorted({after[c] for c in moved})}")
        for c in NAMES:
            now = native.one_sa(c)
            assert sa_identity(now) == sa_identity(native.sas[c]), \
                f"{c} made a new IKE SA or rekeyed: {native.sas[c]} -> {now}"
            assert native.new_keys(c) == [], f"{c} rekeyed or reauthenticated"
        for c in moved:
            assert after[c] != victim
            gap, lost = demo.gap_after(demo.replies(native.pings[c]), killed_at, time.time())
            print(f"  {c}: longest gap {gap * 1000:.0f} ms, {lost} lost pings")
            assert gap < 10.0, f"{c}: pings stopped for {gap:.1f} s"   # sanity, not a goal
            native.failed_over[c] = victim
        untested -= set(moved)
        lab.start(victim)
        deadline = time.monotonic() + 30
        while (lab.etcd_json(f"nodes/{victim}") or {}).get("state") != "ready":
            assert time.monotonic() < deadline, f"{victim} did not register again"
            time.sleep(0.3)
    native.settled()
    native.wait_answers(NAMES, time.time())
    for c in NAMES:
        assert sa_identity(native.one_sa(c)) == sa_identity(native.sas[c])
        assert native.new_keys(c) == [], f"{c} rekeyed or reauthenticated"
    assert sorted(native.failed_over) == sorted(NAMES)
