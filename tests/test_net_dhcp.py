"""Tests for L{wow.net.dhcp} (RFC 2131, 2132, 3396, 3046, 4702)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wow.net import dhcp
from wow.net.dhcp import (
    BOOTREPLY,
    BOOTREQUEST,
    DHCPACK,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPOFFER,
    FQDN_E,
    FQDN_S,
    OPT_CLIENT_ID,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_HOST_NAME,
    OPT_INTERFACE_MTU,
    OPT_LEASE_TIME,
    OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME,
    OPT_REQUESTED_IP,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    OPT_VENDOR_CLASS_ID,
    DhcpMessage,
    build_dhcp,
    client_fqdn_option,
    ip_option,
    message_type_option,
    parse_client_fqdn,
    parse_dhcp,
    parse_relay_agent_info,
    relay_agent_info_option,
    str_option,
    u16_option,
    u32_option,
)
from wow.net.errors import DHCPError

ZEROS = "00"

# BOOTP fixed part, field by field (RFC 2131 figure 1), for a request from
# 00:16:3e:5b:1a:2c with transaction id 0x3903f326.
FIXED = bytes.fromhex(
    "01 01 06 00"  # op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
    "3903f326"  # xid
    "0000 0000"  # secs, flags
    "00000000 00000000 00000000 00000000"  # ciaddr, yiaddr, siaddr, giaddr
    "00163e5b1a2c" + ZEROS * 10 +  # chaddr, 16 bytes
    ZEROS * 64 +  # sname
    ZEROS * 128 +  # file
    "63825363"  # magic cookie
)  # fmt: skip

# ISC dhclient 4.4's DISCOVER when it remembers 192.168.1.100.
DHCLIENT_OPTIONS = bytes.fromhex(
    "35 01 01"  # message type DISCOVER
    "32 04 c0a80164"  # requested IP 192.168.1.100
    "0c 06 6d79686f7374"  # host name "myhost"
    "37 0d 01 1c 02 03 0f 06 77 0c 2c 2f 1a 79 2a"  # parameter request list
    "ff"  # end
)  # fmt: skip
DHCLIENT_DISCOVER = FIXED + DHCLIENT_OPTIONS + bytes(300 - 240 - len(DHCLIENT_OPTIONS))

# busybox udhcpc 1.36's DISCOVER: client id, max message size, vendor class.
UDHCPC_DISCOVER = FIXED + bytes.fromhex(
    "35 01 01"
    "3d 07 01 00163e5b1a2c"  # client identifier: type 1 (Ethernet) + MAC
    "39 02 0240"  # maximum message size 576
    "37 07 01 03 06 0c 0f 1c 2a"  # parameter request list
    "3c 0c 75646863702031 2e33362e31"  # vendor class "udhcp 1.36.1"
    "ff"
)  # fmt: skip


def with_fields(sname: bytes = b"", file: bytes = b"", options: bytes = b"") -> bytes:
    """C{FIXED} with the given raw sname/file fields and options area."""
    return FIXED[:44] + sname.ljust(64, b"\0") + file.ljust(128, b"\0") + FIXED[236:] + options


class KnownMessagesTests(SynchronousTestCase):
    def test_dhclient_discover(self) -> None:
        self.assertEqual(len(DHCLIENT_DISCOVER), 300)
        msg = parse_dhcp(DHCLIENT_DISCOVER)
        self.assertEqual(msg.op, BOOTREQUEST)
        self.assertEqual(msg.htype, 1)
        self.assertEqual(msg.xid, 0x3903F326)
        self.assertEqual(msg.chaddr, bytes.fromhex("00163e5b1a2c"))
        self.assertEqual(msg.ciaddr, IPv4Address(0))
        self.assertEqual(msg.message_type, DHCPDISCOVER)
        self.assertEqual(msg.requested_ip, IPv4Address("192.168.1.100"))
        self.assertEqual(msg.hostname, "myhost")
        self.assertEqual(
            msg.parameter_request_list, (1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42)
        )
        self.assertFalse(msg.broadcast)
        self.assertIsNone(msg.server_id)
        self.assertIsNone(msg.client_id)
        self.assertIsNone(msg.client_fqdn)
        self.assertIsNone(msg.relay_agent_info)
        self.assertEqual((msg.sname, msg.file), (b"", b""))
        self.assertEqual(build_dhcp(msg), DHCLIENT_DISCOVER)

    def test_udhcpc_discover(self) -> None:
        msg = parse_dhcp(UDHCPC_DISCOVER)
        self.assertEqual(msg.client_id, bytes.fromhex("0100163e5b1a2c"))
        self.assertEqual(msg.max_message_size, 576)
        self.assertEqual(msg.option(OPT_VENDOR_CLASS_ID), b"udhcp 1.36.1")
        self.assertEqual(msg.message_type, DHCPDISCOVER)
        self.assertIsNone(msg.hostname)
        # It is shorter than 300 bytes; our build pads it.
        self.assertLess(len(UDHCPC_DISCOVER), 300)
        self.assertEqual(build_dhcp(msg), UDHCPC_DISCOVER.ljust(300, b"\0"))

    def test_offer_encoding(self) -> None:
        """A server's OFFER encodes typed options exactly as RFC 2132 lays them out."""
        request = parse_dhcp(DHCLIENT_DISCOVER)
        offer = replace(
            request,
            op=BOOTREPLY,
            yiaddr=IPv4Address("10.128.0.5"),
            flags=dhcp.FLAG_BROADCAST,
            options=(
                message_type_option(DHCPOFFER),
                ip_option(OPT_SERVER_ID, IPv4Address("10.128.0.1")),
                u32_option(OPT_LEASE_TIME, 3600),
                u32_option(OPT_RENEWAL_TIME, 1800),
                u32_option(OPT_REBINDING_TIME, 3150),
                ip_option(OPT_SUBNET_MASK, IPv4Address("255.192.0.0")),
                ip_option(OPT_DNS, IPv4Address("10.128.0.1"), IPv4Address("10.128.0.2")),
                str_option(OPT_DOMAIN_NAME, "wow.example"),
                u16_option(OPT_INTERFACE_MTU, 1360),
            ),
        )
        data = build_dhcp(offer)
        self.assertEqual(data[0], BOOTREPLY)
        self.assertEqual(data[10:12], b"\x80\x00")
        self.assertEqual(data[16:20], bytes([10, 128, 0, 5]))
        self.assertEqual(
            data[240:],
            bytes.fromhex(
                "35 01 02"
                "36 04 0a800001"
                "33 04 00000e10"
                "3a 04 00000708"
                "3b 04 00000c4e"
                "01 04 ffc00000"
                "06 08 0a800001 0a800002"
                "0f 0b 776f772e6578616d706c65"
                "1a 02 0550"
                "ff"
            ).ljust(60, b"\0"),
        )  # fmt: skip
        again = parse_dhcp(data)
        self.assertEqual(again, offer)
        self.assertTrue(again.broadcast)
        self.assertEqual(again.lease_time, 3600)
        self.assertEqual(again.server_id, IPv4Address("10.128.0.1"))


class OverloadTests(SynchronousTestCase):
    """Option 52: options continue in C{file} and/or C{sname} (RFC 2131 section 4.1)."""

    def test_file_overloaded(self) -> None:
        data = with_fields(
            sname=b"server",
            file=bytes.fromhex("0c 04 686f7374 ff"),
            options=bytes.fromhex("35 01 01 34 01 01 ff"),
        )
        msg = parse_dhcp(data)
        self.assertEqual(msg.hostname, "host")
        self.assertEqual(msg.file, b"")
        self.assertEqual(msg.sname, b"server")
        self.assertEqual(msg.options, ((53, b"\x01"), (12, b"host")))

    def test_sname_overloaded(self) -> None:
        data = with_fields(
            sname=bytes.fromhex("32 04 0a000005 ff"),
            file=b"pxelinux.0",
            options=bytes.fromhex("34 01 02 35 01 03 ff"),
        )
        msg = parse_dhcp(data)
        self.assertEqual(msg.requested_ip, IPv4Address("10.0.0.5"))
        self.assertEqual((msg.sname, msg.file), (b"", b"pxelinux.0"))

    def test_both_overloaded_in_rfc3396_order(self) -> None:
        """Areas are read options, then file, then sname; instances concatenate in that order."""
        data = with_fields(
            sname=bytes.fromhex("0c 01 63 ff"),  # "c"
            file=bytes.fromhex("0c 01 62 ff"),  # "b"
            options=bytes.fromhex("0c 01 61 34 01 03 ff"),  # "a", overload both
        )
        msg = parse_dhcp(data)
        self.assertEqual(msg.hostname, "abc")
        self.assertEqual((msg.sname, msg.file), (b"", b""))

    def test_end_missing_in_overloaded_field(self) -> None:
        """An overloaded field filled to its end without End is accepted."""
        data = with_fields(
            file=bytes.fromhex("3c 7e") + b"v" * 126,
            options=bytes.fromhex("34 01 01 ff"),
        )
        self.assertEqual(parse_dhcp(data).option(OPT_VENDOR_CLASS_ID), b"v" * 126)

    def test_truncated_option_in_overloaded_field(self) -> None:
        data = with_fields(file=bytes(127) + b"\x0c", options=bytes.fromhex("34 01 01 ff"))
        with self.assertRaises(DHCPError) as cm:
            parse_dhcp(data)
        self.assertEqual(cm.exception.reason, "truncated-option")

    def test_overload_option_inside_field_ignored(self) -> None:
        data = with_fields(
            sname=bytes.fromhex("0c 01 78 ff"),
            file=bytes.fromhex("34 01 03 ff"),
            options=bytes.fromhex("34 01 01 ff"),
        )
        msg = parse_dhcp(data)
        self.assertEqual(msg.options, ())
        self.assertEqual(msg.sname, bytes.fromhex("0c 01 78 ff"))

    def test_fields_not_read_without_overload(self) -> None:
        data = with_fields(file=bytes.fromhex("0c 01 78 ff"), options=b"\xff")
        msg = parse_dhcp(data)
        self.assertIsNone(msg.hostname)
        self.assertEqual(msg.file, bytes.fromhex("0c 01 78 ff"))

    def test_bad_overload_values(self) -> None:
        bad = ["34 01 00 ff", "34 01 04 ff", "34 02 0101 ff", "34 00 ff", "3401 01 3401 01"]
        for options in bad:
            with self.assertRaises(DHCPError) as cm:
                parse_dhcp(with_fields(options=bytes.fromhex(options)))
            self.assertEqual(cm.exception.reason, "bad-overload", options)

    def test_build_overloads_file_when_needed(self) -> None:
        """A reply too big for the client's limit continues in the file field."""
        options = ((53, b"\x05"), (224, bytes(200)), (225, bytes(90)), (226, b"x" * 50))
        msg = DhcpMessage(op=BOOTREPLY, options=options)
        self.assertEqual(len(build_dhcp(msg)), 240 + 3 + 202 + 92 + 52 + 1)
        data = build_dhcp(msg, max_size=548)  # 576-byte datagram minus IP and UDP headers
        self.assertLessEqual(len(data), 548)
        self.assertEqual(data[240:243], b"\x34\x01\x01")
        self.assertEqual(data[108:110], b"\xe2\x32")  # option 226 starts the file field
        self.assertEqual(data[44:108], bytes(64))
        self.assertEqual(parse_dhcp(data), msg)

    def test_build_overloads_file_and_sname(self) -> None:
        options = ((224, bytes(150)), (225, bytes(120)), (226, bytes(50)), (12, b"last"))
        msg = DhcpMessage(op=BOOTREPLY, options=options)
        data = build_dhcp(msg, max_size=400)
        self.assertLessEqual(len(data), 400)
        self.assertEqual(data[240:243], b"\x34\x01\x03")
        self.assertEqual(data[108:110], b"\xe1\x78")  # file holds option 225
        self.assertEqual(data[44:46], b"\xe2\x32")  # sname holds option 226 and 12
        self.assertEqual(parse_dhcp(data), msg)
        self.assertEqual(parse_dhcp(data).hostname, "last")

    def test_build_overload_refusals(self) -> None:
        big = DhcpMessage(options=((224, bytes(255)), (225, bytes(255))))
        for msg, size in [
            (big, 300),  # 257 bytes cannot go into file or sname
            (replace(big, file=b"boot"), 400),  # file already in use
            (big, 299),  # below the BOOTP minimum
        ]:
            with self.assertRaises(DHCPError) as cm:
                build_dhcp(msg, max_size=size)
            self.assertEqual(cm.exception.reason, "too-long")
        self.assertEqual(len(build_dhcp(big, max_size=755)), 755)

    def test_build_refuses_overload_option(self) -> None:
        msg = DhcpMessage(options=((52, b"\x01"),))
        self.assertRaises(DHCPError, build_dhcp, msg)


class OptionRulesTests(SynchronousTestCase):
    def test_instances_concatenated(self) -> None:
        """RFC 3396: several instances of one code form one value."""
        msg = parse_dhcp(with_fields(options=bytes.fromhex("0c 02 6162 35 01 01 0c 02 6364 ff")))
        self.assertEqual(msg.options, ((12, b"ab"), (53, b"\x01"), (12, b"cd")))
        self.assertEqual(msg.hostname, "abcd")
        self.assertEqual(build_dhcp(msg)[240:251], bytes.fromhex("0c 02 6162 35 01 01 0c 02 6364"))

    def test_fixed_length_option_split_across_instances(self) -> None:
        msg = parse_dhcp(with_fields(options=bytes.fromhex("32 02 c0a8 32 02 0164 ff")))
        self.assertEqual(msg.requested_ip, IPv4Address("192.168.1.100"))

    def test_long_value_split_on_build(self) -> None:
        value = bytes(range(256)) * 2 + b"tail"
        data = build_dhcp(DhcpMessage(options=((OPT_CLIENT_ID, value),)))
        self.assertEqual(data[240:242], b"\x3d\xff")
        self.assertEqual(data[240 + 257 : 242 + 257], b"\x3d\xff")
        self.assertEqual(data[240 + 514 : 242 + 514], bytes([0x3D, len(value) - 510]))
        msg = parse_dhcp(data)
        self.assertEqual(len(msg.options), 3)
        self.assertEqual(msg.client_id, value)

    def test_empty_value(self) -> None:
        msg = DhcpMessage(options=((224, b""),))
        self.assertEqual(build_dhcp(msg)[240:243], b"\xe0\x00\xff")
        self.assertEqual(parse_dhcp(build_dhcp(msg)).option(224), b"")
        self.assertIsNone(parse_dhcp(build_dhcp(msg)).option(225))

    def test_pad_skipped(self) -> None:
        msg = parse_dhcp(with_fields(options=bytes.fromhex("00 00 35 01 05 00 0c 01 68 00 ff")))
        self.assertEqual(msg.options, ((53, b"\x05"), (12, b"h")))
        self.assertEqual(msg.message_type, DHCPACK)

    def test_after_end_ignored(self) -> None:
        """Whatever follows End is ignored, even what would be a truncated option."""
        msg = parse_dhcp(with_fields(options=bytes.fromhex("35 01 08 ff 0c 40 6162")))
        self.assertEqual(msg.options, ((53, b"\x08"),))
        self.assertEqual(msg.message_type, DHCPINFORM)

    def test_missing_end_accepted(self) -> None:
        msg = parse_dhcp(with_fields(options=bytes.fromhex("35 01 01 0c 01 68")))
        self.assertEqual(msg.options, ((53, b"\x01"), (12, b"h")))
        self.assertEqual(parse_dhcp(FIXED).options, ())

    def test_truncated_options(self) -> None:
        for options in ["35", "35 01 01 0c", "35 01 01 0c 05 6162", "0c ff"]:
            with self.assertRaises(DHCPError) as cm:
                parse_dhcp(with_fields(options=bytes.fromhex(options)))
            self.assertEqual(cm.exception.reason, "truncated-option", options)

    def test_impossible_lengths(self) -> None:
        for options in [
            "35 02 0101",  # message type is one byte
            "35 01 01 35 01 01",  # ... also after concatenation
            "32 03 0a0000",  # requested IP is 4 bytes
            "36 05 0a00000101",  # server id
            "33 02 0e10",  # lease time
            "39 01 02",  # max message size
            "03 05 0a00000101",  # router list: multiple of 4
            "06 00",  # DNS list: at least one
            "3d 01 01",  # client id: at least 2
            "0c 00",  # host name: at least 1
            "37 00",  # parameter request list: at least 1
            "51 02 0000",  # client FQDN: at least 3
            "51 04 040000 05",  # client FQDN: truncated label
            "52 03 0105 61",  # relay agent info: truncated sub-option
            "52 00",  # relay agent info: empty
        ]:
            with self.assertRaises(DHCPError) as cm:
                parse_dhcp(with_fields(options=bytes.fromhex(options + "ff")))
            self.assertEqual(cm.exception.reason, "bad-option", options)


class FixedPartTests(SynchronousTestCase):
    def test_minimum_size(self) -> None:
        with self.assertRaises(DHCPError) as cm:
            parse_dhcp(FIXED[:239])
        self.assertEqual(cm.exception.reason, "truncated")
        self.assertEqual(parse_dhcp(FIXED).xid, 0x3903F326)

    def test_build_pads_to_bootp_minimum(self) -> None:
        data = build_dhcp(DhcpMessage())
        self.assertEqual(len(data), 300)
        self.assertEqual(data[240:], b"\xff" + bytes(59))
        long = build_dhcp(DhcpMessage(options=((224, bytes(200)),)))
        self.assertEqual(len(long), 240 + 202 + 1)

    def test_refusals(self) -> None:
        cases = {
            "bad-op": [b"\x03" + FIXED[1:], b"\x00" + FIXED[1:]],
            "bad-hlen": [FIXED[:2] + b"\x11" + FIXED[3:]],
            "bad-cookie": [FIXED[:236] + b"\x63\x82\x53\x64", FIXED[:236] + bytes(64)],
        }
        for reason, datas in cases.items():
            for data in datas:
                with self.assertRaises(DHCPError) as cm:
                    parse_dhcp(data)
                self.assertEqual(cm.exception.reason, reason)

    def test_chaddr_is_hlen_bytes(self) -> None:
        """Only the first hlen bytes of the 16-byte chaddr field are the address."""
        data = FIXED[:2] + b"\x10" + FIXED[3:28] + b"\xaa" * 16 + FIXED[44:]
        self.assertEqual(parse_dhcp(data).chaddr, b"\xaa" * 16)
        self.assertEqual(parse_dhcp(FIXED[:2] + b"\x00" + FIXED[3:]).chaddr, b"")

    def test_strings_lose_trailing_nuls(self) -> None:
        msg = parse_dhcp(with_fields(sname=b"boot\0server", file=b"/pxelinux.0"))
        self.assertEqual(msg.sname, b"boot\0server")
        self.assertEqual(msg.file, b"/pxelinux.0")

    def test_build_refusals(self) -> None:
        for change in [
            {"op": 0},
            {"op": 3},
            {"hlen": 5},
            {"hlen": 17, "chaddr": bytes(17)},
            {"sname": bytes(65)},
            {"file": bytes(129)},
            {"xid": 2**32},
            {"secs": -1},
            {"flags": 0x10000},
            {"hops": 256},
            {"htype": 256},
            {"options": ((0, b""),)},
            {"options": ((255, b""),)},
            {"options": ((256, b""),)},
        ]:
            self.assertRaises(DHCPError, build_dhcp, replace(DhcpMessage(), **change))


class SubOptionTests(SynchronousTestCase):
    def test_relay_agent_info(self) -> None:
        code, value = relay_agent_info_option(circuit_id=b"tap0", remote_id=b"node-17")
        self.assertEqual(code, 82)
        self.assertEqual(value, b"\x01\x04tap0\x02\x07node-17")
        msg = parse_dhcp(build_dhcp(DhcpMessage(options=((code, value),))))
        self.assertEqual(msg.relay_agent_info, ((1, b"tap0"), (2, b"node-17")))
        self.assertEqual(
            relay_agent_info_option(others=[(9, b"x")]), (82, b"\x09\x01x"),
        )  # fmt: skip
        self.assertRaises(DHCPError, relay_agent_info_option)
        self.assertRaises(DHCPError, relay_agent_info_option, circuit_id=bytes(256))
        self.assertRaises(DHCPError, parse_relay_agent_info, b"\x01")
        self.assertEqual(parse_relay_agent_info(b"\x01\x00"), ((1, b""),))

    def test_client_fqdn_wire_format(self) -> None:
        code, value = client_fqdn_option("myhost.wow.example.", flags=FQDN_E | FQDN_S)
        self.assertEqual(code, 81)
        self.assertEqual(value, b"\x05\xff\xff\x06myhost\x03wow\x07example\x00")
        fqdn = parse_client_fqdn(value)
        self.assertEqual((fqdn.flags, fqdn.name, fqdn.complete), (5, "myhost.wow.example", True))
        # A partial name has no root label (RFC 4702 section 2.3.1).
        partial = parse_client_fqdn(b"\x04\x00\x00\x06myhost")
        self.assertEqual((partial.name, partial.complete), ("myhost", False))

    def test_client_fqdn_ascii(self) -> None:
        """The deprecated ASCII encoding, as old dhclient configurations send it."""
        fqdn = parse_client_fqdn(b"\x01\x00\x00myhost.example.")
        self.assertEqual((fqdn.name, fqdn.complete), ("myhost.example", True))
        self.assertEqual(client_fqdn_option("h", flags=0), (81, b"\x00\xff\xffh"))

    def test_client_fqdn_refusals(self) -> None:
        for value in [b"\x04\x00", b"\x04\x00\x00\x40" + bytes(64), b"\x04\x00\x00\x00x"]:
            self.assertRaises(DHCPError, parse_client_fqdn, value)
        for name in ["a..b", "ü.example", "x" * 64]:
            self.assertRaises(DHCPError, client_fqdn_option, name)


# Option codes with no length rule in the codec, so any value round-trips.
_CHECKED = (
    set(dhcp._FIXED_LENGTH) | dhcp._ADDRESS_LISTS | set(dhcp._MIN_LENGTH) | {dhcp.OPT_OVERLOAD}
)
free_options = st.tuples(
    st.integers(1, 254).filter(lambda c: c not in _CHECKED), st.binary(max_size=255)
)
addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
typed_options = st.one_of(
    st.integers(1, 8).map(message_type_option),
    addresses.map(lambda a: ip_option(OPT_REQUESTED_IP, a)),
    addresses.map(lambda a: ip_option(OPT_SERVER_ID, a)),
    st.lists(addresses, min_size=1, max_size=4).map(lambda a: ip_option(OPT_DNS, *a)),
    st.integers(0, 2**32 - 1).map(lambda v: u32_option(OPT_LEASE_TIME, v)),
    st.integers(0, 0xFFFF).map(lambda v: u16_option(OPT_INTERFACE_MTU, v)),
    labels.map(lambda t: str_option(OPT_HOST_NAME, t)),
    st.lists(labels, min_size=1, max_size=4).map(lambda ls: client_fqdn_option(".".join(ls))),
    st.tuples(st.binary(max_size=20), st.binary(max_size=20)).map(
        lambda ids: relay_agent_info_option(*ids)
    ),
)


@st.composite
def messages(draw: st.DrawFn) -> DhcpMessage:
    chaddr = draw(st.binary(max_size=16))
    # Free options may repeat (RFC 3396 instances); typed ones appear once, as
    # two instances of, say, a message type would concatenate to a bad length.
    free = draw(st.lists(free_options, max_size=5))
    typed = draw(st.lists(typed_options, max_size=5, unique_by=lambda o: o[0]))
    return DhcpMessage(
        op=draw(st.sampled_from([BOOTREQUEST, BOOTREPLY])),
        htype=draw(st.integers(0, 255)),
        hlen=len(chaddr),
        hops=draw(st.integers(0, 255)),
        xid=draw(st.integers(0, 2**32 - 1)),
        secs=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.integers(0, 0xFFFF)),
        ciaddr=draw(addresses),
        yiaddr=draw(addresses),
        siaddr=draw(addresses),
        giaddr=draw(addresses),
        chaddr=chaddr,
        sname=draw(st.binary(max_size=64)).rstrip(b"\0"),
        file=draw(st.binary(max_size=128)).rstrip(b"\0"),
        options=tuple(draw(st.permutations(free + typed))),
    )


def _check_parsed(test: SynchronousTestCase, msg: DhcpMessage) -> None:
    """A parsed message's helpers never fail and it re-encodes to itself."""
    for name in [
        "message_type",
        "requested_ip",
        "server_id",
        "lease_time",
        "max_message_size",
        "parameter_request_list",
        "hostname",
        "client_id",
        "client_fqdn",
        "relay_agent_info",
        "broadcast",
    ]:
        getattr(msg, name)
    if msg.client_fqdn is not None:
        parse_client_fqdn(msg.client_fqdn)
    test.assertEqual(parse_dhcp(build_dhcp(msg)), msg)


class PropertyTests(SynchronousTestCase):
    @given(messages())
    def test_round_trip(self, msg: DhcpMessage) -> None:
        self.assertEqual(parse_dhcp(build_dhcp(msg)), msg)

    @given(
        messages(),
        st.lists(
            st.tuples(st.integers(224, 254), st.binary(min_size=10, max_size=60)),  # site-specific
            min_size=4,
            max_size=16,
        ),
        st.booleans(),
        st.integers(300, 600),
    )
    def test_round_trip_with_size_limit(
        self,
        msg: DhcpMessage,
        more: list[tuple[int, bytes]],
        fields_free: bool,
        max_size: int,
    ) -> None:
        """Within a size limit (overloading if needed) or refused as too long."""
        msg = replace(msg, options=msg.options + tuple(more))
        if fields_free:
            msg = replace(msg, sname=b"", file=b"")
        try:
            data = build_dhcp(msg, max_size=max_size)
        except DHCPError as e:
            self.assertEqual(e.reason, "too-long")
            return
        self.assertLessEqual(len(data), max(max_size, 300))
        self.assertEqual(parse_dhcp(data), msg)

    @given(st.lists(st.tuples(st.sampled_from([60, 61, 224]), st.binary(max_size=700)), max_size=3))
    def test_long_values_round_trip(self, options: list[tuple[int, bytes]]) -> None:
        options = [(c, v) for c, v in options if c != OPT_CLIENT_ID or len(v) >= 2]
        msg = parse_dhcp(build_dhcp(DhcpMessage(options=tuple(options))))
        for code, _ in options:
            self.assertEqual(msg.option(code), b"".join(v for c, v in options if c == code))

    @given(
        st.lists(
            st.tuples(st.integers(0, len(UDHCPC_DISCOVER) - 1), st.integers(0, 255)), max_size=4
        )
    )
    def test_mutated_real_message(self, changes: list[tuple[int, int]]) -> None:
        data = bytearray(UDHCPC_DISCOVER)
        for index, value in changes:
            data[index] = value
        try:
            msg = parse_dhcp(bytes(data))
        except DHCPError:
            return
        _check_parsed(self, msg)

    @given(st.binary(max_size=400))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            msg = parse_dhcp(data)
        except DHCPError:
            return
        _check_parsed(self, msg)

    @given(st.binary(max_size=120), st.binary(max_size=192))
    def test_arbitrary_options(self, options: bytes, fields: bytes) -> None:
        """Random option areas (and random sname/file for overload) behind a valid header."""
        data = FIXED[:44] + fields.ljust(192, b"\0") + FIXED[236:] + options
        try:
            msg = parse_dhcp(data)
        except DHCPError:
            return
        _check_parsed(self, msg)

    @given(st.binary(max_size=60), st.binary(max_size=64), st.binary(max_size=128))
    def test_arbitrary_overloaded_fields(self, options: bytes, sname: bytes, file: bytes) -> None:
        data = with_fields(sname, file, b"\x34\x01\x03" + options)
        try:
            msg = parse_dhcp(data)
        except DHCPError:
            return
        _check_parsed(self, msg)
