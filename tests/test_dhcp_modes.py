"""dhcp.mode, dhcp.server and dhcp.relay_transport: validation and the NIC each builds."""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wow.dhcp import loadgen
from wow.dhcp.dht_allocator import DhtAllocator
from wow.dhcp.dhtclient import lease_key
from wow.dhcp.modes import DhtNicService, RelayNicService, nic_service_for
from wow.dhcp.relay import IRelayTransport, RelayAgent
from wow.metrics import Counters
from wow.net.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from wow.net.dhcp import (
    BOOTREPLY,
    DHCPACK,
    DHCPOFFER,
    OPT_RELAY_AGENT_INFO,
    RAI_REMOTE_ID,
    build_dhcp,
    ip_option,
    message_type_option,
    parse_dhcp,
)
from wow.net.ethernet import (
    BROADCAST,
    ETH_P_ARP,
    ETH_P_IP,
    EthernetFrame,
    build_ethernet,
    parse_ethernet,
)
from wow.net.ipv4 import PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from wow.net.udp import UDPDatagram, build_udp, parse_udp
from wow.nic.service import NicService
from wow.node.config import load_node_config
from wow.testing import FakeDht, FakeTapDevice, FakeTapSyscalls
from wow.util.config import ConfigError

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
SERVER = IPv4Address("10.128.0.2")
LIMITED_BROADCAST = IPv4Address("255.255.255.255")


def dhcp(**values: Any) -> dict[str, dict[str, Any]]:
    return {"dhcp": values}


class ModeConfigTests(SynchronousTestCase):
    def refused(self, fragment: str, **values: Any) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_node_config(None, dhcp(**values))
        self.assertIn(fragment, str(cm.exception))

    def test_modes(self) -> None:
        for mode in ("local", "dht"):
            self.assertEqual(load_node_config(None, dhcp(mode=mode)).dhcp.mode, mode)
        self.assertEqual(load_node_config(None).dhcp.mode, "dht")
        self.refused("dhcp.mode 'central' is not one of local, dht, relay", mode="central")

    def test_relay_needs_a_server(self) -> None:
        self.refused("needs dhcp.server", mode="relay")
        self.refused("dhcp.server 'dnsmasq' is not an IPv4 address", mode="relay",
                     server="dnsmasq")

    def test_relay_over_the_overlay_needs_a_virtual_server_address(self) -> None:
        config = load_node_config(None, dhcp(mode="relay", server="10.128.0.2"))
        self.assertEqual((config.dhcp.server, config.dhcp.relay_transport),
                         ("10.128.0.2", "overlay"))
        self.refused("must be a virtual host address", mode="relay", server="192.0.2.2")
        self.refused("must be a virtual host address", mode="relay", server="10.128.0.1")

    def test_relay_over_udp_takes_an_underlay_address(self) -> None:
        config = load_node_config(None, dhcp(mode="relay", server="192.0.2.2",
                                             relay_transport="udp"))
        self.assertEqual(config.dhcp.relay_transport, "udp")
        self.refused("dhcp.relay_transport 'tcp' is not one of overlay, udp", mode="relay",
                     server="192.0.2.2", relay_transport="tcp")


class NicForModeTests(SynchronousTestCase):
    def config(self, **values: Any) -> Any:
        state = self.mktemp()
        os.makedirs(state)
        return load_node_config(None, {"dhcp": values, "node": {"state_dir": state}})

    def test_local(self) -> None:
        nic = nic_service_for(self.config(mode="local"), Clock(), Counters())
        self.assertIs(type(nic), NicService)
        self.assertIsNone(nic.allocator)

    def test_dht(self) -> None:
        clock = Clock()
        nic = nic_service_for(self.config(mode="dht"), clock, Counters(),
                              dht=FakeDht(clock).client(b"\x01" * 20))
        self.assertIsInstance(nic.allocator, DhtAllocator)

    def test_dht_nic_claims_and_releases_on_shutdown(self) -> None:
        reactor = MemoryReactorClock()
        dht = FakeDht(reactor)
        config = self.config(mode="dht")
        nic = nic_service_for(config, reactor, Counters(), dht=dht.client(b"\x01" * 20),
                              syscalls=FakeTapSyscalls())
        self.assertIsInstance(nic, DhtNicService)
        nic.privilegedStartService()
        nic.startService()
        device: FakeTapDevice = nic.syscalls.devices[-1]  # type: ignore[attr-defined]
        mac = b"\x02\x00\x00\x00\x00\x0a"
        device.inject(loadgen.discover(mac, 1))
        assert nic.port is not None
        nic.port.doRead()
        offer = loadgen.parse_reply(device.written[-1])[2]
        device.inject(loadgen.select(mac, 2, offer.yiaddr, GW))
        nic.port.doRead()
        self.assertEqual(loadgen.parse_reply(device.written[-1])[2].message_type, DHCPACK)
        key = lease_key(NET, offer.yiaddr)
        self.assertEqual(dht.live(key)[1], b"\x01" * 20)  # type: ignore[index]
        self.assertIsNone(self.successResultOf(nic.stopService()))
        self.assertIsNone(dht.live(key))

    def test_dht_without_the_overlay_is_one_sentence(self) -> None:
        e = self.assertRaises(SystemExit, nic_service_for, self.config(mode="dht"), Clock(),
                              Counters())
        self.assertEqual(e.code, 2)

    def test_relay(self) -> None:
        nic = nic_service_for(self.config(mode="relay", server="10.128.0.2"), Clock(),
                              Counters())
        self.assertIsInstance(nic, RelayNicService)


class OverlayRelayInMemoryTests(SynchronousTestCase):
    """
    The overlay relay path end to end, with the overlay replaced by direct
    calls: node A relays its host's DISCOVER; node B, whose host runs the
    DHCP server (10.128.0.2), puts it on its TAP, intercepts the server's
    reply to gateway:67 and sends it to A by remote id; A delivers it.
    """

    def node(self, name: str, me: bytes, dht: FakeDht, **kw: Any) -> RelayNicService:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        config = load_node_config(None, {"node": {"state_dir": state},
                                         "dhcp": {"mode": "relay", "server": "10.128.0.2"}})
        nic = RelayNicService(config, self.reactor, Counters(), dht=dht.client(me),
                              syscalls=FakeTapSyscalls(), **kw)
        nic.preflight()
        nic.privilegedStartService()
        nic.startService()
        self.addCleanup(nic.stopService)
        return nic

    def read(self, nic: RelayNicService, frame: bytes) -> list[bytes]:
        device: FakeTapDevice = nic.syscalls.devices[-1]  # type: ignore[attr-defined]
        before = len(device.written)
        device.inject(frame)
        assert nic.port is not None
        nic.port.doRead()
        return device.written[before:]

    def test_discover_offer_over_the_overlay(self) -> None:
        self.reactor = MemoryReactorClock()
        dht = FakeDht(self.reactor)
        nodes: dict[bytes, RelayNicService] = {}
        a_addr, b_addr = b"\xaa" * 20, b"\xbb" * 20

        def to_server(payload: bytes) -> None:
            # What the overlay transport does: find the node holding the
            # server's virtual IP in the DHT, send it the payload.
            def send(entries: list[Any]) -> None:
                for entry in entries:
                    nodes[entry.owner].agent.from_relay(payload)  # type: ignore[union-attr]

            dht.client(a_addr).get(lease_key(NET, SERVER)).addCallback(send)

        def to_node(address: bytes, payload: bytes) -> None:
            nodes[address].agent.from_server(payload)  # type: ignore[union-attr]

        @implementer(IRelayTransport)
        class Direct:
            send_to_server = staticmethod(to_server)
            send_to_node = staticmethod(to_node)

            def attach(self, agent: RelayAgent) -> None:
                pass

        for addr in (a_addr, b_addr):
            self.assertTrue(verifyObject(IRelayTransport, Direct()))
            nodes[addr] = self.node(addr.hex()[:2], addr, dht, transport=Direct())
        a, b = nodes[a_addr], nodes[b_addr]
        device: FakeTapDevice = b.syscalls.devices[-1]  # type: ignore[attr-defined]
        # Each node asks its host whether it is the server (ARP who-has);
        # B's host is, and answers: B publishes the server's address.
        probe = parse_arp(parse_ethernet(device.written[0]).payload)
        self.assertEqual((probe.op, probe.sender_ip, probe.target_ip), (ARP_REQUEST, GW, SERVER))
        server_mac = b"\x02\x00\x00\x00\x00\x02"
        answer = ArpPacket(ARP_REPLY, server_mac, SERVER, b.router_mac, GW)
        self.read(b, build_ethernet(EthernetFrame(b.router_mac, server_mac, ETH_P_ARP,
                                                  build_arp(answer))))
        self.assertEqual(dht.live(lease_key(NET, SERVER))[1], b_addr)  # type: ignore[index]
        device.written.clear()

        client = b"\x02\x00\x00\x00\x00\x0a"
        self.assertEqual(self.read(a, loadgen.discover(client, 7, broadcast=True)), [])

        # B wrote the relayed DISCOVER onto its TAP, to the server host.
        (frame,) = device.written
        eth = parse_ethernet(frame)
        ip = parse_ipv4(eth.payload)
        udp = parse_udp(ip.payload, ip.src, ip.dst)
        relayed = parse_dhcp(udp.payload)
        self.assertEqual((eth.dst, ip.src, ip.dst, udp.dst_port), (server_mac, GW, SERVER, 67))
        self.assertEqual(relayed.giaddr, GW)
        self.assertEqual(dict(relayed.relay_agent_info or ())[RAI_REMOTE_ID], a_addr)

        # The server answers the relay: unicast to giaddr:67, option 82 echoed.
        offer = replace(relayed, op=BOOTREPLY, yiaddr=IPv4Address("10.128.0.60"), options=(
            message_type_option(DHCPOFFER), ip_option(54, GW),
            (OPT_RELAY_AGENT_INFO, relayed.option(OPT_RELAY_AGENT_INFO) or b"")))
        server_udp = build_udp(UDPDatagram(67, 67, build_dhcp(offer)), SERVER, GW)
        server_ip = build_ipv4(IPv4Packet(src=SERVER, dst=GW, proto=PROTO_UDP,
                                          payload=server_udp))
        reply_frame = build_ethernet(EthernetFrame(b.router_mac, server_mac, ETH_P_IP, server_ip))
        self.assertEqual(self.read(b, reply_frame), [])

        # A delivered it to its client: broadcast (the client asked), no option 82.
        device_a: FakeTapDevice = a.syscalls.devices[-1]  # type: ignore[attr-defined]
        (delivered,) = [f for f in device_a.written if parse_ethernet(f).ethertype == ETH_P_IP]
        eth, ip, msg = loadgen.parse_reply(delivered)
        self.assertEqual((eth.dst, ip.src, ip.dst), (BROADCAST, GW, LIMITED_BROADCAST))
        self.assertEqual((msg.message_type, msg.yiaddr, msg.xid), (DHCPOFFER,
                                                                  IPv4Address("10.128.0.60"), 7))
        self.assertIsNone(msg.option(OPT_RELAY_AGENT_INFO))
