"""keyd's connections and secrets file as an operator writes them: `[[keyd.connections]]`,
the legacy single connection of [keyd], the secrets file's PSKs and EAP users — and every
mistake one ConfigError line naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.config import ConfigError, load_config
from keyd.ike.connections import LocalAuth, RemoteAuth
from keyd.secrets import load_secrets

HEAD = '''[keyd]
identity = "vpn.example.net"
cert_file = "/gw.pem"
key_file = "/gw-key.pem"
ca_file = "/ca.pem"
secrets_file = "/secrets.toml"
pool = "10.99.0.0/16"
dns = ["10.20.0.53"]
protected_networks = ["10.20.0.0/16"]
'''
SHARED = '''
[[keyd.connections]]
name = "apple-psk"
remote_ids = ["*@example.org"]
remote_auth = "psk"
local_auth = "psk"
ike_proposals = ["aes256-sha256-modp2048"]
esp_proposals = ["aes256-sha256"]
pool = "10.98.0.0/24"
dns_domains = ["corp.example.org"]
policy = "split"
'''
CERTS = '''
[[keyd.connections]]
name = "certs"
remote_auth = "pubkey"
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keyd.toml"
    path.write_text(text)
    return path


def test_connections_in_order_with_keyd_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, HEAD + SHARED + CERTS))
    assert c.explicit_connections
    shared, certs = c.connections
    assert shared.name == "apple-psk" and shared.remote_ids == ("*@example.org",)
    assert shared.remote_auth == RemoteAuth.PSK and shared.local_auth == LocalAuth.PSK
    assert shared.ike_proposals == ("aes256-sha256-modp2048",)
    assert shared.pool == "10.98.0.0/24" and shared.dns_domains == ("corp.example.org",)
    assert shared.policy == "split" and shared.dns == ("10.20.0.53",)
    # what a connection leaves out is [keyd]'s
    assert certs.remote_ids == ("%any",) and certs.local_auth == LocalAuth.PUBKEY
    assert certs.ike_proposals == c.keyd.ike_proposals and certs.pool == "10.99.0.0/16"
    assert certs.protected_networks == ("10.20.0.0/16",) and certs.policy is None


def test_keyd_alone_is_the_legacy_connection(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, '[keyd]\nidentity = "gw"\npsk_file = "/p"\n'
                                    'cert_file = "/c"\nkey_file = "/k"\n'
                                    'dns_domains = ["lab.example"]\n'))
    assert not c.explicit_connections
    assert [(x.name, x.remote_auth, x.local_auth) for x in c.connections] == [
        ("default-pubkey", RemoteAuth.PUBKEY, LocalAuth.PUBKEY),
        ("default-psk", RemoteAuth.PSK, LocalAuth.PUBKEY)]
    assert c.connections[1].remote_ids == ("%any",)
    assert c.connections[1].dns_domains == ("lab.example",)
    psk_only = load_config(write(tmp_path, '[keyd]\nidentity = "gw"\npsk_file = "/p"\n'))
    assert [(x.name, x.local_auth) for x in psk_only.connections] == [
        ("default-psk", LocalAuth.PSK)]


def test_ipv6_pool_per_connection_and_in_keyd(tmp_path: Path) -> None:
    dual = ('\n[[keyd.connections]]\nname = "dual"\nremote_auth = "psk"\n'
            'pool6 = "fd00:99::/64"\nprotected_networks = ["0.0.0.0/0", "::/0"]\n'
            'dns = ["10.20.0.53", "fd00:20::53"]\n')
    c = load_config(write(tmp_path, HEAD + dual + CERTS))
    first, certs = c.connections
    assert first.pool6 == "fd00:99::/64" and first.pool == "10.99.0.0/16"
    assert first.protected_networks == ("0.0.0.0/0", "::/0")
    assert first.dns == ("10.20.0.53", "fd00:20::53")
    assert certs.pool6 is None   # [keyd] has none
    legacy = load_config(write(tmp_path, '[keyd]\nidentity = "gw"\npsk_file = "/p"\n'
                                         'pool6 = "fd00:99::/112"\n'
                                         'protected_networks = ["0.0.0.0/0", "::/0"]\n'))
    assert [x.pool6 for x in legacy.connections] == ["fd00:99::/112"]
    with pytest.raises(ConfigError, match=r"keyd\.pool6 needs an IPv6 network"):
        load_config(write(tmp_path, '[keyd]\nidentity = "gw"\npsk_file = "/p"\n'
                                    'pool6 = "fd00:99::/112"\n'))


BAD = [
    ('[[keyd.connections]]\nremote_auth = "psk"\n', "keyd.connections[0].name must be a name"),
    ('[[keyd.connections]]\nname = "a b"\nremote_auth = "psk"\n',
     "keyd.connections[0].name must be a name"),
    ('[[keyd.connections]]\nname = "x"\n', "keyd.connections.x.remote_auth is required"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "password"\n',
     "keyd.connections.x.remote_auth must be pubkey|psk|eap-mschapv2|eap-radius|eap-tls"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nlocal_auth = "eap"\n',
     "keyd.connections.x.local_auth must be pubkey|psk, not 'eap'"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "pubkey"\nlocal_auth = "psk"\n',
     "keyd.connections.x.local_auth = psk needs remote_auth = psk"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\ncolour = 1\n',
     "keyd.connections.x: unknown field 'colour'"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\n'
     '[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\n',
     "keyd.connections.x: a second connection of that name"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nremote_ids = [""]\n',
     "keyd.connections.x.remote_ids must be identities"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nremote_ids = []\n',
     "keyd.connections.x.remote_ids must be identities"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nremote_ids = 7\n',
     "keyd.connections.x.remote_ids must be a list of strings"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\npool = "10.0.0.1/8"\n',
     "keyd.connections.x.pool is not a network"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\npool = "10.0.0.0/31"\n',
     "keyd.connections.x.pool must be an IPv4 network of at least 4 addresses"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\ndns = ["ns1"]\n',
     "keyd.connections.x.dns: not an IP address: 'ns1'"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\ndns_domains = ["-bad.example"]\n',
     "keyd.connections.x.dns_domains: not a DNS name"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nprotected_networks = ["lan"]\n',
     "keyd.connections.x.protected_networks: not a network: 'lan'"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\npool6 = "fd00:99::/64"\n',
     "keyd.connections.x.pool6 needs an IPv6 network in keyd.connections.x.protected_networks"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\npool6 = "10.99.0.0/24"\n',
     "keyd.connections.x.pool6 must be an IPv6 network"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\npool6 = "fd00:99::1/64"\n',
     "keyd.connections.x.pool6 is not a network"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\npolicy = "a/b"\n',
     "keyd.connections.x.policy must be a policy name"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nike_proposals = ["rot13"]\n',
     "keyd.connections.x proposals:"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nesp_proposals = []\n',
     "keyd.connections.x.esp_proposals must not be empty"),
    ('[[keyd.connections]]\nname = "x"\nremote_auth = "psk"\nike_proposals = 5\n',
     "keyd.connections.x.ike_proposals must be a list of strings"),
    ('[keyd.connections]\nname = "x"\n', "keyd.connections must be a list of tables"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_connection_is_one_line_naming_file_and_field(
        tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, HEAD + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and message in line, line


@pytest.mark.parametrize(("head", "conn", "message"), [
    ('[keyd]\nidentity = "gw"\ncert_file = "/c"\nkey_file = "/k"\n',
     'name = "x"\nremote_auth = "pubkey"\n', "remote_auth = pubkey needs keyd.ca_file"),
    ('[keyd]\nidentity = "gw"\ncert_file = "/c"\nkey_file = "/k"\n',
     'name = "x"\nremote_auth = "psk"\n', "remote_auth = psk needs keyd.secrets_file"),
    ('[keyd]\nidentity = "gw"\nsecrets_file = "/s"\n',
     'name = "x"\nremote_auth = "psk"\n', "local_auth = pubkey needs keyd.cert_file"),
    ('[keyd]\nidentity = "gw"\ncert_file = "/c"\nkey_file = "/k"\n',
     'name = "x"\nremote_auth = "eap-tls"\n',
     'remote_auth = eap-tls needs keyd.eap = "eap-radius"'),
    ('[keyd]\nidentity = "gw"\ncert_file = "/c"\nkey_file = "/k"\nsecrets_file = "/s"\n'
     'eap = "eap-mschapv2"\neap_users_file = "/u"\n',
     'name = "x"\nremote_auth = "eap-radius"\n', "remote_auth = eap-radius needs keyd.eap"),
    ('[keyd]\nidentity = "gw"\nsecrets_file = "/s"\npsk_file = "/p"\n',
     'name = "x"\nremote_auth = "psk"\nlocal_auth = "psk"\n',
     "keyd.psk_file is the PSK of the [keyd] connection only"),
])
def test_connection_needs_its_credentials(tmp_path: Path, head: str, conn: str,
                                          message: str) -> None:
    path = write(tmp_path, head + "[[keyd.connections]]\n" + conn)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def secrets_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_secrets_file(tmp_path: Path) -> None:
    s = load_secrets(secrets_file(tmp_path, '''
[[psk]]
id = "alice@example.org"
secret = "alice secret"
[[psk]]
id = ["*@lab.example", "bob@example.org"]
secret = "0x00ff10"
[[psk]]
id = "dave@example.org"
secret = "0sAP8Q"
[[eap]]
id = "carol@example.org"
password = "carol's password"
'''))
    assert s.psk("alice@example.org") == b"alice secret"
    assert s.psk("x@lab.example") == s.psk("bob@example.org") == b"\x00\xff\x10"
    assert s.psk("dave@example.org") == b"\x00\xff\x10"     # base64, as strongSwan's "0s"
    assert s.psk("mallory@example.org") is None
    assert s.eap_password("carol@example.org") == "carol's password"
    assert s.eap_password("alice@example.org") is None


@pytest.mark.parametrize(("text", "message"), [
    ('[[psk]]\nid = "a"\n', "psk[0].secret must be a non-empty string"),
    ('[[psk]]\nsecret = "s"\n', "psk[0].id must be an identity or a list"),
    ('[[psk]]\nid = ""\nsecret = "s"\n', "psk[0].id must not be empty"),
    ('[[psk]]\nid = "a"\nsecret = "0xzz"\n', "psk[0].secret: 0x… is not valid hex"),
    ('[[psk]]\nid = "a"\nsecret = "0szz*"\n', "psk[0].secret: 0s… is not valid base64"),
    ('[[psk]]\nid = "a"\nsecret = "s"\nnote = 1\n', "psk[0]: unknown field 'note'"),
    ('[[eap]]\nid = "*@example.org"\npassword = "p"\n', "eap[0].id: an EAP user is one"),
    ('[[eap]]\nid = "u"\npassword = "p"\n[[eap]]\nid = "U"\npassword = "q"\n',
     "eap[1].id: 'U' is listed twice"),
    ('[[eap]]\nid = "u"\npassword = 5\n', "eap[0].password must be a non-empty string"),
    ('[users]\n', "unknown section 'users'"),
    ('psk = 3\n', "psk must be a list of tables"),
    ('[[psk]\n', "not TOML"),
])
def test_bad_secrets_file_is_one_line_without_the_secret(
        tmp_path: Path, text: str, message: str) -> None:
    path = secrets_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_secrets(path)
    line = str(err.value)
    assert "\n" not in line and path in line and message in line, line
    assert "0xzz" not in line and "zz*" not in line and "carol" not in line


def test_secrets_file_must_be_private(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, '[[psk]]\nid = "a"\nsecret = "s"\n', mode=0o640)
    with pytest.raises(ConfigError, match=r"readable by group or others.*chmod 600"):
        load_secrets(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_secrets(str(tmp_path / "absent"))


def test_documented_connections_example_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    blocks = [b.split("```")[0] for b in doc.split("```toml")[1:]]
    block = next(b for b in blocks if "[[keyd.connections]]" in b)
    c = load_config(write(tmp_path, block))
    assert [x.name for x in c.connections] == ["apple-psk", "employees"]
    assert c.connections[0].protected_networks == ("10.20.0.0/16", "10.21.0.0/16")
    assert c.connections[1].remote_auth == RemoteAuth.PUBKEY
    secrets = next(b for b in blocks if "[[psk]]" in b)
    path = tmp_path / "secrets.toml"
    path.write_text(secrets.replace("…", "x"))
    path.chmod(0o600)
    s = load_secrets(str(path))
    assert s.psk("alice@example.org") == b"correct horse battery"
    assert s.eap_password("carol@example.org") == "x"
