"""
A node's long-term identity and the signature scheme behind a seam.

L{ICrypto} is what the overlay needs from cryptography: its own public key,
signing, and verifying somebody else's signature.  L{NodeIdentity} is the real
one (EC P-256, ECDSA with SHA-256, the key kept in the state directory).
L{SimulatedCrypto} is an I{insecure} stand-in used only by the simulator so
that ten thousand nodes fit in one process on two cores; the real path is
exercised by the unit tests of the handshake and the DHT and by the
integration test with real daemons.
"""

from __future__ import annotations

import hashlib
import os
import random

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from zope.interface import Attribute, Interface, implementer

from wow.overlay import address as A
from wow.util.durable import atomic_write

KEY_FILE = "overlay-key.pem"


class IdentityError(Exception):
    """The key file exists but cannot be used."""


class ICrypto(Interface):
    public: bytes = Attribute("This node's public key in its wire form (DER for P-256).")
    address: int = Attribute("This node's overlay address, the digest of C{public}.")

    def sign(data: bytes) -> bytes:
        """Sign C{data} with this node's private key."""

    def verify(public: bytes, signature: bytes, data: bytes) -> bool:
        """Whether C{signature} over C{data} was made by the owner of C{public}."""


def address_of(public: bytes) -> int:
    """The overlay address belonging to the public key C{public}."""
    return A.digest(public)


@implementer(ICrypto)
class NodeIdentity:
    """An EC P-256 key pair; the address is the digest of the DER public key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.address = address_of(self.public)
        self._verifiers: dict[bytes, ec.EllipticCurvePublicKey | None] = {}

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, state_dir: str) -> NodeIdentity:
        """
        The key in C{state_dir}, created (mode 0600, atomically) on first use.

        Reusing the key keeps the node's address across restarts, which is how
        peers recognise a restarted node.
        """
        path = os.path.join(state_dir, KEY_FILE)
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except FileNotFoundError:
            identity = cls.generate()
            pem = identity._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            atomic_write(path, pem, mode=0o600)
            return identity
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise IdentityError(f"overlay key {path} is unreadable: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise IdentityError(f"overlay key {path} is not an EC P-256 key")
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verify(self, public: bytes, signature: bytes, data: bytes) -> bool:
        if public in self._verifiers:
            key = self._verifiers[public]
        else:
            try:
                loaded = serialization.load_der_public_key(public)
                key = loaded if isinstance(loaded, ec.EllipticCurvePublicKey) else None
            except (ValueError, TypeError):
                key = None
            if len(self._verifiers) > 4096:
                self._verifiers.clear()
            self._verifiers[public] = key
        if key is None:
            return False
        try:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@implementer(ICrypto)
class SimulatedCrypto:
    """
    INSECURE stand-in for L{NodeIdentity}, for the simulator only.

    The "public key" is 32 random bytes and a "signature" is a hash of the
    key and the data, so anybody could forge one.  It keeps the protocol's
    shape (keys travel, addresses are digests, signatures are checked and a
    wrong one is refused) at a thousandth of ECDSA's cost.
    """

    def __init__(self, rng: random.Random) -> None:
        self.public = rng.getrandbits(256).to_bytes(32, "big")
        self.address = address_of(self.public)

    def sign(self, data: bytes) -> bytes:
        return hashlib.blake2b(self.public + data, digest_size=16).digest()

    def verify(self, public: bytes, signature: bytes, data: bytes) -> bool:
        return hashlib.blake2b(public + data, digest_size=16).digest() == signature
