"""Diffie-Hellman groups 14 (modp2048, RFC 3526), 19/20 (ecp256/384, RFC 5903), 31 (x25519,
RFC 8031) through `cryptography`. KE payload encodings follow RFC 7296 §3.4 / RFC 5903 §7 /
RFC 8031 §2."""

from __future__ import annotations

import warnings

from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.utils import CryptographyDeprecationWarning

from .constants import Notify
from .errors import RemoteProtocolError

# RFC 3526 §3: the 2048-bit MODP group
MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)


# group 14 is required for interop (strongSwan's "modp2048"): cryptography's notice that
# finite-field DH is deprecated is silenced where it is used
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    _MODP2048 = dh.DHParameterNumbers(MODP2048_P, 2).parameters()
_CURVES: dict[int, tuple[ec.EllipticCurve, int]] = {
    19: (ec.SECP256R1(), 32),
    20: (ec.SECP384R1(), 48),
}
SUPPORTED_GROUPS = (14, 19, 20, 31)


class KeyExchange:
    """One ephemeral DH key of `group`: `public` is the KE payload data."""

    def __init__(self, group: int, private: bytes | None = None) -> None:
        """`private` fixes the private value (ECP and x25519 only: test vectors)."""
        self.group = group
        if private is not None and group == 14:
            raise ValueError("a fixed private value is supported for ECP and x25519 only")
        if group == 14:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                self._dh = _MODP2048.generate_private_key()
                self.public = self._dh.public_key().public_numbers().y.to_bytes(256, "big")
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
        else:
            raise ValueError(f"unsupported DH group {group}")

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir; a malformed or invalid peer value raises RemoteProtocolError(INVALID_SYNTAX)."""
        try:
            if self.group == 14:
                if len(peer_public) != 256:
                    raise ValueError("length")
                y = int.from_bytes(peer_public, "big")
                if not 1 < y < MODP2048_P - 1:
                    raise ValueError("range")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                    peer = dh.DHPublicNumbers(y, _MODP2048.parameter_numbers()).public_key()
                    # RFC 7296 §2.14: g^ir is padded with zeros to the length of the prime
                    return self._dh.exchange(peer).rjust(256, b"\0")
            if self.group in _CURVES:
                curve, size = _CURVES[self.group]
                if len(peer_public) != 2 * size:
                    raise ValueError("length")
                point = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer_public)
                return self._ec.exchange(ec.ECDH(), point)  # RFC 5903 §7: the x coordinate
            if len(peer_public) != 32:
                raise ValueError("length")
            peer_x = x25519.X25519PublicKey.from_public_bytes(peer_public)
            return self._x.exchange(peer_x)
        except ValueError as e:
            raise RemoteProtocolError(f"bad KE data for group {self.group}: {e}",
                                      Notify.INVALID_SYNTAX) from None
