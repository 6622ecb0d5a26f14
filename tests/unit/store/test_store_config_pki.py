from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cluster.config import ConfigError, load_config, parse_config
from cluster.grants import component_grants
from cluster.pki import CertAuthority

FULL = """
[cluster]
name = "prod"
prefix = "/ipsec-cluster"
data_key_file = "/etc/ipsec-cluster/data.key"

[etcd]
endpoints = ["https://10.10.0.11:2379", "https://10.10.0.12:2379"]
cacert = "/etc/ipsec-cluster/etcd/ca.pem"
cert = "/etc/ipsec-cluster/etcd/keyd-1.pem"
key = "/etc/ipsec-cluster/etcd/keyd-1-key.pem"
timeout_s = 2

[log]
level = "INFO"

[metrics]
listen = ""

[node]
id = "node-1"
capacity = 100
lease_ttl_s = 3
"""


def test_full_config(tmp_path: Path) -> None:
    p = tmp_path / "node.toml"
    p.write_text(FULL)
    c = load_config(p)
    assert c.cluster.name == "prod" and c.cluster.data_key_file == "/etc/ipsec-cluster/data.key"
    assert c.etcd.endpoints[1] == "https://10.10.0.12:2379" and c.etcd.timeout_s == 2.0
    assert c.log.level == "info" and c.metrics.listen == ""
    node = c.section("node")
    assert node.get("id", str) == "node-1" and node.get("capacity", int) == 100
    assert node.get("tun", str, "ipsc0") == "ipsc0"
    assert c.section("keyd").data == {}


def test_defaults() -> None:
    c = parse_config("")
    assert c.cluster.name == "default" and c.etcd.endpoints == ["http://127.0.0.1:2379"]


@pytest.mark.parametrize(("text", "why"), [
    ("[cluster\n", "not valid TOML"),
    ("cluster = 3", r"\[cluster\] must be a table"),
    ("[etcd]\nendpoints = []", "must not be empty"),
    ("[etcd]\nendpoints = [1]", "list of strings"),
    ("[etcd]\ntimeout_s = 'x'", "timeout_s must be float"),
    ("[etcd]\ncert = '/a'", "cert and key go together"),
    ("[etcd]\ncacert = 'relative.pem'", "absolute path"),
    ("[log]\nlevel = 'loud'", "level must be one of"),
    ("[cluster]\nname = 5", "name must be str"),
])
def test_bad_config(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as exc:
        parse_config(text, "/etc/x.toml")
    assert "/etc/x.toml" in str(exc.value) and "\n" not in str(exc.value)


def test_section_types() -> None:
    s = parse_config("[node]\ncapacity = true\nport = 5").section("node")
    with pytest.raises(ConfigError, match=r"\[node\] capacity must be int"):
        s.get("capacity", int)
    with pytest.raises(ConfigError, match="required"):
        s.get("id", str)
    assert s.get("port", float) == 5.0


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_ca_issues_verifiable_certs(tmp_path: Path, kind: str) -> None:
    ca = CertAuthority.create("Test CA", kind=kind)  # type: ignore[arg-type]
    leaf = ca.issue("vpn.example.net", ["vpn.example.net", "203.0.113.10",
                                        "email:ops@example.net"], kind=kind)  # type: ignore[arg-type]
    leaf.cert.verify_directly_issued_by(ca.cert)
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.net"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.10")]
    assert san.get_values_for_type(x509.RFC822Name) == ["ops@example.net"]
    want = rsa.RSAPrivateKey if kind == "rsa" else ec.EllipticCurvePrivateKey
    assert isinstance(leaf.key, want)
    cert_path, key_path = leaf.write_pem(tmp_path / "c.pem", tmp_path / "k.pem")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()) == leaf.cert
    cn = leaf.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "vpn.example.net"


def test_component_grants() -> None:
    root = "/ipsec-cluster/prod/"
    node = {(g.key, g.perm, g.prefix) for g in component_grants(root, "node", "node-1")}
    assert (root + "sa/", "read", True) in node
    assert (root + "seq/", "readwrite", True) in node
    assert (root + "nodes/node-1", "readwrite", False) in node
    assert not any(k.startswith(root + "sa") and p != "read" for k, p, _ in node)
    keyd = {(g.key, g.perm) for g in component_grants(root, "keyd", "keyd-1")}
    assert (root + "sa/", "readwrite") in keyd and (root + "assign/", "readwrite") in keyd
    with pytest.raises(ValueError):
        component_grants(root, "other", "x")
