"""
DHCP/BOOTP messages (RFC 951, RFC 2131, RFC 2132) with long options
(RFC 3396) and relay agent information (RFC 3046).

Choices where the RFCs leave room, made for unmodified OS clients:

  - The magic cookie is required: WOW serves DHCP, not plain BOOTP.
  - Pad (0) is skipped anywhere; End (255) ends an option area and whatever
    follows it is ignored.  A missing End is B{accepted} (the area simply
    ends): RFC 2131 requires End, but being liberal here costs nothing and
    some embedded clients omit it.  An option whose length runs past the end
    of its area is refused: that message is truncated, not merely sloppy.
  - Option overload (52) makes the C{file} and/or C{sname} fields carry
    options.  Per RFC 3396 the areas are read in the order options, C{file},
    C{sname}.  The parsed message lists the options of all areas in that
    order, does not list option 52 itself, and reports an overloaded field as
    C{b""}.  L{build_dhcp} overloads only when given a C{max_size} the
    options do not fit, and adds option 52 itself (it cannot be given).
  - Several instances of one option code are kept in order in
    L{DhcpMessage.options}; L{DhcpMessage.option} concatenates them (RFC
    3396).  L{build_dhcp} splits values longer than 255 bytes the same way.
  - Options the server reads (message type, addresses, times, client id,
    FQDN, relay agent information, ...) are length-checked after
    concatenation, so the typed properties of L{DhcpMessage} never fail.
  - C{sname} and C{file} are NUL-terminated strings in a fixed field: trailing
    NULs are stripped on parse and added back on build.

L{parse_dhcp} raises only L{DHCPError}.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from wow.net.addresses import ipv4_from_bytes
from wow.net.errors import DHCPError

SERVER_PORT = 67
CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2

HTYPE_ETHERNET = 1

MAGIC_COOKIE = b"\x63\x82\x53\x63"
#: The fixed BOOTP header (236 bytes) plus the magic cookie.
FIXED_LEN = 240
#: RFC 951's BOOTP message size; relays and old clients drop shorter ones.
MIN_MESSAGE_LEN = 300
#: RFC 2131 section 2: every client must accept 576-byte IP datagrams.
MIN_MAX_MESSAGE_SIZE = 576

#: The broadcast bit of the C{flags} field (RFC 2131 figure 2).
FLAG_BROADCAST = 0x8000

# Message types (option 53), RFC 2131 / RFC 2132 section 9.6.
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

MESSAGE_TYPE_NAMES = {
    DHCPDISCOVER: "DHCPDISCOVER",
    DHCPOFFER: "DHCPOFFER",
    DHCPREQUEST: "DHCPREQUEST",
    DHCPDECLINE: "DHCPDECLINE",
    DHCPACK: "DHCPACK",
    DHCPNAK: "DHCPNAK",
    DHCPRELEASE: "DHCPRELEASE",
    DHCPINFORM: "DHCPINFORM",
}

# Option codes (RFC 2132 unless noted).
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_TIME_OFFSET = 2
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOST_NAME = 12
OPT_DOMAIN_NAME = 15
OPT_INTERFACE_MTU = 26
OPT_BROADCAST_ADDRESS = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_LIST = 55
OPT_MESSAGE = 56
OPT_MAX_MESSAGE_SIZE = 57
OPT_RENEWAL_TIME = 58
OPT_REBINDING_TIME = 59
OPT_VENDOR_CLASS_ID = 60
OPT_CLIENT_ID = 61
OPT_CLIENT_FQDN = 81  # RFC 4702
OPT_RELAY_AGENT_INFO = 82  # RFC 3046
OPT_END = 255

#: Values of option 52.
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2
OVERLOAD_BOTH = 3

# Relay agent information sub-options (RFC 3046 section 2.0).
RAI_CIRCUIT_ID = 1
RAI_REMOTE_ID = 2

_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
assert _FIXED.size == FIXED_LEN
_SNAME_OFFSET = 44
_FILE_OFFSET = 108
_ZERO_IP = IPv4Address(0)

#: Options whose (concatenated) value has exactly this length.
_FIXED_LENGTH = {
    OPT_SUBNET_MASK: 4,
    OPT_TIME_OFFSET: 4,
    OPT_INTERFACE_MTU: 2,
    OPT_BROADCAST_ADDRESS: 4,
    OPT_REQUESTED_IP: 4,
    OPT_LEASE_TIME: 4,
    OPT_MESSAGE_TYPE: 1,
    OPT_SERVER_ID: 4,
    OPT_MAX_MESSAGE_SIZE: 2,
    OPT_RENEWAL_TIME: 4,
    OPT_REBINDING_TIME: 4,
}
#: Options that are a non-empty list of IPv4 addresses.
_ADDRESS_LISTS = frozenset({OPT_ROUTER, 4, 5, OPT_DNS, 7, 8, 9, 10, 11, 41, 42, 44, 45, 48, 49})
#: Options with a minimum length.
_MIN_LENGTH = {
    OPT_HOST_NAME: 1,
    OPT_DOMAIN_NAME: 1,
    OPT_PARAMETER_LIST: 1,
    OPT_CLIENT_ID: 2,
    OPT_CLIENT_FQDN: 3,
    OPT_RELAY_AGENT_INFO: 2,
}

Options = tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    """
    A DHCP (or BOOTP-with-cookie) message.

    @ivar chaddr: the client hardware address, exactly C{hlen} bytes.
    @ivar sname: server host name field, without trailing NULs (C{b""} when
        the field carried overloaded options).
    @ivar file: boot file name field, likewise.
    @ivar options: C{(code, value)} instances in wire order, Pad, End and
        Overload excluded; a code may appear several times (RFC 3396).
    """

    op: int = BOOTREQUEST
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _ZERO_IP
    yiaddr: IPv4Address = _ZERO_IP
    siaddr: IPv4Address = _ZERO_IP
    giaddr: IPv4Address = _ZERO_IP
    chaddr: bytes = b"\x00" * 6
    sname: bytes = b""
    file: bytes = b""
    options: Options = ()

    def option(self, code: int) -> bytes | None:
        """
        The value of option C{code}: all its instances concatenated in order
        (RFC 3396), or C{None} when absent.
        """
        found = [value for c, value in self.options if c == code]
        if not found:
            return None
        return found[0] if len(found) == 1 else b"".join(found)

    def _address(self, code: int) -> IPv4Address | None:
        value = self.option(code)
        return None if value is None else ipv4_from_bytes(value)

    def _u32(self, code: int) -> int | None:
        value = self.option(code)
        return None if value is None else int.from_bytes(value, "big")

    @property
    def message_type(self) -> int | None:
        """Option 53 (L{DHCPDISCOVER} ... L{DHCPINFORM}), C{None} for BOOTP."""
        value = self.option(OPT_MESSAGE_TYPE)
        return None if value is None else value[0]

    @property
    def requested_ip(self) -> IPv4Address | None:
        """Option 50, the address the client asks for."""
        return self._address(OPT_REQUESTED_IP)

    @property
    def server_id(self) -> IPv4Address | None:
        """Option 54, the server the client selected (or the server's own id)."""
        return self._address(OPT_SERVER_ID)

    @property
    def lease_time(self) -> int | None:
        """Option 51, seconds."""
        return self._u32(OPT_LEASE_TIME)

    @property
    def max_message_size(self) -> int | None:
        """Option 57, the largest DHCP message the client accepts."""
        return self._u32(OPT_MAX_MESSAGE_SIZE)

    @property
    def parameter_request_list(self) -> tuple[int, ...]:
        """Option 55 as option codes, C{()} when absent."""
        value = self.option(OPT_PARAMETER_LIST)
        return () if value is None else tuple(value)

    @property
    def hostname(self) -> str | None:
        """
        Option 12, decoded as UTF-8 with undecodable bytes replaced and
        trailing NULs (sent by some clients) removed.  The caller still has to
        check that it is an acceptable DNS label.
        """
        value = self.option(OPT_HOST_NAME)
        return None if value is None else value.rstrip(b"\x00").decode("utf-8", "replace")

    @property
    def client_id(self) -> bytes | None:
        """Option 61, the client identifier (type byte first)."""
        return self.option(OPT_CLIENT_ID)

    @property
    def client_fqdn(self) -> bytes | None:
        """Option 81 raw (flags, two RCODE bytes, name); see L{parse_client_fqdn}."""
        return self.option(OPT_CLIENT_FQDN)

    @property
    def relay_agent_info(self) -> tuple[tuple[int, bytes], ...] | None:
        """Option 82 as C{(sub-option, value)} pairs, C{None} when absent."""
        value = self.option(OPT_RELAY_AGENT_INFO)
        return None if value is None else parse_relay_agent_info(value)

    @property
    def broadcast(self) -> bool:
        """Whether the client asked for broadcast replies (RFC 2131 section 4.1)."""
        return bool(self.flags & FLAG_BROADCAST)

    def build(self) -> bytes:
        """Encode this message; see L{build_dhcp}."""
        return build_dhcp(self)


def _parse_area(
    data: bytes | bytearray | memoryview,
    start: int,
    end: int,
    area: str,
    out: list[tuple[int, bytes]],
) -> None:
    """
    Append the options found in C{data[start:end]} to C{out}.

    Stops at End or at the end of the area (a missing End is accepted).
    """
    i = start
    while i < end:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return
        if i + 1 >= end:
            raise DHCPError(
                f"DHCP option {code} in the {area} area is truncated before its length.",
                "truncated-option",
            )
        length = data[i + 1]
        i += 2
        if i + length > end:
            raise DHCPError(
                f"DHCP option {code} in the {area} area claims {length} bytes; "
                f"only {end - i} remain.",
                "truncated-option",
            )
        out.append((code, bytes(data[i : i + length])))
        i += length


def parse_dhcp(data: bytes | bytearray | memoryview) -> DhcpMessage:
    """
    Decode a DHCP message (the payload of a UDP datagram to port 67 or 68).

    @raise DHCPError: shorter than 240 bytes, an unknown C{op}, C{hlen} over
        16, no magic cookie, a truncated option, a bad overload option, or a
        well-known option with an impossible length; C{reason} says which.
    """
    n = len(data)
    if n < FIXED_LEN:
        raise DHCPError(
            f"DHCP message of {n} bytes is shorter than the 240-byte fixed part.", "truncated"
        )
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
        cookie,
    ) = _FIXED.unpack_from(data)
    if op != BOOTREQUEST and op != BOOTREPLY:
        raise DHCPError(f"BOOTP op {op} is neither request (1) nor reply (2).", "bad-op")
    if hlen > 16:
        raise DHCPError(f"Hardware address length {hlen} exceeds 16.", "bad-hlen")
    if cookie != MAGIC_COOKIE:
        raise DHCPError("The DHCP magic cookie is missing.", "bad-cookie")

    found: list[tuple[int, bytes]] = []
    _parse_area(data, FIXED_LEN, n, "options", found)
    options = [item for item in found if item[0] != OPT_OVERLOAD]
    if len(options) != len(found):
        overload = b"".join(v for c, v in found if c == OPT_OVERLOAD)
        if len(overload) != 1 or not OVERLOAD_FILE <= overload[0] <= OVERLOAD_BOTH:
            raise DHCPError("DHCP option overload (52) must be one byte, 1 to 3.", "bad-overload")
        extra: list[tuple[int, bytes]] = []
        if overload[0] & OVERLOAD_FILE:
            _parse_area(data, _FILE_OFFSET, _FILE_OFFSET + 128, "file", extra)
            file = b""
        if overload[0] & OVERLOAD_SNAME:
            _parse_area(data, _SNAME_OFFSET, _SNAME_OFFSET + 64, "sname", extra)
            sname = b""
        options.extend(item for item in extra if item[0] != OPT_OVERLOAD)
    result = tuple(options)
    _check_option_lengths(result)
    return DhcpMessage(
        op=op,
        htype=htype,
        hlen=hlen,
        hops=hops,
        xid=xid,
        secs=secs,
        flags=flags,
        ciaddr=ipv4_from_bytes(ciaddr),
        yiaddr=ipv4_from_bytes(yiaddr),
        siaddr=ipv4_from_bytes(siaddr),
        giaddr=ipv4_from_bytes(giaddr),
        chaddr=chaddr[:hlen],
        sname=sname.rstrip(b"\x00"),
        file=file.rstrip(b"\x00"),
        options=result,
    )


def _check_option_lengths(options: Options) -> None:
    """Refuse well-known options whose concatenated value has an impossible length."""
    lengths: dict[int, int] = {}
    for code, value in options:
        lengths[code] = lengths.get(code, 0) + len(value)
    for code, length in lengths.items():
        want = _FIXED_LENGTH.get(code)
        if want is not None:
            ok = length == want
        elif code in _ADDRESS_LISTS:
            ok = length >= 4 and length % 4 == 0
        else:
            ok = length >= _MIN_LENGTH.get(code, 0)
        if not ok:
            raise DHCPError(f"DHCP option {code} has an invalid length {length}.", "bad-option")
    if OPT_RELAY_AGENT_INFO in lengths:
        rai = b"".join(v for c, v in options if c == OPT_RELAY_AGENT_INFO)
        parse_relay_agent_info(rai)
    if OPT_CLIENT_FQDN in lengths:
        fqdn = b"".join(v for c, v in options if c == OPT_CLIENT_FQDN)
        parse_client_fqdn(fqdn)


def _encode_options(options: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """
    Encode C{options} as a list of wire instances, splitting values over 255
    bytes into several instances of the same code (RFC 3396).
    """
    encoded: list[bytes] = []
    for code, value in options:
        if not 1 <= code <= 254 or code == OPT_OVERLOAD:
            raise DHCPError(f"DHCP option code {code} cannot be encoded.", "bad-option")
        if len(value) <= 255:
            encoded.append(bytes((code, len(value))) + value)
            continue
        for i in range(0, len(value), 255):
            chunk = value[i : i + 255]
            encoded.append(bytes((code, len(chunk))) + chunk)
    return encoded


def _overload(encoded: list[bytes], room: int) -> tuple[bytes, bytes, bytes]:
    """
    Spread option instances over the options area (C{room} bytes before End),
    then C{file}, then C{sname}, keeping their order so that RFC 3396
    concatenation sees them as they were given.

    @return: the options area (starting with option 52), the C{file} and
        C{sname} fields (each End-terminated and NUL-padded when used), and
        the overload value.
    @raise DHCPError: the instances do not fit all three areas.
    """
    areas = [bytearray(), bytearray(), bytearray()]
    # Each area keeps one byte for its End option.
    rooms = [room, 128 - 1, 64 - 1]
    current = 0
    for item in encoded:
        while len(areas[current]) + len(item) > rooms[current]:
            current += 1
            if current == len(areas):
                raise DHCPError(
                    "DHCP options do not fit the message size, even overloading file and sname.",
                    "too-long",
                )
        areas[current] += item
    used = current
    overload = OVERLOAD_FILE if used == 1 else OVERLOAD_BOTH
    options = bytes((OPT_OVERLOAD, 1, overload)) + areas[0]
    file = bytes(areas[1] + b"\xff").ljust(128, b"\x00")
    sname = bytes(areas[2] + b"\xff").ljust(64, b"\x00") if used == 2 else b""
    return options, file, sname


def build_dhcp(message: DhcpMessage, max_size: int | None = None) -> bytes:
    """
    Encode C{message}: options in order (values over 255 bytes split into
    several instances, RFC 3396), then End, then Pad up to the 300-byte BOOTP
    minimum.

    @param max_size: the largest DHCP message (UDP payload) the receiver
        accepts, e.g. its option 57 minus 28 bytes of IP and UDP headers.
        When the options do not fit, they continue in the C{file} field and
        then the C{sname} field (option overload, RFC 2131 section 4.1),
        which must then be empty in C{message}.  C{None}: no limit.
    @raise DHCPError: a field is out of range, C{chaddr} is not C{hlen}
        bytes, C{sname}/C{file} are too long, an option code is 0, 52 or
        255, or the options do not fit C{max_size} (reason C{"too-long"}).
    """
    m = message
    if m.op != BOOTREQUEST and m.op != BOOTREPLY:
        raise DHCPError(f"BOOTP op {m.op} is neither request (1) nor reply (2).", "bad-op")
    if m.hlen > 16 or len(m.chaddr) != m.hlen:
        raise DHCPError("chaddr must be hlen bytes, at most 16.", "bad-hlen")
    if len(m.sname) > 64 or len(m.file) > 128:
        raise DHCPError("sname is limited to 64 bytes and file to 128.", "bad-field")
    if not (
        0 <= m.htype <= 0xFF
        and 0 <= m.hops <= 0xFF
        and 0 <= m.xid <= 0xFFFFFFFF
        and 0 <= m.secs <= 0xFFFF
        and 0 <= m.flags <= 0xFFFF
    ):
        raise DHCPError("A DHCP header field is out of range.", "bad-field")
    if max_size is not None and max_size < MIN_MESSAGE_LEN:
        raise DHCPError(
            f"A maximum message size of {max_size} is below the BOOTP minimum of 300.",
            "too-long",
        )
    encoded = _encode_options(m.options)
    options = b"".join(encoded)
    sname, file = m.sname, m.file
    if max_size is not None and FIXED_LEN + len(options) + 1 > max_size:
        if sname or file:
            raise DHCPError(
                "DHCP options do not fit the message size and sname/file are in use.",
                "too-long",
            )
        # Room in the options area: minus option 52 (3 bytes) and End.
        options, file, sname = _overload(encoded, max_size - FIXED_LEN - 3 - 1)
    out = bytearray(
        _FIXED.pack(
            m.op,
            m.htype,
            m.hlen,
            m.hops,
            m.xid,
            m.secs,
            m.flags,
            m.ciaddr.packed,
            m.yiaddr.packed,
            m.siaddr.packed,
            m.giaddr.packed,
            m.chaddr,
            sname,
            file,
            MAGIC_COOKIE,
        )
    )
    out += options
    out.append(OPT_END)
    if len(out) < MIN_MESSAGE_LEN:
        out += bytes(MIN_MESSAGE_LEN - len(out))
    return bytes(out)


# Typed option values, for building replies.


def ip_option(code: int, *addresses: IPv4Address) -> tuple[int, bytes]:
    """An option whose value is one or more IPv4 addresses (1, 3, 6, 54, ...)."""
    return code, b"".join(a.packed for a in addresses)


def u8_option(code: int, value: int) -> tuple[int, bytes]:
    """An option whose value is one unsigned byte (53, ...)."""
    return code, value.to_bytes(1, "big")


def u16_option(code: int, value: int) -> tuple[int, bytes]:
    """An option whose value is a 16-bit unsigned integer (26, 57)."""
    return code, value.to_bytes(2, "big")


def u32_option(code: int, value: int) -> tuple[int, bytes]:
    """An option whose value is a 32-bit unsigned integer (51, 58, 59)."""
    return code, value.to_bytes(4, "big")


def str_option(code: int, value: str) -> tuple[int, bytes]:
    """An option whose value is text (12, 15, 56), encoded as UTF-8."""
    return code, value.encode("utf-8")


def message_type_option(message_type: int) -> tuple[int, bytes]:
    """Option 53 with C{message_type}."""
    return u8_option(OPT_MESSAGE_TYPE, message_type)


# Relay agent information (RFC 3046).


def parse_relay_agent_info(value: bytes) -> tuple[tuple[int, bytes], ...]:
    """
    Split the value of option 82 into C{(sub-option code, value)} pairs.

    @raise DHCPError: a sub-option runs past the end of the value.
    """
    subs: list[tuple[int, bytes]] = []
    i = 0
    end = len(value)
    while i < end:
        if i + 1 >= end or i + 2 + value[i + 1] > end:
            raise DHCPError(
                "Relay agent information (option 82) has a truncated sub-option.", "bad-option"
            )
        length = value[i + 1]
        subs.append((value[i], value[i + 2 : i + 2 + length]))
        i += 2 + length
    return tuple(subs)


def relay_agent_info_option(
    circuit_id: bytes | None = None,
    remote_id: bytes | None = None,
    others: Iterable[tuple[int, bytes]] = (),
) -> tuple[int, bytes]:
    """
    Option 82 carrying a circuit id (sub-option 1), a remote id (sub-option 2)
    and any C{others}, each value at most 255 bytes.

    @raise DHCPError: a sub-option value is longer than 255 bytes.
    """
    subs: list[tuple[int, bytes]] = []
    if circuit_id is not None:
        subs.append((RAI_CIRCUIT_ID, circuit_id))
    if remote_id is not None:
        subs.append((RAI_REMOTE_ID, remote_id))
    subs.extend(others)
    if not subs:
        raise DHCPError("Relay agent information needs at least one sub-option.", "bad-option")
    out = bytearray()
    for code, sub in subs:
        if not 0 <= code <= 255 or len(sub) > 255:
            raise DHCPError("A relay agent sub-option does not fit.", "bad-option")
        out.append(code)
        out.append(len(sub))
        out += sub
    return OPT_RELAY_AGENT_INFO, bytes(out)


# Client FQDN (RFC 4702).

#: Option 81 flag bits.
FQDN_S = 0x01  # the server should update the A RR
FQDN_O = 0x02  # the server overrode the client's S bit
FQDN_E = 0x04  # the name is in canonical DNS wire format
FQDN_N = 0x08  # the server should not update any RR


@dataclass(frozen=True, slots=True)
class ClientFqdn:
    """Option 81 decoded: its flags and the name as dotted text."""

    flags: int
    name: str
    #: Whether the name was a complete (root-terminated) name in wire format.
    complete: bool


def parse_client_fqdn(value: bytes) -> ClientFqdn:
    """
    Decode option 81: flags, two ignored RCODE bytes, then the name, in DNS
    wire format when the E flag is set (RFC 4702 section 2.3.1) and ASCII
    otherwise (deprecated, but still sent).

    @raise DHCPError: shorter than 3 bytes or a malformed wire-format name.
    """
    if len(value) < 3:
        raise DHCPError("Client FQDN (option 81) is shorter than 3 bytes.", "bad-option")
    flags = value[0]
    raw = value[3:]
    if not flags & FQDN_E:
        text = raw.rstrip(b"\x00").decode("ascii", "replace")
        return ClientFqdn(flags, text.rstrip("."), text.endswith("."))
    labels: list[str] = []
    i = 0
    complete = False
    while i < len(raw):
        length = raw[i]
        if length == 0:
            complete = True
            if i + 1 != len(raw):
                raise DHCPError("Client FQDN has bytes after the root label.", "bad-option")
            break
        if length > 63 or i + 1 + length > len(raw):
            raise DHCPError("Client FQDN has a malformed label.", "bad-option")
        labels.append(raw[i + 1 : i + 1 + length].decode("ascii", "replace"))
        i += 1 + length
    return ClientFqdn(flags, ".".join(labels), complete)


def client_fqdn_option(name: str, flags: int = FQDN_E) -> tuple[int, bytes]:
    """
    Option 81 for C{name} (a complete name, encoded in wire format when
    C{flags} has L{FQDN_E}); RCODE bytes are 255 as a server must send.

    @raise DHCPError: C{name} is not ASCII, or a label is empty or longer than
        63 bytes.
    """
    if not name.isascii():
        raise DHCPError(f"Cannot encode {name!r} as a DNS name.", "bad-option")
    if flags & FQDN_E:
        out = bytearray()
        for label in name.rstrip(".").split("."):
            raw = label.encode("ascii")
            if not 1 <= len(raw) <= 63:
                raise DHCPError(f"Cannot encode {name!r} as a DNS name.", "bad-option")
            out.append(len(raw))
            out += raw
        out.append(0)
        encoded = bytes(out)
    else:
        encoded = name.encode("ascii")
    return OPT_CLIENT_FQDN, bytes([flags, 255, 255]) + encoded
