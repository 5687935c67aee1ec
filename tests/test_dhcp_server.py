"""The DHCP server state machine (RFC 2131), fed parsed messages."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wow.dhcp.allocator import LocalAllocator
from wow.dhcp.loadgen import LIMITED_BROADCAST, ZERO, request_message
from wow.dhcp.server import DhcpReply, DhcpServer, ServerSettings
from wow.metrics import Counters
from wow.net.dhcp import (
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    OPT_CLIENT_ID,
    OPT_ROUTER,
    DhcpMessage,
    build_dhcp,
    client_fqdn_option,
    parse_dhcp,
)
from wow.net.errors import DHCPError
from wow.net.ethernet import BROADCAST

NET = IPv4Network("10.7.0.0/16")
GW = IPv4Address("10.7.0.1")
A = b"\x02\xaa\x00\x00\x00\x01"
B = b"\x02\xbb\x00\x00\x00\x02"


class ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(5_000_000)
        self.counters = Counters()
        self.allocator = LocalAllocator(self.mktemp() + "-leases.json", NET, GW, self.clock,
                                        self.counters)
        self.settings = ServerSettings(GW, NET, 600, (GW, IPv4Address("10.7.0.2")), "wow", 1360)
        self.server = DhcpServer(self.settings, self.allocator, self.clock, self.counters)

    def send(self, mtype: int, mac: bytes = A, to_broadcast: bool = True, **kw: Any
             ) -> DhcpReply | None:
        msg = request_message(mtype, mac, 0x1234, **kw)
        # Through the codec, as on the wire.
        reply = self.successResultOf(self.server.handle(parse_dhcp(build_dhcp(msg)), to_broadcast))
        if reply is not None:
            # Every reply must encode.
            parse_dhcp(build_dhcp(reply.message))
        return reply

    def bind(self, mac: bytes = A, **kw: Any) -> IPv4Address:
        offer = self.send(DHCPDISCOVER, mac, **kw)
        assert offer is not None
        ack = self.send(DHCPREQUEST, mac, requested=offer.message.yiaddr, server=GW, **kw)
        assert ack is not None and ack.message.message_type == DHCPACK
        return ack.message.yiaddr

    def test_discover_offer_options(self) -> None:
        reply = self.send(DHCPDISCOVER, hostname="alpha")
        assert reply is not None
        m = reply.message
        self.assertEqual(m.message_type, DHCPOFFER)
        self.assertEqual((m.op, m.xid, m.chaddr), (2, 0x1234, A))
        self.assertEqual(m.yiaddr, IPv4Address("10.7.0.2"))
        self.assertIn(m.yiaddr, NET)
        self.assertEqual(m.server_id, GW)
        self.assertEqual(m.option(1), NET.netmask.packed)
        self.assertEqual(m.option(6), GW.packed + IPv4Address("10.7.0.2").packed)
        self.assertEqual(m.option(15), b"wow")
        self.assertEqual(m.option(26), struct.pack("!H", 1360))
        self.assertEqual(m.lease_time, 600)
        self.assertEqual(m.option(58), struct.pack("!I", 300))
        self.assertEqual(m.option(59), struct.pack("!I", 525))
        self.assertEqual(m.hostname, "alpha")
        self.assertIsNone(m.option(OPT_ROUTER))
        # Not broadcast flag, no ciaddr: unicast to chaddr/yiaddr.
        self.assertEqual((reply.dst_mac, reply.dst_ip), (A, m.yiaddr))
        self.assertTrue(self.server.is_local(m.yiaddr))

    def test_broadcast_flag_gets_broadcast_reply(self) -> None:
        reply = self.send(DHCPDISCOVER, broadcast=True)
        assert reply is not None
        self.assertEqual((reply.dst_mac, reply.dst_ip), (BROADCAST, LIMITED_BROADCAST))

    def test_selecting_ack_and_records_hostname_and_fqdn(self) -> None:
        offer = self.send(DHCPDISCOVER)
        assert offer is not None
        ack = self.send(DHCPREQUEST, requested=offer.message.yiaddr, server=GW, hostname="h1",
                        extra=(client_fqdn_option("h1.wow"),))
        assert ack is not None
        self.assertEqual(ack.message.message_type, DHCPACK)
        self.assertEqual(ack.message.yiaddr, offer.message.yiaddr)
        lease = self.successResultOf(self.allocator.lookup(A, None))
        self.assertEqual((lease.hostname, lease.fqdn), ("h1", "h1.wow"))
        self.assertEqual(self.counters.get("dhcp_acks", state="selecting"), 1)

    def test_selecting_other_server_is_silent_and_frees_offer(self) -> None:
        offer = self.send(DHCPDISCOVER)
        assert offer is not None
        ip = offer.message.yiaddr
        self.assertIsNone(self.send(DHCPREQUEST, requested=ip, server=IPv4Address("10.7.9.9")))
        self.assertEqual(self.counters.get("dhcp_refused", reason="other-server"), 1)
        self.assertFalse(self.server.is_local(ip))

    def test_selecting_address_of_someone_else_naks(self) -> None:
        ip = self.bind(A)
        nak = self.send(DHCPREQUEST, B, requested=ip, server=GW)
        assert nak is not None
        self.assertEqual(nak.message.message_type, DHCPNAK)
        self.assertEqual((nak.dst_mac, nak.dst_ip), (BROADCAST, LIMITED_BROADCAST))
        self.assertEqual(nak.message.yiaddr, ZERO)

    def test_init_reboot(self) -> None:
        ip = self.bind(A)
        ack = self.send(DHCPREQUEST, A, requested=ip)
        assert ack is not None
        self.assertEqual(ack.message.message_type, DHCPACK)
        self.assertEqual(self.counters.get("dhcp_acks", state="init-reboot"), 1)
        # Wrong subnet → NAK.
        nak = self.send(DHCPREQUEST, A, requested=IPv4Address("192.168.1.5"))
        assert nak is not None
        self.assertEqual(nak.message.message_type, DHCPNAK)
        self.assertEqual(self.counters.get("dhcp_naks", reason="wrong-subnet"), 1)
        # Someone else's address → NAK.
        nak = self.send(DHCPREQUEST, B, requested=ip)
        assert nak is not None
        self.assertEqual(nak.message.message_type, DHCPNAK)
        # A free address of the subnet the node has no record of: authoritative ACK.
        ack = self.send(DHCPREQUEST, B, requested=IPv4Address("10.7.3.3"))
        assert ack is not None
        self.assertEqual(ack.message.yiaddr, IPv4Address("10.7.3.3"))

    def test_renewing_unicast_to_ciaddr(self) -> None:
        ip = self.bind(A)
        self.clock.advance(300)
        ack = self.send(DHCPREQUEST, A, to_broadcast=False, ciaddr=ip)
        assert ack is not None
        self.assertEqual(ack.message.message_type, DHCPACK)
        self.assertEqual((ack.dst_mac, ack.dst_ip), (A, ip))
        self.assertEqual(ack.message.ciaddr, ip)
        self.assertEqual(self.counters.get("dhcp_acks", state="renewing"), 1)
        lease = self.successResultOf(self.allocator.lookup(A, None))
        self.assertEqual(lease.expires, self.clock.seconds() + 600)

    def test_rebinding(self) -> None:
        ip = self.bind(A)
        ack = self.send(DHCPREQUEST, A, to_broadcast=True, ciaddr=ip)
        assert ack is not None
        self.assertEqual(ack.message.message_type, DHCPACK)
        self.assertEqual(self.counters.get("dhcp_acks", state="rebinding"), 1)
        nak = self.send(DHCPREQUEST, B, to_broadcast=True, ciaddr=ip)
        assert nak is not None
        self.assertEqual(nak.message.message_type, DHCPNAK)

    def test_release(self) -> None:
        ip = self.bind(A)
        self.assertIsNone(self.send(DHCPRELEASE, A, ciaddr=ip, server=GW))
        self.assertEqual(self.successResultOf(self.allocator.leases()), [])
        self.assertFalse(self.server.is_local(ip))
        self.assertEqual(self.counters.get("dhcp_releases"), 1)
        self.assertIsNone(self.send(DHCPRELEASE, B, ciaddr=ip, server=GW))
        self.assertEqual(self.counters.get("dhcp_refused", reason="release-not-held"), 1)

    def test_decline_quarantines_and_next_offer_differs(self) -> None:
        offer = self.send(DHCPDISCOVER)
        assert offer is not None
        ip = offer.message.yiaddr
        self.assertIsNone(self.send(DHCPDECLINE, requested=ip, server=GW))
        self.assertEqual(self.counters.get("dhcp_declines"), 1)
        again = self.send(DHCPDISCOVER)
        assert again is not None
        self.assertNotEqual(again.message.yiaddr, ip)

    def test_inform(self) -> None:
        ip = IPv4Address("10.7.5.5")
        ack = self.send(DHCPINFORM, A, to_broadcast=False, ciaddr=ip)
        assert ack is not None
        m = ack.message
        self.assertEqual((m.message_type, m.yiaddr), (DHCPACK, ZERO))
        self.assertIsNone(m.lease_time)
        self.assertEqual(m.option(15), b"wow")
        self.assertEqual((ack.dst_mac, ack.dst_ip), (A, ip))
        self.assertEqual(self.successResultOf(self.allocator.leases()), [])

    def test_invalid_host_name_not_recorded_nor_echoed(self) -> None:
        offer = self.send(DHCPDISCOVER)
        assert offer is not None
        ack = self.send(DHCPREQUEST, requested=offer.message.yiaddr, server=GW,
                        hostname="bad name;rm -rf")
        assert ack is not None
        self.assertIsNone(ack.message.hostname)
        self.assertEqual(self.successResultOf(self.allocator.lookup(A, None)).hostname, "")
        self.assertEqual(self.counters.get("dhcp_bad_hostname"), 1)

    def test_several_clients_get_their_own_lease(self) -> None:
        ips = {self.bind(bytes([2, 0, 0, 0, 1, i])) for i in range(20)}
        self.assertEqual(len(ips), 20)
        self.assertEqual(len(self.successResultOf(self.allocator.leases())), 20)

    def test_client_id_echoed(self) -> None:
        reply = self.send(DHCPDISCOVER, extra=((OPT_CLIENT_ID, b"\x01" + A),))
        assert reply is not None
        self.assertEqual(reply.message.client_id, b"\x01" + A)

    def test_refusals_counted(self) -> None:
        cases = {
            "not-a-request": DhcpMessage(op=2, chaddr=A, options=((53, b"\x01"),)),
            "unsupported-hardware": DhcpMessage(htype=6, chaddr=A, options=((53, b"\x01"),)),
            "relayed": DhcpMessage(giaddr=IPv4Address("1.2.3.4"), chaddr=A,
                                   options=((53, b"\x01"),)),
            "bootp-not-supported": DhcpMessage(chaddr=A),
            "unexpected-type": DhcpMessage(chaddr=A, options=((53, bytes([DHCPOFFER])),)),
        }
        for reason, msg in cases.items():
            self.assertIsNone(self.successResultOf(self.server.handle(msg, True)))
            self.assertEqual(self.counters.get("dhcp_refused", reason=reason), 1, reason)
        self.assertIsNone(self.send(DHCPREQUEST, server=GW))
        self.assertIsNone(self.send(DHCPREQUEST))
        self.assertEqual(self.counters.get("dhcp_refused", reason="no-requested-address"), 2)
        self.assertIsNone(self.send(DHCPINFORM))
        self.assertEqual(self.counters.get("dhcp_refused", reason="inform-without-ciaddr"), 1)

    def test_pool_exhausted(self) -> None:
        small = LocalAllocator(self.mktemp() + "-l.json", NET, GW, self.clock, self.counters,
                               pool_start=IPv4Address("10.7.0.5"),
                               pool_end=IPv4Address("10.7.0.5"))
        self.server.allocator = small
        self.bind(A)
        self.assertIsNone(self.send(DHCPDISCOVER, B))
        self.assertEqual(self.counters.get("dhcp_refused", reason="pool-exhausted"), 1)

    def test_allocator_failure_is_logged_and_counted(self) -> None:
        class Broken:
            def offer(self, *a: Any) -> Any:
                return fail(RuntimeError("dht unreachable"))

        self.server.allocator = Broken()  # type: ignore[assignment]
        self.assertIsNone(self.send(DHCPDISCOVER))
        self.assertEqual(self.counters.get("dhcp_refused", reason="allocator-error"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @given(
        op=st.integers(0, 255), htype=st.integers(0, 255), hlen=st.integers(0, 16),
        ciaddr=st.integers(0, 2**32 - 1), giaddr=st.sampled_from([0, 0, 0x01020304]),
        flags=st.integers(0, 0xFFFF), chaddr=st.binary(min_size=6, max_size=6),
        options=st.lists(st.tuples(st.sampled_from([12, 50, 53, 54, 61, 81, 55, 51, 3]),
                                   st.binary(max_size=12)), max_size=6),
        to_broadcast=st.booleans(),
    )
    def test_arbitrary_messages_never_raise(self, op: int, htype: int, hlen: int, ciaddr: int,
                                            giaddr: int, flags: int, chaddr: bytes,
                                            options: list[tuple[int, bytes]],
                                            to_broadcast: bool) -> None:
        msg = DhcpMessage(op=op, htype=htype, hlen=hlen, ciaddr=IPv4Address(ciaddr),
                          giaddr=IPv4Address(giaddr), flags=flags, chaddr=chaddr,
                          options=tuple(options))
        try:
            msg = parse_dhcp(build_dhcp(msg))
        except DHCPError:
            return  # not encodable as a DHCP message: nothing the server can receive
        reply = self.successResultOf(self.server.handle(msg, to_broadcast))
        if reply is not None:
            parse_dhcp(build_dhcp(reply.message))
            self.assertIn(reply.message.message_type, (DHCPOFFER, DHCPACK, DHCPNAK))

    def test_restore_marks_leases_local(self) -> None:
        ip = self.bind(A)
        fresh = DhcpServer(self.settings, self.allocator, self.clock, Counters())
        self.assertFalse(fresh.is_local(ip))
        fresh.restore(self.successResultOf(self.allocator.leases()))
        self.assertTrue(fresh.is_local(ip))
        self.assertEqual(fresh.mac_of(ip), A)
