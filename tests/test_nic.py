"""The virtual NIC: TAP port, ARP responder, frame dispatch and the service."""

from __future__ import annotations

import errno
import json
import os
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from wow.dhcp import loadgen
from wow.metrics import Counters
from wow.net.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from wow.net.dhcp import DHCPACK, DHCPOFFER
from wow.net.ethernet import (
    BROADCAST,
    ETH_P_ARP,
    ETH_P_IP,
    EthernetFrame,
    build_ethernet,
    parse_ethernet,
)
from wow.net.ipv4 import PROTO_ICMP, IPv4Packet, build_ipv4
from wow.nic.arp import ArpResponder
from wow.nic.dispatch import IPacketSink, UnroutedSink
from wow.nic.service import NicService
from wow.nic.tap import (
    ITapDevice,
    ITapSyscalls,
    PytunSyscalls,
    TapError,
    TapPort,
    check_tap_prerequisites,
    load_host_mac,
    router_mac_for,
)
from wow.node.config import load_node_config
from wow.testing import FakeTapDevice, FakeTapSyscalls

NET = IPv4Network("10.128.0.0/16")
GW = IPv4Address("10.128.0.1")
ROUTER = b"\xfe\x00\x00\x00\x00\x01"
HOST = b"\x02\x11\x22\x33\x44\x55"
ZERO = IPv4Address(0)


def arp_request(target: str, sender: str = "10.128.0.5", op: int = ARP_REQUEST) -> ArpPacket:
    return ArpPacket(op, HOST, IPv4Address(sender), b"\x00" * 6, IPv4Address(target))


class ArpResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.local = {IPv4Address("10.128.0.5")}
        self.counters = Counters()
        self.arp = ArpResponder(ROUTER, NET, GW, lambda ip: ip in self.local, self.counters)

    def test_gateway_and_other_virtual_addresses_answered_with_router_mac(self) -> None:
        for target in ("10.128.0.1", "10.128.7.9", "10.128.255.254"):
            reply = self.arp.answer(arp_request(target))
            assert reply is not None
            self.assertEqual((reply.op, reply.sender_mac, reply.sender_ip),
                             (ARP_REPLY, ROUTER, IPv4Address(target)))
            self.assertEqual((reply.target_mac, reply.target_ip),
                             (HOST, IPv4Address("10.128.0.5")))

    def test_never_for_the_hosts_own_leased_address(self) -> None:
        # A RFC 5227 probe (sender 0.0.0.0) for the leased address: silence.
        self.assertIsNone(self.arp.answer(arp_request("10.128.0.5", sender="0.0.0.0")))
        # Another client on the TAP (a bridged VM) asking for it: the host answers itself.
        self.assertIsNone(self.arp.answer(arp_request("10.128.0.5", sender="10.128.0.6")))
        self.assertEqual(self.counters.get("arp_ignored", reason="local-address"), 2)
        # A probe for another address is answered: it is taken (by the overlay).
        self.assertIsNotNone(self.arp.answer(arp_request("10.128.0.9", sender="0.0.0.0")))

    def test_ignored_with_reasons(self) -> None:
        cases = {
            "outside-subnet": arp_request("192.168.0.1"),
            "not-a-host-address": arp_request("10.128.255.255"),
            "gratuitous": arp_request("10.128.0.5", sender="10.128.0.5"),
            "reply": arp_request("10.128.0.9", op=ARP_REPLY),
            "unknown-op": arp_request("10.128.0.9", op=9),
        }
        for reason, packet in cases.items():
            self.assertIsNone(self.arp.answer(packet), reason)
            self.assertEqual(self.counters.get("arp_ignored", reason=reason), 1, reason)

    def test_answer_frame(self) -> None:
        request = arp_request("10.128.0.1")
        frame = EthernetFrame(BROADCAST, HOST, ETH_P_ARP, build_arp(request))
        out = self.arp.answer_frame(frame, request)
        assert out is not None
        eth = parse_ethernet(out)
        self.assertEqual((eth.dst, eth.src, eth.ethertype), (HOST, ROUTER, ETH_P_ARP))
        self.assertEqual(parse_arp(eth.payload).sender_ip, GW)


class TapHelpersTests(SynchronousTestCase):
    def test_prerequisites(self) -> None:
        tmp = self.mktemp()
        os.makedirs(os.path.join(tmp, "net", "eth0"))
        os.makedirs(os.path.join(tmp, "net", "wow0"))
        open(os.path.join(tmp, "net", "wow0", "tun_flags"), "w").close()
        tun = os.path.join(tmp, "tun")
        open(tun, "w").close()
        kw: dict[str, Any] = {"tun_path": tun, "sys_class_net": os.path.join(tmp, "net")}
        e = self.assertRaises(TapError, check_tap_prerequisites, "wow0", euid=1000, **kw)
        self.assertIn("must run as root", str(e))
        e = self.assertRaises(TapError, check_tap_prerequisites, "wow0", euid=0,
                              tun_path=tun + "x", sys_class_net=kw["sys_class_net"])
        self.assertIn("does not exist", str(e))
        e = self.assertRaises(TapError, check_tap_prerequisites, "eth0", euid=0, **kw)
        self.assertIn("not a TAP", str(e))
        check_tap_prerequisites("wow0", euid=0, **kw)  # an existing TAP is fine
        check_tap_prerequisites("wow9", euid=0, **kw)

    def test_router_mac(self) -> None:
        mac = router_mac_for("wow0")
        self.assertEqual(len(mac), 6)
        self.assertEqual(mac[0], 0xFE)  # unicast, locally administered
        self.assertEqual(mac, router_mac_for("wow0"))
        self.assertNotEqual(mac, router_mac_for("wow1"))
        self.assertEqual(router_mac_for("wow0", "02:00:00:00:00:09"),
                         b"\x02" + b"\x00" * 4 + b"\x09")

    def test_host_mac_kept(self) -> None:
        path = self.mktemp()
        mac = load_host_mac(path)
        self.assertEqual(len(mac), 6)
        self.assertEqual(mac[0] & 3, 2)  # unicast, locally administered
        self.assertEqual(load_host_mac(path), mac)
        with open(path, "w") as f:
            f.write("garbage")
        self.assertNotEqual(load_host_mac(path), b"")

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ITapSyscalls, FakeTapSyscalls()))
        self.assertTrue(verifyObject(ITapSyscalls, PytunSyscalls()))
        self.assertTrue(verifyObject(ITapDevice, FakeTapDevice("t", 1500, HOST)))
        self.assertTrue(verifyObject(IPacketSink, UnroutedSink(Counters())))


class DropLogTests(SynchronousTestCase):
    def test_at_most_once_per_interval_per_reason(self) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import capturedLogs

        from wow.nic.dispatch import DropLog

        clock = Clock()
        drops = DropLog(clock, interval=10)
        with capturedLogs() as events:
            for _ in range(5):
                drops.dropped("ipv6")
            drops.dropped("bad-arp", "truncated")
            clock.advance(11)
            drops.dropped("ipv6")
        texts = [e["log_format"].format(**e) for e in events]
        self.assertEqual(texts, [
            "frame from the host dropped: ipv6",
            "frame from the host dropped: bad-arp (truncated)",
            "frame from the host dropped: ipv6 (+4 more since last logged)",
        ])


class TapPortTests(SynchronousTestCase):
    def test_drains_until_eagain_and_counts_write_errors(self) -> None:
        device = FakeTapDevice("t0", 1500, HOST)
        seen: list[bytes] = []
        counters = Counters()
        port = TapPort(device, seen.append, counters, MemoryReactorClock())
        for i in range(5):
            device.inject(bytes([i]) * 20)
        port.doRead()
        self.assertEqual(len(seen), 5)
        self.assertEqual(counters.get("tap_frames_read"), 5)
        port.doRead()  # nothing waiting: returns quietly
        device.write_error = OSError(errno.ENOBUFS, "No buffer space")
        port.write_frame(b"x" * 60)
        port.write_frame(b"y" * 60)
        self.assertEqual(device.written, [b"y" * 60])
        self.assertEqual(counters.get("frames_dropped", reason="tap-write-error"), 1)

    def test_read_error_stops_reading(self) -> None:
        device = FakeTapDevice("t0", 1500, HOST)
        reactor = MemoryReactorClock()
        counters = Counters()
        port = TapPort(device, lambda frame: None, counters, reactor)
        port.startReading()
        self.assertIn(port, reactor.getReaders())

        def broken(size: int) -> bytes:
            raise OSError(errno.EBADFD, "File descriptor in bad state")

        device.read = broken  # type: ignore[method-assign]
        port.doRead()
        self.assertNotIn(port, reactor.getReaders())
        self.assertEqual(counters.get("tap_errors", reason="read"), 1)

    def test_handler_error_does_not_stop_draining(self) -> None:
        device = FakeTapDevice("t0", 1500, HOST)
        counters = Counters()

        def boom(frame: bytes) -> None:
            raise RuntimeError("bug")

        port = TapPort(device, boom, counters, MemoryReactorClock())
        device.inject(b"a" * 20)
        device.inject(b"b" * 20)
        port.doRead()
        self.assertEqual(counters.get("frames_dropped", reason="handler-error"), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class NicServiceTests(SynchronousTestCase):
    """The whole NIC over a fake TAP: real codecs, real allocator, fake time."""

    def setUp(self) -> None:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        self.config = load_node_config(None, {"node": {"state_dir": state},
                                              "dhcp": {"lease_time": 120}})
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.counters = Counters()
        self.syscalls = FakeTapSyscalls()
        self.nic = self.start()

    def start(self) -> NicService:
        nic = NicService(self.config, self.reactor, self.counters, syscalls=self.syscalls)
        nic.preflight()
        nic.privilegedStartService()
        nic.startService()
        self.addCleanup(lambda: nic.running and nic.stopService())
        return nic

    @property
    def device(self) -> FakeTapDevice:
        return self.syscalls.devices[-1]

    def exchange(self, frame: bytes) -> list[bytes]:
        before = len(self.device.written)
        self.device.inject(frame)
        assert self.nic.port is not None
        self.nic.port.doRead()
        self.reactor.advance(0)  # the lease file's group commit
        return self.device.written[before:]

    def lease(self, mac: bytes) -> IPv4Address:
        (offer,) = self.exchange(loadgen.discover(mac, 1))
        eth, ip, msg = loadgen.parse_reply(offer)
        self.assertEqual(msg.message_type, DHCPOFFER)
        self.assertEqual((eth.src, eth.dst, ip.src, ip.dst), (self.nic.router_mac, mac, GW,
                                                               msg.yiaddr))
        (ack,) = self.exchange(loadgen.select(mac, 2, msg.yiaddr, GW))
        _, _, msg = loadgen.parse_reply(ack)
        self.assertEqual(msg.message_type, DHCPACK)
        return msg.yiaddr

    def test_device_opened_with_config(self) -> None:
        self.assertEqual((self.device.name, self.device.mtu), ("wow0", 1360))
        self.assertEqual(self.device.hwaddr, self.nic.host_mac)

    def test_dhcp_and_arp_over_frames(self) -> None:
        ip = self.lease(HOST)
        # The host's renewal is unicast to the router MAC and the gateway IP.
        (ack,) = self.exchange(loadgen.renew(HOST, 3, ip, GW, self.nic.router_mac))
        _, pkt, msg = loadgen.parse_reply(ack)
        self.assertEqual((msg.message_type, pkt.dst), (DHCPACK, ip))
        # ARP for another virtual address: the router MAC; for its own: silence.
        who = build_ethernet(EthernetFrame(BROADCAST, HOST, ETH_P_ARP, build_arp(
            ArpPacket(ARP_REQUEST, HOST, ip, b"\x00" * 6, IPv4Address("10.128.3.3")))))
        (reply,) = self.exchange(who)
        self.assertEqual(parse_arp(parse_ethernet(reply).payload).sender_mac,
                         self.nic.router_mac)
        probe = build_ethernet(EthernetFrame(BROADCAST, HOST, ETH_P_ARP, build_arp(
            ArpPacket(ARP_REQUEST, HOST, ZERO, b"\x00" * 6, ip))))
        self.assertEqual(self.exchange(probe), [])

    def test_leases_and_status_commands(self) -> None:
        ip = self.lease(HOST)
        leases = self.successResultOf(self.nic.leases({}))
        self.assertEqual(leases, [{"ip": str(ip), "mac": HOST.hex(":"), "hostname": "",
                                   "fqdn": "", "expires_in": 120.0}])
        json.dumps(leases)
        status = self.successResultOf(self.nic.status())
        self.assertEqual((status["tap"], status["mtu"], status["leases"]), ("wow0", 1360, 1))

    def test_same_address_after_restart(self) -> None:
        ip = self.lease(HOST)
        self.nic.stopService()
        self.assertTrue(self.syscalls.devices[0].closed)
        self.nic = self.start()
        # The restored lease keeps ARP silent for the host's address...
        self.assertTrue(self.nic.server is not None and self.nic.server.is_local(ip))
        # ...and a fresh DISCOVER from the same MAC gets the same address.
        self.assertEqual(self.lease(HOST), ip)

    def test_other_frames_dropped_with_reasons(self) -> None:
        ip = self.lease(HOST)
        icmp = build_ethernet(EthernetFrame(self.nic.router_mac, HOST, ETH_P_IP, build_ipv4(
            IPv4Packet(ip, IPv4Address("10.128.9.9"), PROTO_ICMP, b"\x08\x00" + b"\x00" * 6))))
        frames = {
            "not-routed-yet": icmp,
            "ipv6": build_ethernet(EthernetFrame(b"\x33\x33\x00\x00\x00\x02"[:6], HOST, 0x86DD,
                                                 b"x" * 40)),
            "not-for-router": build_ethernet(EthernetFrame(b"\x02" * 6, HOST, ETH_P_IP, b"")),
            "bad-ethernet": b"\x01\x02",
            "bad-ipv4": build_ethernet(EthernetFrame(BROADCAST, HOST, ETH_P_IP, b"\x45" * 10)),
            "bad-arp": build_ethernet(EthernetFrame(BROADCAST, HOST, ETH_P_ARP, b"\x00" * 5)),
            "unsupported-ethertype": build_ethernet(EthernetFrame(BROADCAST, HOST, 0x88B5, b"")),
        }
        for reason, frame in frames.items():
            self.assertEqual(self.exchange(frame), [], reason)
            expected = 1 if reason != "ipv6" else 0
            if reason == "ipv6":
                # 33:33:... is multicast: dropped before the EtherType is looked at.
                self.assertEqual(self.counters.get("frames_dropped", reason="multicast"), 1)
            self.assertEqual(self.counters.get("frames_dropped", reason=reason), expected,
                             reason)
        # A DHCP payload that is not DHCP: counted, no reply, still serving.
        bad = loadgen.client_frame(loadgen.request_message(1, HOST, 9))
        bad = bad[:-250]  # cut the UDP payload short: UDP length no longer matches
        self.assertEqual(self.exchange(bad), [])
        self.assertGreaterEqual(self.counters.get("malformed"), 1)
        self.assertEqual(self.lease(HOST), ip)

    def test_router_seam(self) -> None:
        """Other IPv4 goes to the sink as raw bytes; the router writes back via the NIC."""
        ip = self.lease(HOST)
        got: list[tuple[bytes, IPv4Packet]] = []

        class Sink:
            def packet_from_host(self, raw: bytes, packet: IPv4Packet) -> None:
                got.append((raw, packet))

        assert self.nic.dispatcher is not None
        self.nic.dispatcher.sink = Sink()
        self.assertTrue(verifyObject(IPacketSink, implementer(IPacketSink)(Sink)()))
        packet = build_ipv4(IPv4Packet(ip, IPv4Address("10.128.9.9"), PROTO_ICMP, b"\x08" * 8))
        frame = build_ethernet(EthernetFrame(self.nic.router_mac, HOST, ETH_P_IP, packet),
                               pad=True)
        self.assertEqual(self.exchange(frame), [])
        ((raw, parsed),) = got
        self.assertEqual(raw, packet)  # Ethernet padding removed
        self.assertEqual(parsed.dst, IPv4Address("10.128.9.9"))
        self.assertEqual(self.nic.mac_of(ip.packed), HOST)
        self.assertIsNone(self.nic.mac_of(IPv4Address("10.128.9.9").packed))
        self.nic.write_to_host(HOST, packet)
        eth = parse_ethernet(self.device.written[-1])
        self.assertEqual((eth.dst, eth.src, eth.ethertype, eth.payload),
                         (HOST, self.nic.router_mac, ETH_P_IP, packet))

    @given(st.binary(max_size=600))
    def test_arbitrary_frames_never_raise(self, data: bytes) -> None:
        self.nic.dispatcher.frame_received(data)  # type: ignore[union-attr]

    @given(st.binary(max_size=400))
    def test_arbitrary_dhcp_payloads_never_raise(self, data: bytes) -> None:
        from wow.net.udp import UDPDatagram, build_udp

        udp = build_udp(UDPDatagram(68, 67, data), ZERO, loadgen.LIMITED_BROADCAST)
        ip = build_ipv4(IPv4Packet(ZERO, loadgen.LIMITED_BROADCAST, 17, udp))
        self.nic.dispatcher.frame_received(  # type: ignore[union-attr]
            build_ethernet(EthernetFrame(BROADCAST, HOST, ETH_P_IP, ip)))

    def test_open_failure_is_one_sentence(self) -> None:
        nic = NicService(self.config, self.reactor, self.counters,
                         syscalls=FakeTapSyscalls(fail="the TAP device wow0 is in use"))
        r, w = os.pipe()
        saved = os.dup(2)
        os.dup2(w, 2)
        try:
            e = self.assertRaises(SystemExit, nic.preflight)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(w)
        self.assertEqual(e.code, 1)
        self.assertEqual(os.read(r, 1000), b"wow-node: the TAP device wow0 is in use.\n")
        os.close(r)
