"""Diffie-Hellman groups through `cryptography`: MODP 2 (modp1024, RFC 2409 §6.2: legacy),
14/15/16 (modp2048/3072/4096, RFC 3526), ECP 19/20/21 (ecp256/384/521, RFC 5903), 31/32 (x25519
and x448, RFC 8031). KE payload encodings follow RFC 7296 §3.4 / RFC 5903 §7 / RFC 8031 §2."""

from __future__ import annotations

import warnings

from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning

from .constants import Notify
from .errors import IkeProtocolError

# The MODP primes, p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k) with the k of
# RFC 2409 §6.2 / RFC 3526 §§3-5; generator 2
MODP1024_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)

MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)

MODP3072_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)

MODP4096_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D788719A10BDBA5B2699C32718"
    "6AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D"
    "99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA993B4EA98"
    "8D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)


_MODP_PRIMES = {2: MODP1024_P, 14: MODP2048_P, 15: MODP3072_P, 16: MODP4096_P}
# the MODP groups are required for interop (strongSwan's "modp2048", Windows' modp1024):
# cryptography's notice that finite-field DH is deprecated is silenced where it is used
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    _MODP = {g: dh.DHParameterNumbers(p, 2).parameters() for g, p in _MODP_PRIMES.items()}
_CURVES: dict[int, tuple[ec.EllipticCurve, int]] = {
    19: (ec.SECP256R1(), 32),
    20: (ec.SECP384R1(), 48),
    21: (ec.SECP521R1(), 66),
}
_MONTGOMERY = {31: 32, 32: 56}  # x25519 / x448 public value sizes
SUPPORTED_GROUPS = (2, 14, 15, 16, 19, 20, 21, 31, 32)


class KeyExchange:
    """One ephemeral DH key of `group`: `public` is the KE payload data."""

    def __init__(self, group: int, private: bytes | None = None) -> None:
        """`private` fixes the private value (ECP and x25519/x448 only: test vectors)."""
        self.group = group
        if private is not None and group in _MODP:
            raise ValueError("a fixed private value is supported for ECP and x25519/x448 only")
        if group in _MODP:
            size = _MODP_PRIMES[group].bit_length() // 8
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                self._dh = _MODP[group].generate_private_key()
                self.public = self._dh.public_key().public_numbers().y.to_bytes(size, "big")
        elif group in _CURVES:
            curve, size = _CURVES[group]
            self._ec = ec.derive_private_key(int.from_bytes(private, "big"), curve) \
                if private is not None else ec.generate_private_key(curve)
            nums = self._ec.public_key().public_numbers()
            self.public = nums.x.to_bytes(size, "big") + nums.y.to_bytes(size, "big")
        elif group == 31:
            self._x = x25519.X25519PrivateKey.from_private_bytes(private) \
                if private is not None else x25519.X25519PrivateKey.generate()
            self.public = self._x.public_key().public_bytes_raw()
        elif group == 32:
            self._x448 = x448.X448PrivateKey.from_private_bytes(private) \
                if private is not None else x448.X448PrivateKey.generate()
            self.public = self._x448.public_key().public_bytes_raw()
        else:
            raise ValueError(f"unsupported DH group {group}")

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir; a malformed or invalid peer value raises IkeProtocolError(INVALID_SYNTAX)."""
        try:
            if self.group in _MODP:
                prime = _MODP_PRIMES[self.group]
                size = prime.bit_length() // 8
                if len(peer_public) != size:
                    raise ValueError("length")
                y = int.from_bytes(peer_public, "big")
                if not 1 < y < prime - 1:
                    raise ValueError("range")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                    nums = _MODP[self.group].parameter_numbers()
                    peer = dh.DHPublicNumbers(y, nums).public_key()
                    # RFC 7296 §2.14: g^ir is padded with zeros to the length of the prime
                    return self._dh.exchange(peer).rjust(size, b"\0")
            if self.group in _CURVES:
                curve, size = _CURVES[self.group]
                if len(peer_public) != 2 * size:
                    raise ValueError("length")
                point = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer_public)
                return self._ec.exchange(ec.ECDH(), point)  # RFC 5903 §7: the x coordinate
            if len(peer_public) != _MONTGOMERY[self.group]:
                raise ValueError("length")
            if self.group == 32:
                return self._x448.exchange(x448.X448PublicKey.from_public_bytes(peer_public))
            peer_x = x25519.X25519PublicKey.from_public_bytes(peer_public)
            return self._x.exchange(peer_x)
        except ValueError as e:
            raise IkeProtocolError(f"bad KE data for group {self.group}: {e}",
                                      Notify.INVALID_SYNTAX) from None
