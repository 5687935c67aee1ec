"""
Stateless DTLS cookies (RFC 6347 4.2.1) bound to the peer's overlay address.

A server answers a cookie-less ClientHello with a HelloVerifyRequest and
keeps nothing; only a ClientHello that echoes a cookie this node made for
that overlay address, recently, earns any state.  So a flood of forged
hellos costs one HMAC and one small reply each, never memory.
"""

from __future__ import annotations

import hashlib
import hmac
import os

#: A cookie stays valid for one to two periods.
COOKIE_PERIOD_S = 30.0
_TAG_LEN = 16


class CookieJar:
    """Makes and checks cookies; the secret lives only in memory."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)

    def _tag(self, bucket: int, source: bytes) -> bytes:
        return hmac.new(self._secret, bytes([bucket]) + source, hashlib.sha256).digest()[:_TAG_LEN]

    def make(self, source: bytes, now: float) -> bytes:
        """A 17-byte cookie for C{source} (an overlay address) at C{now}."""
        bucket = int(now // COOKIE_PERIOD_S) & 0xFF
        return bytes([bucket]) + self._tag(bucket, source)

    def check(self, source: bytes, cookie: bytes, now: float) -> bool:
        """Whether C{cookie} was made by L{make} for C{source} in this or the last period."""
        if len(cookie) != 1 + _TAG_LEN:
            return False
        current = int(now // COOKIE_PERIOD_S) & 0xFF
        bucket = cookie[0]
        if bucket not in (current, (current - 1) & 0xFF):
            return False
        return hmac.compare_digest(cookie[1:], self._tag(bucket, source))
