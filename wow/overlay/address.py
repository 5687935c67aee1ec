"""
160-bit overlay addresses and ring arithmetic.

Addresses are plain Python integers in [0, 2**160) inside the core (cheap to
compare and subtract at every hop); they are 20 big-endian bytes on the wire
and C{wow:<40 hex digits>} in text.
"""

from __future__ import annotations

import hashlib

BITS = 160
SIZE = 20
MODULUS = 1 << BITS
HALF = MODULUS >> 1


def from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "big")


def to_bytes(address: int) -> bytes:
    return address.to_bytes(SIZE, "big")


def digest(data: bytes) -> int:
    """
    The address of C{data}: the first 160 bits of its SHA-256 digest.

    Used both for node addresses (C{data} = the DER public key) and for DHT
    keys, so a key and a node live in the same space.
    """
    return from_bytes(hashlib.sha256(data).digest()[:SIZE])


def clockwise(a: int, b: int) -> int:
    """Distance from C{a} to C{b} going clockwise (increasing addresses)."""
    return (b - a) % MODULUS


def ring_distance(a: int, b: int) -> int:
    """The shorter way round the ring between C{a} and C{b}."""
    d = (b - a) % MODULUS
    return d if d <= HALF else MODULUS - d


def to_text(address: int) -> str:
    return f"wow:{address:040x}"


def short(address: int) -> str:
    """A log-friendly prefix (8 hex digits)."""
    return f"{address:040x}"[:8]


def from_text(text: str) -> int:
    """Parse C{wow:HEX} or bare hex; raise L{ValueError} otherwise."""
    body = text[4:] if text.startswith("wow:") else text
    if len(body) != 2 * SIZE:
        raise ValueError(f"an overlay address has {2 * SIZE} hex digits, not {len(body)}")
    return int(body, 16)
