"""The IKE message decoder: header and every payload type (RFC 7296 §3), the SK payload opened
with a known key for every IKE suite (§3.14, RFC 5282, RFC 7634), and the EAP packets inside
(RFC 3748, EAP-Identity, EAP-MSCHAPv2).

An input is `suite byte | mode byte | rest`. The suite byte picks the SK keys. Mode even: `rest`
is a whole datagram, decoded and, if it holds SK, opened with those keys (a seed sealed under
them decrypts; the fuzzer explores the outer framing and the ICV check). Mode odd: `rest` is
`first inner payload type | plaintext`, sealed here under the keys into an IKE_AUTH request,
so decryption succeeds and the fuzzer reaches the inner payload parser and SK padding.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from soak import decoders as d

TITLE = "IKE message: every payload, SK with a known key (every suite), EAP inside"
TYPED: tuple[type[BaseException], ...] = (d.IkeRemoteError, d.RemoteEapError)

_SPI_I, _SPI_R = 0x0102030405060708, 0x1112131415161718
_IKE_AUTH, _INITIATOR = 35, 0x08
_SK, _HEADER_LEN = 46, 28


def _suites() -> list[d.SkKeys]:
    out = []
    for encr in d.ENCRS.values():
        integs = [None] if encr.aead else list(d.INTEGS.values())
        for integ in integs:
            enc_key = bytes(range(1, encr.key_len + 1))
            integ_key = bytes(range(101, 101 + integ.key_len)) if integ else b""
            out.append(d.SkKeys(encr, integ, enc_key, integ_key))
    return out


SUITES = _suites()


def _iv(keys: d.SkKeys) -> bytes:
    return bytes(range(0x40, 0x40 + keys.encr.iv_len))


_ciphers: dict[int, ChaCha20Poly1305 | AESGCM | Cipher] = {}


def _cipher(keys: d.SkKeys, iv: bytes) -> ChaCha20Poly1305 | AESGCM | Cipher:
    key, kind = keys.enc_key, keys.encr.kind
    if kind == "chacha20-poly1305":
        return ChaCha20Poly1305(key[:-4])
    if kind == "aes-gcm":
        return AESGCM(key[:-4])
    if kind == "aes-ctr":
        return Cipher(algorithms.AES(key[:-4]), modes.CTR(key[-4:] + iv + b"\0\0\0\1"))
    if kind == "3des-cbc":
        return Cipher(TripleDES(key), modes.CBC(iv))
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def seal_plaintext(keys: d.SkKeys, first_inner: int, plain: bytes) -> bytes:
    """An IKE_AUTH request whose SK carries `plain` exactly (padding and pad length included,
    as the peer chose them), sealed under `keys` with `cryptography`."""
    encr, integ = keys.encr, keys.integ
    if not encr.aead and len(plain) % encr.block_len:
        plain += bytes(-len(plain) % encr.block_len)
    iv = _iv(keys)
    icv_len = encr.icv_len if encr.aead else integ.icv_len  # type: ignore[union-attr]
    body_len = len(iv) + len(plain) + icv_len
    total = _HEADER_LEN + 4 + body_len
    aad = (_SPI_I.to_bytes(8) + _SPI_R.to_bytes(8) + bytes((_SK, 0x20, _IKE_AUTH, _INITIATOR))
           + (1).to_bytes(4) + total.to_bytes(4) + bytes((first_inner, 0))
           + (4 + body_len).to_bytes(2))
    key = keys.enc_key
    cipher = _ciphers.get(id(keys))
    if cipher is None:  # one cipher object per suite, the IV is fixed: built once
        cipher = _ciphers[id(keys)] = _cipher(keys, iv)
    if isinstance(cipher, ChaCha20Poly1305 | AESGCM):
        sealed = cipher.encrypt(key[-4:] + iv, plain, aad)
        return aad + iv + sealed[:len(plain) + icv_len]
    enc = cipher.encryptor()
    signed = aad + iv + enc.update(plain) + enc.finalize()
    assert integ is not None
    if integ.hash is None:
        c = cmac.CMAC(algorithms.AES(keys.integ_key))
        c.update(signed)
        mac = c.finalize()
    else:
        h = hmac.HMAC(keys.integ_key, integ.hash())
        h.update(signed)
        mac = h.finalize()
    return signed + mac[:icv_len]


def _exchange_datagrams() -> list[bytes]:
    """Real datagrams of a PSK handshake between the project's initiator and responder."""
    psk = b"soak fuzz seed"
    server = d.Responder(d.ResponderConfig(
        identity="vpn.example.net", credentials=d.Credentials(psk=psk),
        ike_proposals=["aes128gcm16-prfsha256-x25519"], esp_proposals=["aes128gcm16"],
        protected_networks=["10.20.0.0/16"], dns=["10.20.0.53"]))
    client = d.Initiator(d.InitiatorConfig(
        identity="client@example.net", credentials=d.Credentials(psk=psk),
        ike_proposals=["aes128gcm16-prfsha256-x25519"], esp_proposals=["aes128gcm16"]))
    grams: list[bytes] = []
    now = 1000.0
    client.connect(("192.0.2.10", 500), ("203.0.113.10", 500), now)
    for _ in range(6):
        moved = 0
        for a, b in ((client, server), (server, client)):
            while (ev := a.next_event()) is not None:
                if isinstance(ev, d.AddressRequested):
                    server.assign_address(ev.ike_sa_id, "10.99.0.1", now)
            for g in a.datagrams_to_send():
                grams.append(g.data)
                b.receive_datagram(g.data, g.src, g.dst, now)
                moved += 1
        if not moved:
            break
    return grams


def _payload_chain() -> list[object]:
    """One payload of every type the decoder knows, as a peer could send them."""
    from keyd.ike import payloads as p

    eap_identity = d.push_eap(d.pull_eap(b"\x02\x01\x00\x0a\x01alice"))
    # Response/MSCHAPv2 Response (RFC 2759 §4): OpCode 2, MS-CHAPv2-ID 7, MS-Length, value
    # size 49, the 49-byte value, the name
    value = bytes(49) + b"alice"
    mschap = bytes((2, 2, 0, 10 + len(value), 26, 2, 7, 0, 5 + len(value), 49)) + value
    return [
        p.SaPayload((p.Proposal(1, 3, b"\1\2\3\4", (p.Transform(1, 20, 128),
                                                   p.Transform(5, 0, None))),)),
        p.KePayload(31, bytes(32)), p.NoncePayload(bytes(range(32))),
        p.IdiPayload(3, b"client@example.net"), p.IdrPayload(2, b"vpn.example.net"),
        p.CertPayload(4, b"\x30\x03\x02\x01\x01"), p.CertReqPayload(4, bytes(20)),
        p.AuthPayload(2, bytes(32)), p.NotifyPayload(16388, bytes(20)),
        p.NotifyPayload(16396), p.NotifyPayload(16393, b"", 3, b"\1\2\3\4"),
        p.DeletePayload(3, (b"\1\2\3\4",)), p.VendorPayload(b"soak"),
        p.TsiPayload((p.TrafficSelector(7, 0, 0, 65535, bytes(4), b"\xff" * 4),)),
        p.TsrPayload((p.TrafficSelector(8, 6, 0, 443, bytes(16), b"\xff" * 16),)),
        p.CpPayload(1, ((1, b""), (3, b""))), p.EapPayload(eap_identity),
        p.EapPayload(mschap),
    ]


def seeds() -> list[bytes]:
    chain = _payload_chain()
    header = d.Header(_SPI_I, _SPI_R, 0, _IKE_AUTH, _INITIATOR, 1)
    # on port 4500 a datagram starts with the non-ESP marker (RFC 3948 §2.2)
    out = [b"\0\0" + g.removeprefix(bytes(4)) for g in _exchange_datagrams()]
    out.append(b"\0\0" + d.push_message(header, chain))  # type: ignore[arg-type]
    for i, keys in enumerate(SUITES):
        sel = bytes((i,))
        out.append(sel + b"\0" + d.seal_sk(header, chain, keys,  # type: ignore[arg-type]
                                           lambda n: bytes(n)))
        for one in chain:
            # the same payload as plaintext for the sealing mode: type | body | pad length 0
            plain = d.push_message(header, [one])  # type: ignore[list-item]
            pad = -(len(plain) - _HEADER_LEN + 1) % keys.encr.block_len
            out.append(sel + b"\1" + plain[16:17] + plain[_HEADER_LEN:] + bytes(pad)
                       + bytes((pad,)))
    return out


_MSCHAP = d.MschapV2Server(challenge=bytes(16), ms_id=7)


def _decode_eap(raw: bytes) -> None:
    packet = d.pull_eap(raw)
    if packet.type == d.EapType.IDENTITY:
        d.read_identity(packet)
    elif packet.type == d.EapType.MSCHAPV2:
        _MSCHAP.check_response(packet, packet.identifier + 1, lambda _identity: "secret")


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    keys = SUITES[data[0] % len(SUITES)]
    datagram = seal_plaintext(keys, data[2], data[3:]) if data[1] & 1 else data[2:]
    message, sk = d.pull_message(datagram)
    payloads = list(message.payloads)
    if sk is not None:
        payloads += d.open_sk(message, sk, keys)
    for p in payloads:
        if isinstance(p, d.EapPayload):
            _decode_eap(p.data)
