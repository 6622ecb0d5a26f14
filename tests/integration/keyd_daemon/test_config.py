"""keyd's configuration: the documented file loads, flags override, and every mistake is one
clear line naming the file and the field — also through the `keyd` command (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keyd.config import ConfigError, load_config, read_eap_users, read_psk

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def documented_keyd_toml() -> str:
    """The common sections and [keyd] exactly as docs/configuration.md shows them."""
    text = DOC.read_text()
    blocks = text.split("```toml")[1:]
    common = blocks[0].split("```")[0]
    keyd = next(b.split("```")[0] for b in blocks if "[keyd]" in b)
    return common + keyd


def test_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(documented_keyd_toml())
    c = load_config(path)
    assert c.keyd.vip == "203.0.113.10" and c.keyd.ike_port == 500 and c.keyd.natt_port == 4500
    assert c.keyd.identity == "vpn.example.net"
    assert c.keyd.ike_proposals == ("default", "aes256-aes128-sha256-sha1-modp2048")
    assert c.keyd.esp_proposals == ("default", "aes256-aes128-sha1")
    assert c.keyd.pool == "10.99.0.0/16" and c.keyd.pool6 == "fd00:99::/112"
    assert c.keyd.protected_networks == ("10.20.0.0/16", "fd00:20::/64")
    assert c.etcd.endpoints[0] == "https://10.10.0.11:2379" and c.etcd.timeout_s == 2.0
    assert c.metrics.listen == "127.0.0.1:9410" and c.address == c.keyd.address == "10.30.0.5"


def test_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(documented_keyd_toml())
    c = load_config(path, {"keyd.vip": "198.51.100.7", "etcd.endpoints": ("http://a:1",),
                           "keyd.pool": None, "keyd.dns": ()})
    assert c.keyd.vip == "198.51.100.7" and list(c.etcd.endpoints) == ["http://a:1"]
    assert c.keyd.pool == "10.99.0.0/16" and c.keyd.dns == ("10.20.0.53", "fd00:20::53")


@pytest.mark.parametrize("snippet, message", [
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\nvip = "nope"', "keyd.vip is not an IP address"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\npool = "10.0.0.1/8"', "keyd.pool is not a network"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\nike_port = "500"',
     "keyd.ike_port must be an integer"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\ncolour = 1', "unknown field 'colour'"),
    ('[keyd]\npsk_file = "/p"', "keyd.identity is required"),
    ('[keyd]\nidentity = "x"', "needs psk_file or cert_file"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\n[log]\nlevel = "loud"', "level must be"),
    ('[keyd', "not valid TOML"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\nike_proposals = ["default", "aes128-md5-x25519"]',
     "keyd proposals: unknown algorithm 'md5' in IKE proposal 'aes128-md5-x25519'"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\nesp_proposals = ["aes128gcm16-sha1"]',
     "ESP proposal 'aes128gcm16-sha1': an AEAD takes no integrity algorithm ('sha1')"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\nike_proposals = ["aes128-sha256-x25519,"]',
     "empty IKE proposal"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\neap = "eap-md5"', "keyd.eap must be"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\neap = "eap-mschapv2"', "needs keyd.eap_users_file"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\neap = "eap-radius"', "needs keyd.radius_servers"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\nradius_servers = ["radius:1812"]',
     "is not address:port"),
    ('[keyd]\nidentity = "x"\npsk_file = "/p"\neap_identity = "maybe"', "ask or idi"),
])
def test_mistakes_are_one_clear_line(tmp_path: Path, snippet: str, message: str) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(snippet)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_psk_file_must_be_private(tmp_path: Path) -> None:
    psk = tmp_path / "psk"
    psk.write_bytes(b"secret\n")
    psk.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        read_psk(str(psk))
    psk.chmod(0o600)
    assert read_psk(str(psk)) == b"secret"
    psk.write_bytes(b"0x0102ff\n")
    assert read_psk(str(psk)) == b"\x01\x02\xff"
    psk.write_bytes(b"0sAQL/\n")                   # base64, as strongSwan's "0s"
    assert read_psk(str(psk)) == b"\x01\x02\xff"
    for bad, message in ((b"0xzz\n", "0x… is not valid hex"),
                         (b"0s!!\n", "0s… is not valid base64"),
                         (b"0s\xff\n", "0s… is not ASCII")):
        psk.write_bytes(bad)
        with pytest.raises(ConfigError, match=message) as err:
            read_psk(str(psk))
        assert "zz" not in str(err.value) and "!!" not in str(err.value)


def test_eap_users_file_private_and_well_formed(tmp_path: Path) -> None:
    users = tmp_path / "eap-users.toml"
    users.write_text('[eap_users]\ncarol = "s3cret"\n"ACME\\\\dave" = "x y"\n')
    users.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        read_eap_users(str(users))
    users.chmod(0o600)
    assert read_eap_users(str(users)) == {"carol": "s3cret", "ACME\\dave": "x y"}
    users.write_text('[eap_users]\ncarol = 7\n')
    with pytest.raises(ConfigError, match="non-empty password strings"):
        read_eap_users(str(users))


def test_command_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    keyd = Path(sys.executable).parent / "keyd"
    path = tmp_path / "keyd.toml"
    path.write_text('[keyd]\nidentity = "x"\npsk_file = "/p"\nvip = "nope"\n')
    for argv, needle in (
        (["--config", str(path)], "keyd.vip is not an IP address"),
        (["--config", str(tmp_path / "missing.toml")], "No such file"),
        (["--config", str(path), "--ike-port", "x"], "Invalid value"),
    ):
        r = subprocess.run([str(keyd), *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
