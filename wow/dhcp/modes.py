"""
The NIC service for each C{dhcp.mode}, and the pieces the node wires in.

- C{"local"}: L{NicService} with its L{LocalAllocator}.
- C{"dht"}: L{DhtNicService}, a L{NicService} with a L{DhtAllocator} over the
  overlay's DHT (L{build_dht_allocator}) that re-asserts claims on start and
  releases them on shutdown.  Needs an L{IDhtClient}.
- C{"relay"}: L{RelayNicService}, whose L{RelayAgent} relays the host's DHCP
  messages to the central server: over plain UDP (L{UdpRelayTransport}) or
  over the overlay (the caller passes the two send functions).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from wow.dhcp.dht_allocator import DhtAllocator
from wow.dhcp.dhtclient import IDhtClient
from wow.dhcp.relay import IRelayTransport, RelayAgent, RelaySettings
from wow.dhcp.server import DhcpReply, DhcpServer, ServerSettings
from wow.metrics import Counters
from wow.net.arp import ARP_REQUEST, ArpPacket, build_arp, parse_arp
from wow.net.errors import CodecError
from wow.net.ethernet import BROADCAST, ETH_P_ARP, ETH_P_IP, EthernetFrame, build_ethernet
from wow.net.ipv4 import PROTO_UDP, IPv4Packet, build_ipv4
from wow.net.udp import UDPDatagram, build_udp
from wow.nic.service import NicService
from wow.node.config import NodeConfig
from wow.util.fatal import fatal

DHT_LEASE_FILE = "dht-leases.json"
RELAY_LEASE_FILE = "relayed-leases.json"
DHCP_SERVER_PORT = 67
#: Over the overlay, the node asks its host this often whether it is the server.
SERVER_PROBE_EVERY = 30.0
#: ...and this often until its answer is published.
SERVER_PROBE_FAST = 2.0


def build_dht_allocator(config: NodeConfig, dht: IDhtClient, reactor: Any,
                        counters: Counters) -> DhtAllocator:
    """The C{"dht"} mode's allocator, from the node's configuration."""
    net, dhcp = config.network, config.dhcp
    return DhtAllocator(
        os.path.join(config.node.state_dir, DHT_LEASE_FILE), net.network, net.gateway_address,
        dht, reactor, counters,
        pool_start=IPv4Address(dhcp.pool_start) if dhcp.pool_start else None,
        pool_end=IPv4Address(dhcp.pool_end) if dhcp.pool_end else None,
    )


class DhtNicService(NicService):
    """
    The NIC in C{"dht"} mode: its L{DhtAllocator} re-asserts the bound
    leases' claims on start and deletes every claim on a clean stop (waiting
    at most L{SHUTDOWN_WAIT} seconds).  Add it to the node after the overlay,
    so it stops first, while the DHT still answers.
    """

    allocator: DhtAllocator

    def startService(self) -> None:
        super().startService()
        self.allocator.start()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        super().stopService()
        return self.allocator.shutdown()


@implementer(IRelayTransport)
class UdpRelayTransport(DatagramProtocol):
    """
    Relay over the underlay: relayed requests to the server's UDP port 67
    from our port 67, where the server answers (RFC 2131 §4.1: to giaddr:67).
    C{giaddr} is our address on the path to the server.
    """

    log = Logger()

    def __init__(self, server: IPv4Address, counters: Counters) -> None:
        self.server = server
        self.counters = counters
        self.on_reply: Callable[[bytes], None] = lambda payload: None

    def local_address(self) -> IPv4Address:
        """Our source address toward the server (what the kernel would pick)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((str(self.server), DHCP_SERVER_PORT))
            return IPv4Address(s.getsockname()[0])

    def attach(self, agent: RelayAgent) -> None:
        self.on_reply = agent.from_server

    def send_to_node(self, address: bytes, payload: bytes) -> None:
        self.counters.inc("dhcp_relay_dropped", reason="no-overlay")

    def send_to_server(self, payload: bytes) -> None:
        if self.transport is None:
            self.counters.inc("dhcp_relay_dropped", reason="transport-down")
            return
        self.transport.write(payload, (str(self.server), DHCP_SERVER_PORT))

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != str(self.server):
            self.counters.inc("dhcp_relay_dropped", reason="not-from-server")
            return
        try:
            self.on_reply(data)
        except Exception:
            self.log.failure("relaying a reply from {addr} failed", addr=addr)


class RelayNicService(NicService):
    """
    The NIC in C{"relay"} mode: the L{RelayAgent} takes the DHCP server's
    place on the TAP.  With C{relay_transport = "udp"} it owns a
    L{UdpRelayTransport}; over the overlay the caller passes the
    L{IRelayTransport} (L{wow.dhcp.relay_overlay.OverlayRelayTransport}).
    """

    def __init__(self, config: NodeConfig, reactor: Any, counters: Counters,
                 me: bytes = b"\x00" * 20, dht: IDhtClient | None = None,
                 transport: IRelayTransport | None = None, **kw: Any) -> None:
        super().__init__(config, reactor, counters, **kw)
        self.me = me
        self.dht = dht
        self.transport = transport
        self.udp: UdpRelayTransport | None = None
        self.udp_port: Any = None
        self.agent: RelayAgent | None = None
        #: Over the overlay: the server's virtual IP, watched for on the TAP.
        self.server_ip: IPv4Address | None = None
        self._probe: Any = None

    def privilegedStartService(self) -> None:
        dhcp = self.config.dhcp
        if dhcp.relay_transport == "udp":
            from twisted.internet.error import CannotListenError

            self.udp = UdpRelayTransport(IPv4Address(dhcp.server), self.counters)
            self.transport = self.udp
            try:
                self.giaddr = self.udp.local_address()
                self.udp_port = self.reactor.listenUDP(DHCP_SERVER_PORT, self.udp)
            except OSError as e:
                fatal("wow-node", f"cannot reach the DHCP server {dhcp.server}: {e.strerror}", 1)
            except CannotListenError as e:
                fatal("wow-node", f"cannot listen on UDP port {DHCP_SERVER_PORT} to relay "
                      f"DHCP: {e.socketError}", 1)
        elif self.transport is None:
            fatal("wow-node", 'dhcp.relay_transport "overlay" needs the overlay, which this '
                  'wow-node does not run yet; use relay_transport = "udp"', 1)
        else:
            self.giaddr = self.config.network.gateway_address
        super().privilegedStartService()

    def startService(self) -> None:
        net = self.config.network
        transport = self.transport
        assert transport is not None
        me = self.dht.address if self.dht is not None else self.me
        self.agent = RelayAgent(
            RelaySettings(net.gateway_address, net.network, me, self.giaddr),
            os.path.join(self.config.node.state_dir, RELAY_LEASE_FILE), self.dht, self.reactor,
            self.counters, transport.send_to_server, self._deliver, transport.send_to_node,
            self._to_local_server)
        transport.attach(self.agent)
        # The control command and the restore read leases from here.
        self.allocator = self.agent  # type: ignore[assignment]
        super().startService()
        self.agent.start()
        if self.udp is None:
            self.server_ip = IPv4Address(self.config.dhcp.server)
            self._probe_server()
        self.log.info("relaying DHCP to {server} over {transport} (giaddr {giaddr})",
                      server=self.config.dhcp.server, transport=self.config.dhcp.relay_transport,
                      giaddr=self.giaddr)

    def _dhcp_front(self, settings: ServerSettings) -> DhcpServer:
        assert self.agent is not None
        return self.agent  # type: ignore[return-value]

    # -- is the DHCP server's host on this TAP? -----------------------------

    def _host_frame(self, frame: bytes) -> None:
        """Watch ARP from the host: the DHCP server's address seen here is ours."""
        if self.server_ip is not None and frame[12:14] == b"\x08\x06":
            try:
                arp = parse_arp(frame[14:])
            except CodecError:
                pass  # the dispatcher counts it
            else:
                if arp.sender_ip == self.server_ip and self.agent is not None:
                    if not self.agent.is_local(arp.sender_ip):
                        self.log.info("the DHCP server {ip} is on this TAP ({mac})",
                                      ip=arp.sender_ip, mac=arp.sender_mac.hex(":"))
                    self.agent.host_address_seen(arp.sender_ip, arp.sender_mac,
                                                 SERVER_PROBE_EVERY * 3)
        super()._host_frame(frame)

    def _probe_server(self) -> None:
        """Ask the host (ARP who-has) whether it is the DHCP server; again later."""
        self._probe = None
        if self.port is None or self.server_ip is None:
            return
        request = ArpPacket(ARP_REQUEST, self.router_mac, self.config.network.gateway_address,
                            b"\x00" * 6, self.server_ip)
        self.port.write_frame(build_ethernet(EthernetFrame(BROADCAST, self.router_mac,
                                                           ETH_P_ARP, build_arp(request))))
        found = self.agent is not None and self.agent.published(self.server_ip)
        self._probe = self.reactor.callLater(SERVER_PROBE_EVERY if found else SERVER_PROBE_FAST,
                                             self._probe_server)

    def _deliver(self, reply: DhcpReply) -> None:
        if self.dispatcher is not None:
            self.dispatcher._send_reply(reply)

    def _to_local_server(self, payload: bytes) -> None:
        """On the server's node: a relayed request, onto the TAP to the server."""
        if self.port is None or self.agent is None:
            return
        gw, server = self.config.network.gateway_address, IPv4Address(self.config.dhcp.server)
        mac = self.agent.mac_of(server) or self.host_mac
        if mac is None:
            return
        udp = build_udp(UDPDatagram(DHCP_SERVER_PORT, DHCP_SERVER_PORT, payload), gw, server)
        ip = build_ipv4(IPv4Packet(src=gw, dst=server, proto=PROTO_UDP, payload=udp, ttl=64))
        self.port.write_frame(build_ethernet(EthernetFrame(mac, self.router_mac, ETH_P_IP, ip)))

    def stopService(self) -> Any:
        super().stopService()
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        if self.udp_port is not None:
            port, self.udp_port = self.udp_port, None
            return port.stopListening()
        return None


def nic_service_for(config: NodeConfig, reactor: Any, counters: Counters,
                    dht: IDhtClient | None = None, overlay: Any = None, **kw: Any
                    ) -> NicService:
    """
    The NIC service of C{config.dhcp.mode}; the node passes its DHT client
    and overlay service when it runs the overlay, and C{kw} goes to the
    service (C{syscalls}, C{sink}, C{transport}).
    """
    mode = config.dhcp.mode
    if mode == "relay":
        if overlay is not None and dht is not None and config.dhcp.relay_transport == "overlay" \
                and "transport" not in kw:
            from wow.dhcp.relay_overlay import OverlayRelayTransport

            kw["transport"] = OverlayRelayTransport(
                overlay, dht, config.network.network, IPv4Address(config.dhcp.server), reactor,
                counters)
        return RelayNicService(config, reactor, counters, dht=dht, **kw)
    if mode == "dht":
        if dht is None:
            fatal("wow-node", 'dhcp.mode "dht" needs the overlay\'s DHT, which this wow-node '
                  'does not run yet; use mode = "local" or "relay"', 2)
        return DhtNicService(config, reactor, counters,
                             allocator=build_dht_allocator(config, dht, reactor, counters), **kw)
    return NicService(config, reactor, counters, **kw)
