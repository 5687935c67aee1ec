"""
The virtual NIC as a child service of C{wow-node}.

Opens the TAP in C{privilegedStartService} (failures end with one sentence),
then wires the sans-I/O parts together: frames from L{TapPort} go to the
L{FrameDispatcher}, which answers ARP (L{ArpResponder}) and DHCP
(L{DhcpServer} over an L{IAllocator}) and hands other IPv4 packets to an
L{IPacketSink}.  Also answers the C{leases} control command and contributes
the C{nic} section of C{status}.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from wow.dhcp.allocator import IAllocator, Lease, LocalAllocator
from wow.dhcp.server import DhcpServer, ServerSettings
from wow.metrics import Counters
from wow.net.ethernet import ETH_P_IP, EthernetFrame, build_ethernet
from wow.nic.arp import ArpResponder
from wow.nic.dispatch import DropLog, FrameDispatcher, IPacketSink, UnroutedSink
from wow.nic.offload import OffloadSyscalls, for_router, plain_frame
from wow.nic.tap import (
    ITapDevice,
    ITapSyscalls,
    PytunSyscalls,
    TapError,
    TapPort,
    load_host_mac,
    router_mac_for,
)
from wow.node.config import NodeConfig
from wow.router.messages import from_tap
from wow.util.fatal import fatal

PROGRAM = "wow-node"
LEASE_FILE = "leases.json"
HOST_MAC_FILE = "tap-mac"


class NicService(Service):
    """The TAP device and everything that answers the host on it."""

    name = "nic"
    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any, counters: Counters,
                 syscalls: ITapSyscalls | None = None, sink: IPacketSink | None = None,
                 allocator: IAllocator | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.counters = counters
        if syscalls is None:
            syscalls = (OffloadSyscalls(counters) if getattr(config.tap, "offload", False)
                        else PytunSyscalls())
        self.syscalls: ITapSyscalls = syscalls
        #: Set by the IP router: IPv4 frames from an offloading TAP go straight
        #: to it as messages (L{wow.router.messages}), their vnet header kept.
        self.fast_route: Any = None
        self.sink: IPacketSink = sink or UnroutedSink(counters, DropLog(reactor))
        self.allocator = allocator
        self.router_mac = router_mac_for(config.tap.name, config.tap.router_mac)
        self.host_mac: bytes | None = None
        self.device: ITapDevice | None = None
        self.port: TapPort | None = None
        self.server: DhcpServer | None = None
        self.dispatcher: FrameDispatcher | None = None
        #: Told of lease events by the DHCP server (see DhcpServer.lease_observers).
        self.lease_observers: list[Any] = []

    # -- start-up ---------------------------------------------------------

    def preflight(self) -> None:
        """Known start-up failures, checked before the node creates anything."""
        try:
            self.syscalls.preflight(self.config.tap.name)
        except TapError as e:
            fatal(PROGRAM, str(e), 1)

    def privilegedStartService(self) -> None:
        tap = self.config.tap
        try:
            self.host_mac = load_host_mac(os.path.join(self.config.node.state_dir,
                                                       HOST_MAC_FILE))
            self.device = self.syscalls.open_tap(tap.name, tap.mtu, self.host_mac)
        except TapError as e:
            fatal(PROGRAM, str(e), 1)
        except OSError as e:
            fatal(PROGRAM, f"cannot prepare the TAP device {tap.name}: {e.strerror}", 1)
        super().privilegedStartService()

    def _settings(self) -> ServerSettings:
        net = self.config.network
        dns = tuple(IPv4Address(s) for s in self.config.dhcp.dns_servers)
        return ServerSettings(
            server_ip=net.gateway_address, network=net.network,
            lease_time=self.config.dhcp.lease_time, dns_servers=dns or (net.gateway_address,),
            domain=net.domain.strip("."), mtu=self.config.tap.mtu,
        )

    def _local_allocator(self) -> LocalAllocator:
        net, dhcp = self.config.network, self.config.dhcp
        return LocalAllocator(
            os.path.join(self.config.node.state_dir, LEASE_FILE), net.network,
            net.gateway_address, self.reactor, self.counters,
            pool_start=IPv4Address(dhcp.pool_start) if dhcp.pool_start else None,
            pool_end=IPv4Address(dhcp.pool_end) if dhcp.pool_end else None,
            group_commit=True,
        )

    def startService(self) -> None:
        super().startService()
        assert self.device is not None, "privilegedStartService opens the TAP first"
        if self.allocator is None:
            self.allocator = self._local_allocator()
        settings = self._settings()
        self.server = self._dhcp_front(settings)
        self.server.lease_observers = self.lease_observers
        maybeDeferred(self.allocator.leases).addCallback(self.server.restore).addErrback(
            lambda f: self.log.failure("restoring leases failed", f))
        arp = ArpResponder(self.router_mac, settings.network, settings.server_ip,
                           self.server.is_local, self.counters)
        self.port = TapPort(self.device, self._frame_received, self.counters, self.reactor)
        self.dispatcher = FrameDispatcher(self.router_mac, settings.server_ip, arp, self.server,
                                          self.sink, self.port.write_frame, self.counters,
                                          self.reactor)
        self.port.startReading()
        self.log.info(
            "wow-node ready: tap {tap} mtu {mtu} subnet {subnet} gateway {gw} "
            "router-mac {rmac} host-mac {hmac}",
            tap=self.device.name, mtu=self.config.tap.mtu, subnet=settings.network,
            gw=settings.server_ip, rmac=self.router_mac.hex(":"),
            hmac=(self.host_mac or b"").hex(":"),
        )

    def _dhcp_front(self, settings: ServerSettings) -> DhcpServer:
        """What answers DHCP on the TAP (the relay mode puts its agent here)."""
        assert self.allocator is not None
        return DhcpServer(settings, self.allocator, self.reactor, self.counters)

    @property
    def vnet_hdr_len(self) -> int:
        return int(getattr(self.device, "vnet_hdr_len", 0))

    def _frame_received(self, frame: bytes) -> None:
        """
        One buffer read from the TAP (with its vnet header on an offloading
        TAP): IPv4 for the router goes to it as a message, whatever the TAP
        (L{wow.router.messages}: a plain TAP's packets are bare messages);
        every other frame, bare, to the dispatcher.
        """
        assert self.dispatcher is not None
        vlen = self.vnet_hdr_len
        if self.fast_route is not None and for_router(
                frame, vlen, self.config.network.gateway_address.packed, self.router_mac):
            self.fast_route(from_tap(frame, vlen))
            return
        if vlen:
            try:
                plain = plain_frame(frame, vlen)
            except ValueError:
                self.counters.inc("frames_dropped", reason="bad-vnet-header")
                return
            if plain is None:
                self.counters.inc("frames_dropped", reason="superframe-not-routed")
                return
            frame = plain
        self._host_frame(frame)

    def _host_frame(self, frame: bytes) -> None:
        """A bare Ethernet frame from the host (no vnet header) for the dispatcher."""
        assert self.dispatcher is not None
        self.dispatcher.frame_received(frame)

    def stopService(self) -> None:
        super().stopService()
        if self.port is not None:
            self.port.close()
            self.port = None
            self.device = None

    # -- the router's side of the seam -------------------------------------

    def mac_of(self, ip: bytes) -> bytes | None:
        """The MAC of the local client leased C{ip} (4 bytes), if any."""
        if self.server is None or len(ip) != 4:
            return None
        return self.server.mac_of(IPv4Address(ip))

    def host_ip(self) -> str | None:
        """The virtual IP the host's own DHCP client holds on this TAP, if any."""
        if self.server is None or self.host_mac is None:
            return None
        ip = self.server.ip_of(self.host_mac)
        return str(ip) if ip is not None else None

    def write_to_host(self, dst_mac: bytes, packet: bytes) -> None:
        """Deliver one IPv4 packet to a client on the TAP, from the router MAC."""
        if self.port is None:
            self.counters.inc("frames_dropped", reason="tap-down")
            return
        self.port.write_frame(build_ethernet(
            EthernetFrame(dst_mac, self.router_mac, ETH_P_IP, packet)))

    def write_message(self, dst_mac: bytes, message: bytes) -> None:
        """
        Deliver one router message (L{wow.router.messages}: a packet, or a
        super-frame behind its vnet header) to a client on the TAP: whole
        when the TAP takes vnet headers, software-segmented when it does not.
        """
        from wow.router.messages import MessageError, is_plain, tap_writes

        port = self.port
        if port is None:
            self.counters.inc("frames_dropped", reason="tap-down")
            return
        vlen = self.vnet_hdr_len
        if not vlen and is_plain(message):
            self.write_to_host(dst_mac, message)
            return
        eth = dst_mac + self.router_mac + b"\x08\x00"
        try:
            bufs = tap_writes(message, eth, bool(vlen))
        except MessageError as e:
            self.counters.inc("frames_dropped", reason=e.reason)
            return
        if not vlen:
            self.counters.inc("tap_software_segmented", len(bufs))
            for frame in bufs:
                port.write_frame(frame)
            return
        try:
            port.device.write_raw(bufs)  # type: ignore[attr-defined]
        except OSError as e:
            self.counters.inc("frames_dropped", reason="tap-write-error")
            self.log.warn("writing to the TAP failed: {error}", error=e)
            return
        self.counters.inc("tap_frames_written")
        if len(message) > 1500:
            self.counters.inc("tap_superframes_written")

    # -- control ----------------------------------------------------------

    def leases(self, args: dict[str, Any] | None = None) -> Deferred[list[dict[str, Any]]]:
        """The C{leases} command: what the CLI's C{wow leases} prints."""
        assert self.allocator is not None

        def show(leases: list[Lease]) -> list[dict[str, Any]]:
            now = self.reactor.seconds()
            return [
                {"ip": str(lease.ip), "mac": lease.mac.hex(":"), "hostname": lease.hostname,
                 "fqdn": lease.fqdn, "expires_in": max(0.0, round(lease.expires - now, 1))}
                for lease in leases
            ]

        return maybeDeferred(self.allocator.leases).addCallback(show)

    def status(self) -> Deferred[dict[str, Any]]:
        """The C{nic} section of C{status}."""

        def section(leases: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "tap": self.config.tap.name,
                "mtu": self.config.tap.mtu,
                "up": self.port is not None,
                "router_mac": self.router_mac.hex(":"),
                "gateway": self.config.network.gateway,
                "subnet": self.config.network.subnet,
                "leases": len(leases),
            }

        return self.leases().addCallback(section)
