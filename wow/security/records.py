"""
The few pieces of the DTLS 1.2 wire format (RFC 6347) WOW reads itself.

OpenSSL does all the cryptography; this module only splits datagrams into
records (OpenSSL wants one record per C{bio_write}), reads record headers
(for our replay mirror and for routing records to the right state), parses
a ClientHello far enough to find its cookie, and builds the stateless
HelloVerifyRequest that protects the server from handshake floods.

Pure functions over bytes; every parser raises only L{MalformedRecord}.
"""

from __future__ import annotations

from dataclasses import dataclass

#: DTLS record header: type(1) version(2) epoch(2) sequence(6) length(2).
HEADER_LEN = 13
#: DTLS handshake header: type(1) length(3) message_seq(2) frag_offset(3) frag_length(3).
HANDSHAKE_HEADER_LEN = 12

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
CONTENT_TYPES = frozenset({CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA})

CLIENT_HELLO = 1
HELLO_VERIFY_REQUEST = 3

#: Record-layer versions: DTLS 1.0 (0xFEFF, used by early hellos and the
#: HelloVerifyRequest, RFC 6347 4.2.1) and DTLS 1.2 (0xFEFD).
DTLS1_0 = 0xFEFF
DTLS1_2 = 0xFEFD
VERSIONS = frozenset({DTLS1_0, DTLS1_2})

#: Largest ciphertext a record may carry: 2^14 plaintext + 2048 (RFC 6347 4.1).
MAX_RECORD_BODY = 2**14 + 2048
#: RFC 6347 4.2.1: cookies are at most 255 bytes (we make 17-byte ones).
MAX_COOKIE = 255


#: Parsers take bytes or a memoryview (slices of a view are not copies).
Buffer = bytes | memoryview


class MalformedRecord(ValueError):
    """The bytes are not (a sequence of) well-formed DTLS records."""


@dataclass(frozen=True, slots=True)
class RecordHeader:
    content_type: int
    version: int
    epoch: int
    sequence: int
    length: int


def parse_header(data: Buffer, offset: int = 0) -> RecordHeader:
    """Read the record header at C{offset}; the body must be complete."""
    if len(data) - offset < HEADER_LEN:
        raise MalformedRecord("truncated record header")
    ctype = data[offset]
    if ctype not in CONTENT_TYPES:
        raise MalformedRecord(f"unknown content type {ctype}")
    version = int.from_bytes(data[offset + 1 : offset + 3], "big")
    if version not in VERSIONS:
        raise MalformedRecord(f"unknown record version {version:#06x}")
    epoch = int.from_bytes(data[offset + 3 : offset + 5], "big")
    sequence = int.from_bytes(data[offset + 5 : offset + 11], "big")
    length = int.from_bytes(data[offset + 11 : offset + 13], "big")
    if length > MAX_RECORD_BODY:
        raise MalformedRecord(f"record body of {length} bytes is too long")
    if len(data) - offset - HEADER_LEN < length:
        raise MalformedRecord("truncated record body")
    return RecordHeader(ctype, version, epoch, sequence, length)


def split_records(data: Buffer) -> list[tuple[RecordHeader, Buffer]]:
    """
    Split a datagram (or OpenSSL's output) into its records.

    @raise MalformedRecord: when any part of C{data} is not a whole record;
        a datagram is taken or refused as a whole.
    """
    out: list[tuple[RecordHeader, Buffer]] = []
    offset = 0
    end = len(data)
    if end == 0:
        raise MalformedRecord("empty datagram")
    while offset < end:
        header = parse_header(data, offset)
        stop = offset + HEADER_LEN + header.length
        out.append((header, data[offset:stop]))
        offset = stop
    return out


def pack_records(records: list[bytes], limit: int) -> list[bytes]:
    """
    Join consecutive records into datagrams of at most C{limit} bytes (a
    record longer than C{limit} travels alone), so a handshake flight of
    five small records costs one packet.
    """
    out: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > limit:
            out.append(current)
            current = b""
        current += record
    if current:
        out.append(current)
    return out


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the stateless cookie check needs from a ClientHello record."""

    record_sequence: int
    message_seq: int
    #: The client's 32-byte random: tells a replayed hello from a new one.
    random: bytes
    cookie: bytes
    #: Offset of the cookie length byte inside the handshake body.
    cookie_offset: int


def parse_client_hello(record: Buffer) -> ClientHello:
    """
    Parse a record that must hold one whole, unfragmented ClientHello in
    epoch 0.

    @raise MalformedRecord: otherwise.
    """
    header = parse_header(record)
    if header.content_type != HANDSHAKE or header.epoch != 0:
        raise MalformedRecord("not an epoch-0 handshake record")
    hs = record[HEADER_LEN : HEADER_LEN + header.length]
    if len(hs) < HANDSHAKE_HEADER_LEN or hs[0] != CLIENT_HELLO:
        raise MalformedRecord("not a ClientHello")
    length = int.from_bytes(hs[1:4], "big")
    message_seq = int.from_bytes(hs[4:6], "big")
    frag_offset = int.from_bytes(hs[6:9], "big")
    frag_length = int.from_bytes(hs[9:12], "big")
    if frag_offset != 0 or frag_length != length or len(hs) != HANDSHAKE_HEADER_LEN + length:
        raise MalformedRecord("fragmented ClientHello")
    body = hs[HANDSHAKE_HEADER_LEN:]
    # client_version(2) random(32) session_id<0..32> cookie<0..255> ...
    p = 2 + 32
    if len(body) < p + 1:
        raise MalformedRecord("ClientHello too short")
    sid_len = body[p]
    if sid_len > 32:
        raise MalformedRecord("ClientHello session id too long")
    p += 1 + sid_len
    if len(body) < p + 1:
        raise MalformedRecord("ClientHello too short")
    cookie_len = body[p]
    if len(body) < p + 1 + cookie_len:
        raise MalformedRecord("ClientHello cookie truncated")
    # cipher_suites<2..2^16-2> and compression_methods<1..2^8-1> must follow.
    q = p + 1 + cookie_len
    if len(body) < q + 2:
        raise MalformedRecord("ClientHello without cipher suites")
    suites_len = int.from_bytes(body[q : q + 2], "big")
    if suites_len < 2 or suites_len % 2 or len(body) < q + 2 + suites_len + 2:
        raise MalformedRecord("ClientHello cipher suites malformed")
    return ClientHello(
        record_sequence=header.sequence,
        message_seq=message_seq,
        random=bytes(body[2:34]),
        cookie=bytes(body[p + 1 : q]),
        cookie_offset=p,
    )


def _handshake_record(
    version: int, sequence: int, msg_type: int, message_seq: int, body: bytes
) -> bytes:
    n = len(body).to_bytes(3, "big")
    hs = bytes([msg_type]) + n + message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + n + body
    return (
        bytes([HANDSHAKE])
        + version.to_bytes(2, "big")
        + b"\x00\x00"
        + sequence.to_bytes(6, "big")
        + len(hs).to_bytes(2, "big")
        + hs
    )


def hello_verify_request(record_sequence: int, cookie: bytes) -> bytes:
    """
    The HelloVerifyRequest answering a cookie-less ClientHello: DTLS 1.0
    version as RFC 6347 4.2.1 asks, message_seq 0, and the ClientHello's
    record sequence number (4.2.1: so the server keeps no state).
    """
    if not 0 < len(cookie) <= MAX_COOKIE:
        raise ValueError("a cookie is 1 to 255 bytes")
    body = DTLS1_0.to_bytes(2, "big") + bytes([len(cookie)]) + cookie
    return _handshake_record(DTLS1_0, record_sequence, HELLO_VERIFY_REQUEST, 0, body)


def rewrite_client_hello(
    record: Buffer, *, message_seq: int, cookie: bytes, record_sequence: int
) -> bytes:
    """
    A copy of a ClientHello record with another message_seq, cookie and
    record sequence number.

    The stateless server uses it to replay, into a fresh OpenSSL object, the
    cookie-less first ClientHello that OpenSSL's state machine expects
    before the one carrying the cookie (OpenSSL's own C{DTLSv1_listen}
    fails with "Unexpected EOF" over memory BIOs in the OpenSSL 4.0 that
    C{cryptography} bundles).
    """
    hello = parse_client_hello(record)
    header = parse_header(record)
    body = bytes(record[HEADER_LEN + HANDSHAKE_HEADER_LEN : HEADER_LEN + header.length])
    p = hello.cookie_offset
    new_body = body[:p] + bytes([len(cookie)]) + cookie + body[p + 1 + len(hello.cookie) :]
    return _handshake_record(header.version, record_sequence, CLIENT_HELLO, message_seq, new_body)


#: "I have no session for that": an unprotected (epoch 0) warning alert a
#: node sends back for application data it cannot place, e.g. after it
#: restarted.  Unauthenticated, so it only ever makes the sender start a
#: new handshake (never tears anything down).
SESSION_LOST = bytes([ALERT]) + DTLS1_2.to_bytes(2, "big") + bytes(8) + b"\x00\x02\x01\x5a"


def is_session_lost(body: Buffer) -> bool:
    return len(body) == len(SESSION_LOST) and bytes(body) == SESSION_LOST
