"""
The overlay's wire format: a fixed 44-byte header, then a payload.

Byte by byte (docs/protocol.md has the full description)::

    0      version (1)
    1      type: bits 7-6 delivery mode, bits 5-0 message kind
    2      TTL (hops left)
    3      hop count (hops taken)
    4-23   source overlay address (160 bits, big-endian)
    24-43  destination overlay address (160 bits, big-endian)
    44-    payload

Control payloads are msgpack maps with short string keys, decoded with hard
size limits.  Every decoder raises only L{WireError}, whose C{reason} is the
metrics label of the drop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from wow.overlay import address as A

VERSION = 1
HEADER = struct.Struct("!BBBB20s20s")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 44

#: The largest datagram we send or accept (a 1500-byte path minus IPv4+UDP).
MAX_DATAGRAM = 1472
MAX_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE

DEFAULT_TTL = 64

# Delivery modes (bits 7-6 of the type byte).
LOCAL = 0  #: one link hop, never forwarded (link management)
EXACT = 1  #: only the node with exactly the destination address
CLOSEST = 2  #: the node whose address is closest to the destination
CLOSEST_OTHER = 3  #: like CLOSEST but never the source itself (joins, finger lookups)
MODE_NAMES = {LOCAL: "local", EXACT: "exact", CLOSEST: "closest", CLOSEST_OTHER: "closest-other"}

# Message kinds (bits 5-0).
HELLO = 0x01
REPLY = 0x02
CONFIRM = 0x03
REFUSE = 0x04
PING = 0x05
PONG = 0x06
CLOSE = 0x07
NEIGHBOURS = 0x08
CTRL = 0x10
DHT = 0x11
#: Reserved for IP-over-overlay: payload starts with L{DATA_HEADER}.
DATA = 0x12
#: Kinds applications may register handlers for (IP router, DNS, ...).
APP_FIRST = 0x20
APP_LAST = 0x3F

LINK_KINDS = frozenset({HELLO, REPLY, CONFIRM, REFUSE, PING, PONG, CLOSE, NEIGHBOURS})

#: The data-message header: message id u32, piece index u16, piece count u16.
DATA_HEADER = struct.Struct("!IHH")
assert DATA_HEADER.size == 8

_MSGPACK_LIMITS = dict(
    max_str_len=1024,
    max_bin_len=MAX_PAYLOAD,
    max_array_len=256,
    max_map_len=32,
    max_ext_len=0,
)


class WireError(Exception):
    """A malformed message; C{reason} is the counter label for the drop."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    mode: int
    kind: int
    ttl: int
    hops: int
    src: int
    dst: int


def pack(mode: int, kind: int, ttl: int, hops: int, src: int, dst: int, payload: bytes) -> bytes:
    """Build one datagram; the caller keeps C{payload} within L{MAX_PAYLOAD}."""
    return HEADER.pack(VERSION, (mode << 6) | kind, ttl, hops, A.to_bytes(src), A.to_bytes(dst)) \
        + payload


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Split a datagram into its header and payload; raise L{WireError}."""
    if len(data) < HEADER_SIZE:
        raise WireError("truncated", f"{len(data)} bytes")
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized", f"{len(data)} bytes")
    version, typ, ttl, hops, src, dst = HEADER.unpack_from(data)
    if version != VERSION:
        raise WireError("bad-version", str(version))
    mode, kind = typ >> 6, typ & 0x3F
    if kind in LINK_KINDS:
        if mode != LOCAL:
            raise WireError("bad-type", f"link kind {kind} with mode {mode}")
    elif mode == LOCAL or not (kind in (CTRL, DHT, DATA) or APP_FIRST <= kind <= APP_LAST):
        raise WireError("bad-type", f"kind {kind} mode {mode}")
    return Header(version, mode, kind, ttl, hops, A.from_bytes(src), A.from_bytes(dst)), \
        data[HEADER_SIZE:]


def rewrite_hop(data: bytes, ttl: int, hops: int) -> bytes:
    """The same datagram with new TTL and hop count (forwarding)."""
    return data[:2] + bytes((ttl, hops)) + data[4:]


def encode(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def decode(payload: bytes) -> dict[str, Any]:
    """Decode a control payload (a msgpack map); raise L{WireError}."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_MSGPACK_LIMITS)
    except Exception as e:  # msgpack raises many unrelated types on garbage
        raise WireError("bad-payload", type(e).__name__) from None
    if not isinstance(obj, dict):
        raise WireError("bad-payload", "not a map")
    return obj


# -- typed field access: a missing or mistyped field is a WireError --------


def f_bytes(m: dict[str, Any], key: str, size: int | None = None, max_size: int = 4096) -> bytes:
    v = m.get(key)
    if not isinstance(v, bytes) or (size is not None and len(v) != size) or len(v) > max_size:
        raise WireError("bad-payload", f"field {key}")
    return v


def f_int(m: dict[str, Any], key: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise WireError("bad-payload", f"field {key}")
    return v


def f_str(m: dict[str, Any], key: str, max_len: int = 64) -> str:
    v = m.get(key)
    if not isinstance(v, str) or len(v) > max_len:
        raise WireError("bad-payload", f"field {key}")
    return v


def f_addr(m: dict[str, Any], key: str) -> int:
    return A.from_bytes(f_bytes(m, key, A.SIZE))


def endpoint_value(ep: tuple[str, int]) -> list[Any]:
    return [ep[0], ep[1]]


def as_endpoint(v: Any) -> tuple[str, int]:
    """An [ip, port] pair from a payload; raise L{WireError}."""
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 2
        or not isinstance(v[0], str)
        or not 0 < len(v[0]) <= 45
        or not isinstance(v[1], int)
        or isinstance(v[1], bool)
        or not 0 < v[1] < 65536
    ):
        raise WireError("bad-payload", "endpoint")
    return (v[0], v[1])


def f_endpoint(m: dict[str, Any], key: str) -> tuple[str, int]:
    return as_endpoint(m.get(key))


def pack_data_header(message_id: int, index: int, count: int) -> bytes:
    return DATA_HEADER.pack(message_id, index, count)


def unpack_data_header(payload: bytes) -> tuple[int, int, int, bytes]:
    """(message id, piece index, piece count, piece) of a DATA payload."""
    if len(payload) < DATA_HEADER.size:
        raise WireError("truncated", "data header")
    mid, index, count = DATA_HEADER.unpack_from(payload)
    if count == 0 or index >= count:
        raise WireError("bad-payload", "piece index")
    return mid, index, count, payload[DATA_HEADER.size:]
