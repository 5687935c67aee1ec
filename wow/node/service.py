"""
The C{wow-node} service tree.

L{build_node_service} composes the node's parts into one MultiService; each
part is its own child service so it starts, stops and is tested on its own.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from wow.control.server import ControlService
from wow.dhcp.dhtclient import OverlayDhtClient
from wow.dhcp.modes import nic_service_for
from wow.metrics import Counters
from wow.nic.service import NicService
from wow.node.config import NodeConfig
from wow.node.sink import DnsLeaseObserver, NodeSink
from wow.node.status import StatusBoard
from wow.util.durable import ensure_private_directory
from wow.util.fatal import fatal


class _OnStart(Service):
    """Calls C{hook} when started: lets a later sibling use what earlier ones set up."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.hook()


class NodeService(MultiService):
    """The root of one node's service tree."""

    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: Shared by every part of this node; exported by the metrics service.
        self.counters = Counters()
        self.control = ControlService(reactor, config.control_socket)
        self.control.setServiceParent(self)
        self.status = StatusBoard(reactor, self.counters)
        self.control.register("counters", self.status.counters_snapshot)
        # The overlay: one UDP port, the ring and the DHT (docs/architecture.md).
        from wow.overlay.service import OverlayService

        self.overlay = OverlayService(config, reactor, self.counters)
        self.overlay.setServiceParent(self)
        self.overlay.register_control(self.control)
        # One status command for every part (the overlay's own registration
        # of "status" is folded into the board).
        self.status.contribute("overlay", lambda: self.overlay.control_status({}))
        self.control.register("status", self.status.status)
        self.dns = None
        self.nic: NicService | None = None
        self.enroller = None
        self.security = None
        if config.tap.enabled:  # false: an overlay-only node
            if config.dns.enabled:
                from wow.dns.service import NodeDns

                # Names follow leases: in the overlay's DHT when leases are
                # (any node can answer), in this node's memory otherwise.
                kv = None
                if config.dhcp.mode != "local":
                    from wow.dns.dht import DhtAtomicStore

                    kv = DhtAtomicStore(OverlayDhtClient(lambda: self.overlay.dht))
                self.dns = NodeDns(config.network, config.dns, reactor, self.counters, kv=kv,
                                   host_name=config.node.name)
                self.dns.setServiceParent(self)
            self.sink = NodeSink(config.network.gateway_address, self.counters,
                                 self._mac_of, self._write_to_host, dns=self.dns)
            # After the overlay, so the NIC stops first (DHT claims released
            # while the DHT still answers).
            self.nic = nic_service_for(config, reactor, self.counters,
                                       dht=OverlayDhtClient(lambda: self.overlay.dht),
                                       overlay=self.overlay, sink=self.sink)
            self.nic.setServiceParent(self)
            if self.dns is not None:
                self.nic.lease_observers.append(DnsLeaseObserver(self.dns))
            # IP over the overlay: packets for other virtual IPs.
            from wow.router.service import RouterService

            self.router = RouterService(config.network.network, self.overlay,
                                        OverlayDhtClient(lambda: self.overlay.dht), self.nic,
                                        reactor, self.counters)
            self.router.setServiceParent(self)
            self.sink.route = self.router.route
            if config.security.enabled:
                self._add_security(config, reactor)
            # The data plane moves packets in clear only: with security on,
            # every sealed packet would cross from its thread to the reactor
            # and back (GIL hand-offs: a third of the secured throughput).
            if config.tap.dataplane and not config.security.enabled:
                # Last child of the three: it stops first, before the TAP closes.
                from wow.node.dataplane import DataPlane

                self.dataplane = DataPlane(self.nic, self.overlay, self.router, reactor,
                                           self.counters)
                self.dataplane.setServiceParent(self)
            self.control.register("leases", self.nic.leases)
            self.status.contribute("nic", self.nic.status)
            if config.ca.url:
                from wow.ca.client import node_enroller

                self.enroller = node_enroller(config, reactor, self.nic.host_ip)
                if self.enroller is not None:
                    self.enroller.counters = self.counters
                    if config.security.enabled:
                        _OnStart(self._certify_overlay_address).setServiceParent(self)
                    self.enroller.setServiceParent(self)
        # wow ping: overlay echo to an address, a virtual IP or a name.
        from wow.node.ping import PingCommand
        from wow.overlay.echo import Echo

        self.echo = Echo(self.overlay, reactor, self.counters)
        self.control.register("ping", PingCommand(
            self.echo, config.network, OverlayDhtClient(lambda: self.overlay.dht), self.dns))
        if config.metrics.listen:
            from wow.prometheus import metrics_service

            metrics_service(reactor, self.counters, "wow_node", config.metrics.listen
                            ).setServiceParent(self)
        if config.web.listen:
            from wow.web.api import web_service

            web_service(reactor, self.control.factory.handlers, config.web.listen
                        ).setServiceParent(self)

    def _certify_overlay_address(self) -> None:
        """
        Enrol with the overlay address as a URI SAN (known once the overlay
        runs), so a copied certificate and key fail on any other node.
        """
        from dataclasses import replace

        from wow.security.verify import overlay_uri

        enroller, address = self.enroller, self.overlay.address
        if enroller is not None and address is not None and enroller.settings.overlay is None:
            enroller.settings = replace(enroller.settings, overlay=overlay_uri(address))

    def _add_security(self, config: NodeConfig, reactor: Any) -> None:
        """End-to-end DTLS between the router and the overlay (wow/security/gate.py)."""
        from wow.security.gate import SecureGate
        from wow.security.service import SecurityService

        router = self.router

        def transmit(peer: bytes, datagram: bytes) -> None:
            router.send_data(int.from_bytes(peer, "big"), datagram)

        self.security = security = SecurityService(
            config, reactor, self.counters, b"", transmit,
            address_of=lambda: self.overlay.address, size_of=self._overlay_size)
        security.setServiceParent(self)  # after the router: stops first, closes sessions
        router.gate = SecureGate(security, security.policy, router.send_data, self.counters)
        # CRLs pushed along the overlay's links (wow/security/crlflood.py).
        from wow.security.crlflood import CrlFlood

        self.crl_flood = CrlFlood(self.overlay, security.offer_crl, reactor, self.counters,
                                  security.current_crl)
        security.crl_listeners.append(self.crl_flood.adopted)
        self.crl_flood.setServiceParent(self)
        security.register(self.control, self.status)
        self.control.register("peers", self._peers)

    def _overlay_size(self) -> int:
        node = self.overlay.node
        return node.table.estimate_size() if node is not None else 1

    def _peers(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """C{wow peers}: the overlay's links, each with its secured session (if any)."""
        peers = self.overlay.control_peers(args)
        if self.security is None:
            return peers
        sessions = {"wow:" + str(s["peer"]): s for s in self.security.peers()}
        for p in peers:
            s = sessions.pop(p["address"], None)
            p["secured"] = bool(s and s["secured"])
            p["cipher"] = s["cipher"] if s else None
            p["serial"] = s["serial"] if s else None
            p["peer_ip"] = s["peer_ip"] if s else None
        for address, s in sorted(sessions.items()):  # sessions over routed paths
            peers.append({"address": address, "endpoint": "-", "kind": "routed",
                          "rtt_ms": None, "age_s": None, "path": "routed",
                          "secured": s["secured"], "cipher": s["cipher"],
                          "serial": s["serial"], "peer_ip": s["peer_ip"]})
        return peers

    def _mac_of(self, ip: bytes) -> bytes | None:
        return self.nic.mac_of(ip) if self.nic is not None else None

    def _write_to_host(self, mac: bytes, packet: bytes) -> None:
        if self.nic is not None:
            self.nic.write_to_host(mac, packet)

    def privilegedStartService(self) -> None:
        # Children's known start-up failures (not root, no /dev/net/tun, ...)
        # end in one sentence before anything is created.
        for child in self:
            preflight = getattr(child, "preflight", None)
            if preflight is not None:
                preflight()
        try:
            ensure_private_directory(self.config.node.state_dir)
        except OSError as e:
            fatal("wow-node", f"cannot create the state directory "
                  f"{self.config.node.state_dir}: {e.strerror}", 1)
        super().privilegedStartService()


def build_node_service(config: NodeConfig, reactor: Any) -> NodeService:
    return NodeService(config, reactor)
