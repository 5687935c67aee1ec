"""The relay agent (sans-I/O): option 82 in, option 82 out, RFC 2131 §4.1 delivery."""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wow.dhcp.dhtclient import lease_key
from wow.dhcp.relay import (
    GRACE,
    RAI_LINK_SELECTION,
    RAI_SERVER_ID_OVERRIDE,
    RelayAgent,
    RelaySettings,
)
from wow.dhcp.server import LIMITED_BROADCAST, ZERO, DhcpReply
from wow.metrics import Counters
from wow.net.dhcp import (
    BOOTREPLY,
    DHCPACK,
    DHCPDISCOVER,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    FLAG_BROADCAST,
    OPT_LEASE_TIME,
    OPT_RELAY_AGENT_INFO,
    RAI_CIRCUIT_ID,
    RAI_REMOTE_ID,
    DhcpMessage,
    build_dhcp,
    ip_option,
    message_type_option,
    parse_dhcp,
    relay_agent_info_option,
    u32_option,
)
from wow.net.ethernet import BROADCAST
from wow.testing import FakeDht

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
ME = b"\x11" * 20
OTHER = b"\x22" * 20
MAC = b"\x02\x00\x00\x00\x00\x0a"
IP = IPv4Address("10.128.0.77")


def request(mtype: int, **kw: Any) -> DhcpMessage:
    return DhcpMessage(xid=0x1234, chaddr=MAC, options=(message_type_option(mtype),), **kw)


def reply(mtype: int, remote: bytes = ME, circuit: bytes = MAC, yiaddr: IPv4Address = IP,
          **kw: Any) -> DhcpMessage:
    options = [message_type_option(mtype), ip_option(54, GW)]
    if mtype == DHCPACK:
        options.append(u32_option(OPT_LEASE_TIME, 600))
    options.append(relay_agent_info_option(circuit_id=circuit, remote_id=remote))
    return DhcpMessage(op=BOOTREPLY, xid=0x1234, chaddr=MAC, yiaddr=yiaddr, giaddr=GW,
                       options=tuple(options), **kw)


class RelayAgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dht = FakeDht(self.clock)
        self.counters = Counters()
        self.to_server: list[bytes] = []
        self.delivered: list[DhcpReply] = []
        self.to_node: list[tuple[bytes, bytes]] = []
        self.to_local: list[bytes] = []
        self.path = self.mktemp() + "-relayed.json"
        self.agent = self.make()

    def make(self, giaddr: IPv4Address = GW) -> RelayAgent:
        return RelayAgent(RelaySettings(GW, NET, ME, giaddr), self.path, self.dht.client(ME),
                          self.clock, self.counters, self.to_server.append,
                          self.delivered.append, lambda a, p: self.to_node.append((a, p)),
                          self.to_local.append)

    def relayed(self) -> DhcpMessage:
        return parse_dhcp(self.to_server[-1])

    def test_client_request_gets_giaddr_hops_and_option_82_last(self) -> None:
        self.agent.handle(request(DHCPDISCOVER, flags=FLAG_BROADCAST), True)
        msg = self.relayed()
        self.assertEqual((msg.giaddr, msg.hops, msg.xid, msg.flags), (GW, 1, 0x1234,
                                                                      FLAG_BROADCAST))
        self.assertEqual(msg.options[-1][0], OPT_RELAY_AGENT_INFO)
        self.assertEqual(msg.relay_agent_info, ((RAI_CIRCUIT_ID, MAC), (RAI_REMOTE_ID, ME),
                                                (RAI_SERVER_ID_OVERRIDE, GW.packed)))
        self.assertEqual(self.counters.get("dhcp_relayed", direction="to-server"), 1)

    def test_off_subnet_giaddr_adds_link_selection(self) -> None:
        agent = self.make(IPv4Address("192.0.2.1"))
        agent.handle(request(DHCPDISCOVER), True)
        info = dict(self.relayed().relay_agent_info or ())
        self.assertEqual(self.relayed().giaddr, IPv4Address("192.0.2.1"))
        self.assertEqual(info[RAI_LINK_SELECTION], GW.packed)

    def test_requests_that_must_not_be_relayed(self) -> None:
        cases = {
            "client-sent-option-82": replace(request(DHCPDISCOVER), options=(
                message_type_option(DHCPDISCOVER), relay_agent_info_option(b"x"))),
            "already-relayed": request(DHCPDISCOVER, giaddr=IPv4Address("10.128.9.9")),
            "too-many-hops": request(DHCPDISCOVER, hops=16),
            "unsupported-hardware": DhcpMessage(htype=6, hlen=6, chaddr=MAC,
                                                options=(message_type_option(1),)),
        }
        for reason, msg in cases.items():
            self.agent.handle(msg, True)
            self.assertEqual(self.counters.get("dhcp_relay_dropped", reason=reason), 1, reason)
        self.assertEqual(self.to_server, [])

    def test_offer_broadcast_when_the_client_asks(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPOFFER, flags=FLAG_BROADCAST)))
        (out,) = self.delivered
        self.assertEqual((out.dst_mac, out.dst_ip), (BROADCAST, LIMITED_BROADCAST))
        self.assertIsNone(out.message.option(OPT_RELAY_AGENT_INFO))
        self.assertFalse(self.agent.is_local(IP))  # an offer binds nothing

    def test_offer_unicast_to_yiaddr_otherwise(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPOFFER)))
        self.assertEqual((self.delivered[0].dst_mac, self.delivered[0].dst_ip), (MAC, IP))

    def test_renewal_ack_unicast_to_ciaddr(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPACK, ciaddr=IP)))
        self.assertEqual((self.delivered[0].dst_mac, self.delivered[0].dst_ip), (MAC, IP))

    def test_nak_is_broadcast_and_unbinds(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPACK)))
        self.agent.from_server(build_dhcp(reply(DHCPNAK, yiaddr=ZERO, ciaddr=IP)))
        self.assertEqual((self.delivered[1].dst_mac, self.delivered[1].dst_ip),
                         (BROADCAST, LIMITED_BROADCAST))
        self.assertFalse(self.agent.is_local(IP))
        self.assertIsNone(self.dht.live(lease_key(NET, IP)))

    def test_ack_binds_and_publishes_for_the_router(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPACK)))
        self.assertTrue(self.agent.is_local(IP))
        self.assertEqual(self.agent.mac_of(IP), MAC)
        value, owner, expires = self.dht.live(lease_key(NET, IP))  # type: ignore[misc]
        self.assertEqual((value, owner, expires), (ME, ME, self.clock.seconds() + 600 + GRACE))
        (lease,) = self.successResultOf(self.agent.leases())
        self.assertEqual((lease.ip, lease.mac), (IP, MAC))
        # Restart: the relayed lease is remembered and published again.
        del self.dht.records[lease_key(NET, IP)]
        restarted = self.make()
        restarted.start()
        self.assertTrue(restarted.is_local(IP))
        self.assertIsNotNone(self.dht.live(lease_key(NET, IP)))
        # Expiry.
        self.clock.advance(601)
        self.assertFalse(self.agent.is_local(IP))

    def test_release_is_relayed_and_unbinds(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPACK)))
        self.agent.handle(request(DHCPRELEASE, ciaddr=IP), False)
        self.assertEqual(self.relayed().message_type, DHCPRELEASE)
        self.assertFalse(self.agent.is_local(IP))
        self.assertIsNone(self.dht.live(lease_key(NET, IP)))

    def test_replies_not_for_us_are_dropped(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPOFFER, remote=OTHER)))
        self.agent.from_server(build_dhcp(reply(DHCPOFFER, circuit=b"\x02" * 6)))
        no82 = replace(reply(DHCPOFFER), options=(message_type_option(DHCPOFFER),))
        self.agent.from_server(build_dhcp(no82))
        self.agent.from_server(build_dhcp(request(DHCPDISCOVER)))
        self.agent.from_server(b"garbage")
        self.assertEqual(self.delivered, [])
        for reason in ("not-our-remote-id", "circuit-id-mismatch", "reply-without-option-82",
                       "not-a-reply", "bad-dhcp"):
            self.assertEqual(self.counters.get("dhcp_relay_dropped", reason=reason), 1, reason)

    def test_server_node_routes_replies_by_remote_id(self) -> None:
        # The server on this node's TAP answered to gateway:67.
        self.agent.handle(reply(DHCPOFFER, remote=OTHER), False)
        ((address, payload),) = self.to_node
        self.assertEqual(address, OTHER)
        self.assertEqual(dict(parse_dhcp(payload).relay_agent_info or ())[RAI_REMOTE_ID], OTHER)
        self.agent.handle(reply(DHCPOFFER), False)
        self.assertEqual(len(self.delivered), 1)
        self.agent.handle(reply(DHCPOFFER, remote=b"short"), False)
        self.assertEqual(self.counters.get("dhcp_relay_dropped", reason="unknown-remote-id"), 1)

    def test_server_node_hands_relayed_requests_to_its_server(self) -> None:
        self.agent.handle(request(DHCPREQUEST), True)
        self.agent.from_relay(self.to_server[-1])
        self.assertEqual(self.to_local, [self.to_server[-1]])
        self.agent.from_relay(build_dhcp(request(DHCPDISCOVER)))
        self.assertEqual(self.counters.get("dhcp_relay_dropped", reason="not-a-relayed-request"),
                         1)

    def test_server_address_published_when_seen(self) -> None:
        server = IPv4Address("10.128.0.2")
        self.agent.host_address_seen(server, b"\x02\x00\x00\x00\x00\x02")
        self.assertEqual(self.dht.live(lease_key(NET, server))[1], ME)  # type: ignore[index]
        self.assertTrue(self.agent.is_local(server))

    @given(st.binary(max_size=600))
    def test_garbage_from_the_transport_never_raises(self, data: bytes) -> None:
        self.agent.from_server(data)
        self.agent.from_relay(data)

    def test_state_file_is_private(self) -> None:
        self.agent.from_server(build_dhcp(reply(DHCPACK)))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
