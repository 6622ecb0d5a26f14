"""MS-CHAPv2 arithmetic (RFC 2759 §8) and its keys (RFC 3079 §3).

MD4 comes from pycryptodome (`cryptography` does not offer it: OpenSSL 3 keeps it in the
legacy provider). DES is `cryptography`'s TripleDES with the one key three times (EDE with
K1 = K2 = K3 is single DES); SHA-1 is `cryptography`'s.
"""

from __future__ import annotations

from Crypto.Hash import MD4
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, modes

CHALLENGE_LEN = 16
NT_RESPONSE_LEN = 24
MSK_LEN = 64


def _sha1(*parts: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA1())
    for part in parts:
        h.update(part)
    return h.finalize()


def nt_password_hash(password: str) -> bytes:
    """RFC 2759 §8.3: MD4 of the password in UTF-16LE."""
    return MD4.new(password.encode("utf-16-le")).digest()


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """RFC 2759 §8.4."""
    return MD4.new(password_hash).digest()


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes,
                   username: str) -> bytes:
    """RFC 2759 §8.2: the first 8 bytes of SHA-1(PeerChallenge | AuthChallenge | UserName).
    `username` is without any domain (`DOMAIN\\user` hashes `user`)."""
    return _sha1(peer_challenge, authenticator_challenge, username.encode())[:8]


def _des_key(key7: bytes) -> bytes:
    """RFC 2759 §8.6: 56 key bits spread over 8 bytes (the parity bits DES ignores)."""
    bits = int.from_bytes(key7, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des_encrypt(clear: bytes, key7: bytes) -> bytes:
    key = _des_key(key7)
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return enc.update(clear) + enc.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """RFC 2759 §8.5: three DES encryptions of the 8-byte challenge under the zero-padded
    password hash."""
    z = password_hash + bytes(21 - len(password_hash))
    return b"".join(_des_encrypt(challenge, z[i:i + 7]) for i in (0, 7, 14))


def generate_nt_response(authenticator_challenge: bytes, peer_challenge: bytes,
                         username: str, password_hash: bytes) -> bytes:
    """RFC 2759 §8.1 (from the password's hash, so a stored NT hash works too)."""
    return challenge_response(
        challenge_hash(peer_challenge, authenticator_challenge, username), password_hash)


_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"


def authenticator_response(password_hash: bytes, nt_response: bytes, peer_challenge: bytes,
                           authenticator_challenge: bytes, username: str) -> str:
    """RFC 2759 §8.7: the "S=<40 hex digits>" string of the Success packet."""
    digest = _sha1(hash_nt_password_hash(password_hash), nt_response, _MAGIC1)
    digest = _sha1(digest, challenge_hash(peer_challenge, authenticator_challenge, username),
                   _MAGIC2)
    return "S=" + digest.hex().upper()


# RFC 3079 §3.4 (GetMasterKey, GetAsymmetricStartKey)
_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = (b"On the client side, this is the send key; "
               b"on the server side, it is the receive key.")
_KEY_MAGIC3 = (b"On the client side, this is the receive key; "
               b"on the server side, it is the send key.")
_SHS_PAD1 = bytes(40)
_SHS_PAD2 = b"\xf2" * 40


def master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """RFC 3079 §3.4 GetMasterKey."""
    return _sha1(password_hash_hash, nt_response, _KEY_MAGIC1)[:16]


def asymmetric_start_key(master: bytes, key_len: int, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 §3.4 GetAsymmetricStartKey."""
    magic = (_KEY_MAGIC3 if is_server else _KEY_MAGIC2) if is_send else (
        _KEY_MAGIC2 if is_server else _KEY_MAGIC3)
    return _sha1(master, _SHS_PAD1, magic, _SHS_PAD2)[:key_len]


def msk(password_hash: bytes, nt_response: bytes) -> bytes:
    """The EAP-MSCHAPv2 MSK as strongSwan's eap_mschapv2 (GenerateMSK) and FreeRADIUS make it:
    the server's MasterReceiveKey | MasterSendKey (16 bytes each, RFC 3079 §3.4), zero-padded
    to 64 bytes. Both ends compute the same value."""
    master = master_key(hash_nt_password_hash(password_hash), nt_response)
    recv = asymmetric_start_key(master, 16, is_send=False, is_server=True)
    send = asymmetric_start_key(master, 16, is_send=True, is_server=True)
    return recv + send + bytes(MSK_LEN - 32)


def username_of(identity: str) -> str:
    """The user part MS-CHAPv2 hashes: `DOMAIN\\user` → `user` (strongSwan's
    extract_username, and Windows)."""
    return identity.partition("\\")[2] if "\\" in identity else identity
