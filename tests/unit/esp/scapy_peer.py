"""scapy's SecurityAssociation as the independent ESP peer of the interop tests.

`Peer` is the client side of a Child SA: scapy encrypts what the client sends (its outbound SA
is our inbound one) and decrypts what we send. Keys are generated once per suite.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import algorithms, modes
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ipsec import CRYPT_ALGOS, ESP, CryptAlgo, SecurityAssociation
from scapy.packet import Raw, raw

from cluster.esp import ChildSa, IvSource, SaKeys, TrafficSelector, suite


def _short_tag_gcm(icv: int) -> str:
    """scapy's AES-GCM with a truncated ICV, registered under a name of its own: scapy's
    encrypt/decrypt over cryptography's GCM mode (its AESGCM-based "AES-GCM" entry only
    knows 16-byte tags)."""
    name = f"AES-GCM-{icv}"
    CRYPT_ALGOS[name] = CryptAlgo(name, cipher=algorithms.AES, mode=modes.GCM, salt_size=4,
                                  block_size=1, iv_size=8, icv_size=icv,
                                  format_mode_iv=lambda sa, iv, **kw: sa.crypt_salt + iv)
    return name


SCAPY_ENCR = {
    **{f"aes{b}gcm16": "AES-GCM" for b in (128, 192, 256)},
    **{f"aes{b}gcm{icv}": _short_tag_gcm(icv) for b in (128, 192, 256) for icv in (8, 12)},
    **{f"aes{b}": "AES-CBC" for b in (128, 192, 256)},
    **{f"aes{b}ctr": "AES-CTR" for b in (128, 192, 256)},
    "chacha20poly1305": "CHACHA20-POLY1305", "3des": "3DES",
}
SCAPY_INTEG = {"sha256": "SHA2-256-128", "sha384": "SHA2-384-192", "sha512": "SHA2-512-256",
               "sha1": "HMAC-SHA1-96", "aescmac": "AES-CMAC-96"}
SUITES = [
    ("aes128gcm16", None), ("aes256gcm16", None), ("chacha20poly1305", None),
    ("aes128", "sha256"), ("aes256", "sha256"), ("aes128", "sha384"), ("aes256", "sha512"),
    # what native clients add (Windows, Apple, Android): docs/configuration.md
    ("aes192gcm16", None), ("aes128gcm8", None), ("aes256gcm12", None), ("aes192gcm8", None),
    ("aes192", "sha1"), ("aes256", "sha1"), ("aes128", "aescmac"),
    ("aes128ctr", "sha256"), ("aes192ctr", "sha1"), ("aes256ctr", "aescmac"),
    ("3des", "sha1"),
]

VIP = "203.0.113.10"
CLIENT = "198.51.100.7"
CLIENT_VIRTUAL_IP = "10.99.0.7"
SERVER = "10.20.0.10"
SPI_IN = 0xC1000001  # node's inbound = client's outbound
SPI_OUT = 0xC2000002


@dataclass
class Peer:
    encr: str
    integ: str | None
    esn: bool
    udp: bool
    keys: SaKeys
    to_node: SecurityAssociation  # client → node (our inbound)
    from_node: SecurityAssociation  # node → client (our outbound)

    def node_sa(self, window: int = 1024, prefix: bytes = b"\x00\x00\x00\x01") -> ChildSa:
        return ChildSa(spi_in=SPI_IN, spi_out=SPI_OUT, encr=self.encr, integ=self.integ,
                       esn=self.esn, keys=self.keys,
                       ts_remote=(TrafficSelector.from_network(f"{CLIENT_VIRTUAL_IP}/32"),),
                       replay_window=window, iv_source=IvSource(prefix))

    def client_packet(self, seq: int | None = None, payload: bytes = b"ping",
                      src: str = CLIENT_VIRTUAL_IP) -> tuple[bytes, bytes]:
        """(inner packet, ESP bytes as our core sees them) of one client → server packet."""
        inner = IP(src=src, dst=SERVER) / ICMP(id=7, seq=1) / Raw(payload)
        if seq is not None:
            # set on the SA: scapy reads a keyword seq_num=0 / esn=0 as "use the SA's own"
            self.to_node.seq_num = seq & 0xFFFFFFFF
            self.to_node.esn = seq >> 32
        outer = self.to_node.encrypt(inner)
        wire = raw(outer)
        ihl = (wire[0] & 0x0F) * 4
        if self.udp:
            assert wire[9] == socket.IPPROTO_UDP
            return raw(inner), wire[ihl + 8:]
        assert wire[9] == socket.IPPROTO_ESP
        return raw(inner), wire[ihl:]

    def client_receive(self, esp: bytes, seq_high: int = 0) -> bytes:
        """scapy decrypts an ESP packet our core built; returns the inner packet."""
        if self.udp:
            outer = IP(raw(IP(src=VIP, dst=CLIENT) / UDP(sport=4500, dport=4500) / Raw(esp)))
        else:
            outer = IP(raw(IP(src=VIP, dst=CLIENT, proto=socket.IPPROTO_ESP) / Raw(esp)))
        assert outer.haslayer(ESP)
        self.from_node.esn = seq_high
        return raw(self.from_node.decrypt(outer))


def make_peer(encr: str, integ: str | None, esn: bool, udp: bool, seed: int = 1) -> Peer:
    rng = random.Random(f"{encr}-{integ}-{seed}")
    s = suite(encr, integ)
    keys = SaKeys(
        enc_key_in=rng.randbytes(s.enc_key_len), enc_key_out=rng.randbytes(s.enc_key_len),
        integ_key_in=rng.randbytes(s.integ_key_len), integ_key_out=rng.randbytes(s.integ_key_len),
    )

    def scapy_sa(spi: int, enc: bytes, integ_key: bytes, src: str, dst: str
                 ) -> SecurityAssociation:
        return SecurityAssociation(
            ESP, spi=spi, crypt_algo=SCAPY_ENCR[encr], crypt_key=enc,
            auth_algo=SCAPY_INTEG[integ] if integ else None,
            auth_key=integ_key if integ else None,
            tunnel_header=IP(src=src, dst=dst),
            nat_t_header=UDP(sport=4500, dport=4500) if udp else None,
            esn_en=esn, esn=0,
        )

    return Peer(encr, integ, esn, udp, keys,
                to_node=scapy_sa(SPI_IN, keys.enc_key_in, keys.integ_key_in, CLIENT, VIP),
                from_node=scapy_sa(SPI_OUT, keys.enc_key_out, keys.integ_key_out, VIP, CLIENT))
