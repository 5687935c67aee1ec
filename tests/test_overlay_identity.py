"""The node's long-term key: created once (0600), reused, address = digest of the key."""

from __future__ import annotations

import hashlib
import os
import random
import stat

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.overlay import address as A
from wow.overlay.identity import (
    KEY_FILE,
    ICrypto,
    IdentityError,
    NodeIdentity,
    SimulatedCrypto,
)


class IdentityTests(SynchronousTestCase):
    def test_created_private_and_reused(self) -> None:
        d = self.mktemp()
        first = NodeIdentity.load_or_create(d)
        mode = stat.S_IMODE(os.stat(os.path.join(d, KEY_FILE)).st_mode)
        self.assertEqual(mode, 0o600)
        again = NodeIdentity.load_or_create(d)
        self.assertEqual(first.address, again.address)
        self.assertEqual(first.public, again.public)

    def test_address_is_sha256_of_der_key(self) -> None:
        ident = NodeIdentity.generate()
        self.assertEqual(ident.address,
                         int.from_bytes(hashlib.sha256(ident.public).digest()[:20], "big"))
        self.assertTrue(0 <= ident.address < A.MODULUS)

    def test_sign_verify(self) -> None:
        a, b = NodeIdentity.generate(), NodeIdentity.generate()
        sig = a.sign(b"hello")
        self.assertTrue(b.verify(a.public, sig, b"hello"))
        self.assertFalse(b.verify(a.public, sig, b"hellO"))
        self.assertFalse(b.verify(b.public, sig, b"hello"))
        self.assertFalse(b.verify(b"not a key", sig, b"hello"))
        self.assertFalse(b.verify(a.public, b"garbage", b"hello"))

    def test_unusable_key_file(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        with open(os.path.join(d, KEY_FILE), "wb") as f:
            f.write(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
        with self.assertRaises(IdentityError):
            NodeIdentity.load_or_create(d)

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ICrypto, NodeIdentity.generate()))
        sim = SimulatedCrypto(random.Random(1))
        self.assertTrue(verifyObject(ICrypto, sim))
        self.assertTrue(sim.verify(sim.public, sim.sign(b"x"), b"x"))
        self.assertFalse(sim.verify(sim.public, sim.sign(b"x"), b"y"))
