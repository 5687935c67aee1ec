"""
Building the DNS from configuration: the central C{wow-dns} service tree
and the resolver a node embeds.

Both use the same pieces: a L{CompactStore} (or any L{INameStore}), a
L{ZoneAuthority} over it, and a L{DnsEngine} whose C{answer(query,
client_ip)} is the one sans-I/O entry point.  The central server wraps the
engine in UDP and TCP listeners; the node hands it the DNS queries that
arrive on its TAP for the virtual gateway (L{NodeDns.answer}).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wow.dns.authority import StaticRecord, ZoneAuthority
from wow.dns.claims import DhtNameStore, IAtomicCreate, MemoryAtomicStore, NameClaims
from wow.dns.config import DnsConfig, ZoneSection, parse_static
from wow.dns.engine import Answer, DnsEngine, Sources, TwistedUpstream
from wow.dns.names import absolute, derived_wire, pack_ip, to_wire, valid_hostname
from wow.dns.server import DnsListenService
from wow.dns.store import CompactStore, INameStore
from wow.metrics import Counters
from wow.net.errors import CodecError
from wow.net.ipv4 import PROTO_UDP, IPv4Packet, build_ipv4
from wow.net.udp import UDPDatagram, build_udp, parse_udp
from wow.util.config import ConfigError


def build_engine(domain: str, subnet: str, zone: ZoneSection, reactor: Any,
                 counters: Counters, store: INameStore | None = None,
                 nameservers: tuple[tuple[str, str | None], ...] = (("ns", None),),
                 static: list[StaticRecord] | None = None) -> DnsEngine:
    """The engine for one virtual domain, wired from a validated zone section."""
    net = ipaddress.IPv4Network(subnet)
    if store is None:
        store = CompactStore(to_wire(domain), net, zone.ttl, zone.derived_names)
    if static is None:
        static = [parse_static(line, domain, zone.ttl) for line in zone.records]
    authority = ZoneAuthority(domain, net, store, reactor, zone.soa(), nameservers, static)
    servers = zone.upstream_servers()
    upstream = TwistedUpstream(servers, reactor) if servers else None
    return DnsEngine(authority, reactor, counters, Sources(zone.sources(subnet)), upstream,
                     zone.max_udp_size)


class NamesFileService(Service):
    """
    Loads the names file when the daemon starts, and again on SIGHUP.

    A reload builds a complete new store beside the old one and swaps it in
    between two queries, so no query ever sees a half-loaded zone; if the
    file cannot be read, the old names stay and the failure is logged.
    """

    log = Logger()

    def __init__(self, store: CompactStore, path: str, reactor: Any = None) -> None:
        self.store = store
        self.path = path
        self.reactor = reactor
        self.loaded = 0
        self.engine: DnsEngine | None = None
        self._previous_handler: Any = None

    def load(self, store: CompactStore | None = None) -> None:
        store = store if store is not None else self.store
        started = time.monotonic()
        try:
            with open(self.path, "rb") as f:
                loaded, rejected = store.load_hosts(f, self.path)
        except OSError as e:
            raise ConfigError(f"dns.names_file {self.path} cannot be read: {e.strerror}"
                              ) from None
        self.loaded = loaded
        self.log.info("loaded {n} names from {path} in {s:.2f} s ({bad} lines rejected)",
                      n=loaded, path=self.path, s=time.monotonic() - started, bad=rejected)

    def reload(self) -> None:
        """Read the names file again into a fresh store and switch to it."""
        assert self.engine is not None
        old = self.store
        fresh = CompactStore(old.domain_wire, old.subnet, old.default_ttl, old.derived)
        try:
            self.load(fresh)
        except ConfigError as e:
            self.engine.counters.inc("dns_reloads_failed", reason="unreadable")
            self.log.error("names file not reloaded, keeping {n} names: {why}", n=len(old),
                           why=str(e))
            return
        self.store = fresh
        self.engine.replace_store(fresh)

    def startService(self) -> None:
        super().startService()
        if self.reactor is not None:
            import signal

            def hup(signum: int, frame: Any) -> None:
                self.reactor.callFromThread(self.reload)

            self._previous_handler = signal.signal(signal.SIGHUP, hup)

    def stopService(self) -> Any:
        if self._previous_handler is not None:
            import signal

            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()


def build_dns_service(config: DnsConfig, reactor: Any) -> MultiService:
    """
    The C{wow-dns} service tree.  The names file is read here, before the
    listeners open, so the server never answers NXDOMAIN for a name it is
    still loading.
    """
    c = config.dns
    counters = Counters()
    store = CompactStore(to_wire(c.domain), ipaddress.IPv4Network(c.subnet), c.ttl,
                         c.derived_names)
    root = MultiService()
    loader = None
    if c.names_file:
        loader = NamesFileService(store, c.names_file, reactor)
        loader.load()
        loader.setServiceParent(root)
    # Configured records (static A, NS glue) are added after the file: they win.
    engine = build_engine(c.domain, c.subnet, c, reactor, counters, store,
                          ((c.nameserver, c.nameserver_address or None),), c.static_records())
    if loader is not None:
        loader.engine = engine
    root.engine = engine  # type: ignore[attr-defined]
    DnsListenService(engine, reactor, c.listen, c.port, c.tcp_idle_timeout).setServiceParent(root)
    flush = TimerService(5, engine.flush_counts)
    flush.clock = reactor
    flush.setServiceParent(root)
    counters.add_refresher(engine.flush_counts)  # a scrape sees every answer so far
    if c.metrics_listen:
        from wow.prometheus import metrics_service

        metrics_service(reactor, counters, "wow_dns", c.metrics_listen).setServiceParent(root)
    return root


class NodeDns(Service):
    """
    The DNS a node answers on its virtual gateway address (DHCP option 6).

    The node's TAP path calls L{answer} with the UDP payload of each query
    addressed to gateway:53 and the client's virtual IP, and sends back what
    it returns (see L{DnsEngine.answer}).  The DHCP server calls
    L{lease_added} on every ACK (new lease or renewal) and L{lease_removed}
    on release/expiry, so names follow leases (TTL = the lease's remaining
    time) and host-name conflicts are settled by L{NameClaims}.

    @param kv: the DHT's atomic-create interface; without one, claims are
        settled in this node's memory (L{MemoryAtomicStore}).
    @param host_name: C{[node] name}: overrides the name the DHCP client sends.
    """

    log = Logger()

    def __init__(self, network: Any, zone: ZoneSection, reactor: Any,
                 counters: Counters | None = None, kv: IAtomicCreate | None = None,
                 host_name: str = "") -> None:
        self.counters = counters or Counters()
        self.host_name = host_name
        domain_wire = to_wire(network.domain)
        self.domain_wire = domain_wire
        cache = CompactStore(domain_wire, ipaddress.IPv4Network(network.subnet), zone.ttl,
                             zone.derived_names)
        store: INameStore = cache if kv is None else DhtNameStore(
            kv, network.subnet, cache, zone.negative_ttl)
        self.engine = build_engine(network.domain, network.subnet, zone, reactor,
                                   self.counters, store, (("ns", network.gateway),))
        self.claims = NameClaims(kv or MemoryAtomicStore(reactor), network.subnet, domain_wire,
                                 store, reactor, self.counters)
        self.names: dict[str, bytes] = {}
        # The hot path's plain counts, moved into the counters on each scrape.
        self.counters.add_refresher(self.engine.flush_counts)

    def answer(self, query: bytes, client_ip: str) -> Answer:
        """The response to one query from the TAP (see L{DnsEngine.answer})."""
        return self.engine.answer(query, client_ip)

    def answer_packet(self, packet: IPv4Packet) -> bytes | None | Deferred[bytes | None]:
        """
        The reply, as a raw IPv4 packet from the gateway back to the host, to
        one IPv4/UDP packet the host sent to the gateway's port 53; None to
        drop it.  The TAP path wraps it in Ethernet toward the sender.
        """
        try:
            datagram = parse_udp(packet.payload, packet.src, packet.dst)
        except CodecError as e:
            self.counters.inc("dns_queries_dropped", reason=f"udp-{e.reason}")
            return None
        if packet.is_fragment:
            self.counters.inc("dns_queries_dropped", reason="fragment")
            return None

        def wrap(response: bytes | None) -> bytes | None:
            if response is None:
                return None
            udp = build_udp(UDPDatagram(datagram.dst_port, datagram.src_port, response),
                            packet.dst, packet.src)
            return build_ipv4(IPv4Packet(src=packet.dst, dst=packet.src, proto=PROTO_UDP,
                                         payload=udp))

        result = self.engine.answer(datagram.payload, str(packet.src))
        if isinstance(result, Deferred):
            return result.addCallback(wrap)
        return wrap(result)

    def lease_added(self, ip: str, lease_seconds: float, hostname: str = "", fqdn: str = ""
                    ) -> Deferred[bytes]:
        """
        A lease was granted or renewed: publish (or refresh) its names.

        The host name is the node's configured one (C{[node] name}) if any,
        else the DHCP host-name option (12), else the first label of the
        client-FQDN option (81); without one, the derived name alone.
        Fires with the wire name the address ended up with.
        """
        wanted = self.host_name or hostname or fqdn.strip(".").split(".")[0]
        expected = derived_wire(pack_ip(ip), self.domain_wire)
        if wanted and valid_hostname(wanted):
            expected = absolute(wanted, self.domain_wire)
        old = self.names.get(ip)
        if old is not None and old != expected:
            # Renamed (or a name lost earlier): withdraw the old one first.
            self.claims.release(ip, old)
            del self.names[ip]

        def remember(name: bytes) -> bytes:
            self.names[ip] = name
            return name

        return self.claims.claim(ip, lease_seconds, wanted).addCallback(remember)

    def lease_removed(self, ip: str) -> None:
        """A lease ended (release or expiry): withdraw its names."""
        name = self.names.pop(ip, None)
        if name is not None:
            self.claims.release(ip, name)
