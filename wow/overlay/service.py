"""
The Twisted adapter of the overlay: one unconnected UDP port and a timer.

Everything interesting happens in L{OverlayNode}; this service loads the
node's key, opens the port, feeds datagrams and time to the node, writes
what it sends, and offers the Python API other parts of wow-node use
(C{dht}, C{send_to}, C{register_handler}, C{add_observer}) plus the control
commands behind C{wow status}, C{wow peers} and C{wow dht}.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wow import __version__
from wow.datapath import pieces as P
from wow.datapath import udpgso, vnet
from wow.metrics import Counters
from wow.overlay import address as A
from wow.overlay import datapath as D
from wow.overlay import wire as W
from wow.overlay.dht import Dht, DhtError
from wow.overlay.identity import IdentityError, NodeIdentity
from wow.overlay.link import Endpoint, Link
from wow.overlay.node import Delivery, OverlayNode, OverlayParams
from wow.util.fatal import fatal

TICK = 0.1


def params_from_config(overlay: Any) -> OverlayParams:
    """The core's parameters from the validated C{[overlay]} section."""
    return OverlayParams(
        keepalive=overlay.keepalive,
        dead_after=overlay.dead_after,
        probe=min(overlay.keepalive, max(0.2, overlay.keepalive / 3)),
        near=overlay.near,
        ttl=overlay.ttl,
        stabilize=overlay.stabilize,
        finger_refresh=overlay.finger_refresh,
        trim_grace=max(4 * overlay.keepalive, 10.0),
        replicas=overlay.replicas,
        dht_max_value=overlay.dht_max_value,
        dht_max_ttl=overlay.dht_max_ttl,
        ondemand_idle=overlay.ondemand_idle,
        seed=not overlay.bootstrap,
    )


def parse_bootstrap(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None  # validated by config
    return parts.hostname, parts.port


class _Protocol(DatagramProtocol):
    def __init__(self, service: OverlayService) -> None:
        self.service = service

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.service.received(data, (addr[0], addr[1]))


class _AuxProtocol(DatagramProtocol):
    """An extra local socket (birthday probing): datagrams tagged with its index."""

    def __init__(self, service: OverlayService, index: int) -> None:
        self.service = service
        self.index = index

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        node = self.service.node
        if node is not None:
            node.datagram_received(data, (addr[0], addr[1]), self.service.reactor.seconds(),
                                   self.index)


#: Extra sockets a node opens at most (birthday probing needs 256).
MAX_AUX_SOCKETS = 256
#: Seconds between re-reads of the interface addresses (punching candidates).
LOCAL_ADDRESSES_REFRESH_S = 60.0


class OverlayService(Service):
    """Runs one L{OverlayNode} on a UDP port under the reactor."""

    log = Logger()
    name = "overlay"

    def __init__(self, config: Any, reactor: Any, counters: Counters | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.counters = counters if counters is not None else Counters()
        self.node: OverlayNode | None = None
        self.port: Any = None
        self._loop: LoopingCall | None = None
        self._handlers: dict[int, Callable[[Delivery], None]] = {}
        self._observers: list[Callable[[str, Link], None]] = []
        #: UDP GSO/GRO on the overlay socket (C{[tap] offload = true}), else None.
        self.gso: udpgso.GsoUdp | None = None
        #: Whole DATA messages taken from GRO bursts go here: (source, message).
        self.fast_data: Callable[[int, bytes], None] | None = None
        self._sources: dict[str, str] = {}
        #: Plain ints on the hot path, moved into the counters on each read.
        self._io = [0, 0, 0, 0]  # datagrams in, bytes in, datagrams out, bytes out
        self._io_reported = [0, 0, 0, 0]
        #: When this node last sent plaintext DATA of each flow (source +
        #: destination IPv4, 8 bytes) through the overlay: the node's data
        #: plane takes only those flows and their reverse, so traffic the
        #: security layer seals never sees it.
        self.plain_data_sent: dict[bytes, float] = {}
        self.counters.add_refresher(self._refresh_metrics)
        #: Extra UDP ports for birthday probing, by socket index.
        self._aux: dict[int, Any] = {}
        self._addresses_loop: LoopingCall | None = None

    # -- the API other parts use --------------------------------------------

    @property
    def dht(self) -> Dht:
        """put/create/get/delete, each returning a Deferred."""
        if self.node is None:
            raise RuntimeError("the overlay is not running")
        return self.node.dht

    def send_to(self, address: int, kind: int, payload: bytes, mode: int = W.EXACT) -> bool:
        if self.node is None:
            return False
        if kind == W.DATA and payload[4:8] == b"\0\0\0\x01":  # a whole message
            self._sent_plain(payload, W.DATA_HEADER.size)
        return self.node.send_to(address, kind, payload, mode)

    def send_message(self, address: int, kind: int, msg_id: int, message: bytes) -> bool:
        """
        One data message of any size as numbered pieces: on a direct link in
        one UDP GSO send (when the socket has it), else piece by piece
        through overlay routing.  False if there was no route.
        """
        node = self.node
        if node is None:
            return False
        if kind == W.DATA:
            self._sent_plain(message, 0)
        link = node.table.links.get(address)
        if link is not None and self.gso is not None and kind == W.DATA and link.sock == 0:
            buf, seg = D.pack_for_link(node.me, address, node.params.ttl, msg_id, message)
            link.last_sent = self.reactor.seconds()
            count = -(-len(buf) // seg)
            node.sent += count
            self._io[2] += count
            self._io[3] += len(buf)
            self.gso.send_buffer(buf, seg, link.endpoint)
            self.counters.inc("overlay_link_messages_sent")
            return True
        for piece in P.split(msg_id, message, D.PIECE_PAYLOAD):
            if not node.send_to(address, kind, piece):
                return False
        return True

    def _sent_plain(self, buf: bytes, at: int) -> None:
        """
        Stamp the flow (source and destination IPv4 address, 8 bytes) of the
        plaintext DATA message at C{buf[at:]}: the node's data plane takes
        only flows the router sent in clear lately (and their reverse), so
        traffic the security layer seals never takes it.
        """
        b0 = buf[at] if len(buf) > at else 0
        if not 0x45 <= b0 <= 0x4F:  # a compact vnet header first
            try:
                _, used = vnet.from_wire(memoryview(buf)[at:])
            except vnet.VnetError:
                return
            at += used
            if len(buf) <= at or not 0x45 <= buf[at] <= 0x4F:
                return
        if len(buf) < at + 20:
            return
        key = bytes(buf[at + 12:at + 20])
        sent = self.plain_data_sent
        if len(sent) > 4096 and key not in sent:
            sent.clear()
        sent[key] = self.reactor.seconds()

    def has_link(self, address: int) -> bool:
        return self.node is not None and self.node.has_link(address)

    def request_link(self, address: int) -> None:
        """Ask for a direct link to C{address} (the IP router's traffic flows to it)."""
        if self.node is not None:
            self.node.request_link(address)

    def touch(self, address: int) -> None:
        if self.node is not None:
            self.node.touch(address)

    def register_handler(self, kind: int, handler: Callable[[Delivery], None]) -> None:
        self._handlers[kind] = handler
        if self.node is not None:
            self.node.register_handler(kind, handler)

    def add_observer(self, observer: Callable[[str, Link], None]) -> None:
        """C{observer("up"|"down", link)} on every link change."""
        self._observers.append(observer)
        if self.node is not None:
            self.node.add_observer(observer)

    @property
    def address(self) -> int | None:
        return self.node.me if self.node is not None else None

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        cfg = self.config.overlay
        try:
            identity = NodeIdentity.load_or_create(self.config.node.state_dir)
        except (IdentityError, OSError) as e:
            fatal("wow-node", str(e))
        interface = cfg.interface or ""
        try:
            self.port = self.reactor.listenUDP(cfg.listen, _Protocol(self), interface=interface)
        except CannotListenError as e:
            fatal("wow-node", f"cannot listen on UDP port {cfg.listen}: {e.socketError}")
        local_port = self.port.getHost().port
        if getattr(getattr(self.config, "tap", None), "offload", False):
            self._enable_offloads()
        self.node = node = OverlayNode(
            identity,
            send=self._send,
            clock=self.reactor.seconds,
            params=params_from_config(cfg),
            counters=self.counters,
            version=__version__,
        )
        if interface:
            node.local_endpoint = (interface, local_port)
        node.local_for = self._local_for
        node._send_sock = self._send_from
        for kind, handler in self._handlers.items():
            node.register_handler(kind, handler)
        for obs in self._observers:
            node.add_observer(obs)
        node.add_observer(self._log_link)
        node.start()
        for url in cfg.bootstrap:
            host, port = parse_bootstrap(url)
            self._add_bootstrap(host, port)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK, now=False)
        self._addresses_loop = LoopingCall(self._refresh_local_addresses)
        self._addresses_loop.clock = self.reactor
        self._addresses_loop.start(LOCAL_ADDRESSES_REFRESH_S, now=True)
        if cfg.keepalive > 25:
            self.log.warn("overlay.keepalive {k} s is longer than a NAT keeps an idle UDP "
                          "mapping (30 s): links behind NATs may break", k=cfg.keepalive)
        self.log.info(
            "overlay ready: address {address} on UDP port {port}",
            address=A.to_text(node.me), port=local_port,
        )

    def _add_bootstrap(self, host: str, port: int) -> None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            d = self.reactor.resolve(host)
            d.addCallbacks(
                lambda ip: self._add_bootstrap(ip, port),
                lambda f: self.log.warn("cannot resolve bootstrap {host}: {e}", host=host,
                                        e=f.getErrorMessage()),
            )
            return
        assert self.node is not None
        ep = (host, port)
        self.node.bootstrap.append(ep)
        self.node.dial(ep, None, owned=True)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._addresses_loop is not None and self._addresses_loop.running:
            self._addresses_loop.stop()
        for aux in self._aux.values():
            aux.stopListening()
        self._aux.clear()
        if self.node is not None:
            self.node.stop()
        if self.port is not None:
            d = self.port.stopListening()
            self.port = None
            return d
        return None

    # -- I/O ------------------------------------------------------------------

    def received(self, data: bytes, addr: Endpoint) -> None:
        """One datagram from Twisted's own reader (a socket without UDP GRO)."""
        self.read_item(data, 0, addr, self.reactor.seconds() if self.node is not None else 0.0)

    def _enable_offloads(self) -> None:
        """UDP GSO for sends to direct links, UDP GRO for receives (docs/architecture.md)."""
        sock = getattr(self.port, "socket", None)
        if sock is None:
            return
        self.gso = udpgso.GsoUdp(sock, self.counters)
        if self.gso.gro:
            # Twisted's port reads one datagram per recvfrom and no ancillary
            # data: with GRO on, this reader takes the coalesced bursts instead.
            self.port.doRead = self.read_bursts
        self.log.info("overlay offloads: gso {gso} gro {gro}", gso=self.gso.gso,
                      gro=self.gso.gro)

    def read_bursts(self) -> None:
        """Drain the socket: whole DATA messages from links fast, everything else per datagram."""
        node, gso = self.node, self.gso
        if node is None or gso is None:
            return
        now = self.reactor.seconds()
        for data, seg, raw_addr in gso.recv_batch():
            self.read_item(data, seg, raw_addr, now)

    def read_item(self, data: bytes, seg: int, raw_addr: Any, now: float) -> None:
        """
        One read from the socket (here or by the node's data plane thread):
        a datagram (C{seg} 0) or a GRO burst of C{seg}-byte datagrams.
        """
        io = self._io
        io[0] += -(-len(data) // seg) if seg else 1
        io[1] += len(data)
        node = self.node
        if node is None:
            return
        addr = (raw_addr[0], raw_addr[1])
        if not seg or len(data) <= seg:
            node.datagram_received(data, addr, now)
            return
        if self.fast_data is not None:
            burst = D.take_burst(data, seg, A.to_bytes(node.me), D.linked_address(node, addr))
            if burst is not None:
                self._fast_burst(burst, addr, now)
                if burst.end >= len(data):
                    return
                data = data[burst.end:]
        for d in udpgso.split(data, seg):
            node.datagram_received(bytes(d), addr, now)

    def _fast_burst(self, burst: D.Burst, addr: Endpoint, now: float) -> None:
        node = self.node
        assert node is not None and self.fast_data is not None
        # One token per burst: an established link's bulk traffic is not a flood.
        if not node.peer_data.allow(addr, now):
            self.counters.inc("overlay_dropped", reason="rate-limited")
            return
        link = node.by_endpoint.get(addr)
        if link is not None:
            link.last_recv = now
        self.counters.inc("overlay_fastpath_messages")
        try:
            self.fast_data(burst.src, burst.message)
        except Exception:
            self.log.failure("fast data handler failed")
            self.counters.inc("overlay_dropped", reason="internal-error")

    def _tick(self) -> None:
        if self.node is not None:
            self.node.tick(self.reactor.seconds())

    def _send(self, data: bytes, addr: Endpoint) -> None:
        if self.port is None:
            return
        io = self._io
        io[2] += 1
        io[3] += len(data)
        try:
            self.port.write(data, addr)
        except MessageLengthError:
            self.counters.inc("overlay_dropped", reason="oversized-send")
        except OSError as e:
            # Refused ports and unreachable hosts are normal in a P2P network:
            # peers are declared dead by silence, never by a send error.
            if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                self.log.warn("overlay send to {addr} failed: {e}", addr=addr, e=e)
            self.counters.inc("overlay_send_errors", reason=errno.errorcode.get(e.errno or 0, "?"))

    def _send_from(self, data: bytes, addr: Endpoint, index: int) -> None:
        """Send from extra socket C{index} (opened on first use; birthday probing)."""
        port = self._aux.get(index)
        if port is None:
            if not 0 < index <= MAX_AUX_SOCKETS or self.port is None:
                return
            try:
                port = self.reactor.listenUDP(0, _AuxProtocol(self, index),
                                              interface=self.config.overlay.interface or "")
            except CannotListenError:
                self.counters.inc("overlay_send_errors", reason="aux-socket")
                return
            self._aux[index] = port
        self._io[2] += 1
        self._io[3] += len(data)
        try:
            port.write(data, addr)
        except (OSError, MessageLengthError):
            self.counters.inc("overlay_send_errors", reason="aux-socket")

    def _refresh_local_addresses(self) -> None:
        """Our interface addresses with the overlay port: candidates for peers behind our NAT."""
        from wow.nat.interfaces import candidate_addresses, interface_addresses

        if self.node is None or self.port is None:
            return
        port = self.port.getHost().port
        tap = getattr(getattr(self.config, "tap", None), "name", "")
        subnet = getattr(getattr(self.config, "network", None), "subnet", "")
        try:
            found = interface_addresses()
        except OSError as e:
            self.log.warn("cannot list interface addresses: {e}", e=e)
            return
        interface = self.config.overlay.interface
        addresses = [interface] if interface else candidate_addresses(
            found, [tap] if tap else [], [subnet] if subnet else [])
        self.node.local_addresses = [(a, port) for a in addresses][:8]
        self.node.nat.local_endpoints.update(self.node.local_addresses)

    def control_connect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Ask for a direct link to an overlay address now (as IP traffic would)."""
        from wow.control.server import CommandError

        target = args.get("address")
        if self.node is None:
            raise CommandError("the overlay is not running")
        try:
            address = A.from_text(target) if isinstance(target, str) else None
        except ValueError:
            address = None
        if address is None:
            raise CommandError("connect takes an overlay address (wow:HEX)")
        self.node.request_link(address)
        return {"address": A.to_text(address), "linked": self.node.has_link(address)}

    def _log_link(self, event: str, link: Link) -> None:
        self.log.info("overlay link {event}: {peer} at {ip}:{port}", event=event,
                      peer=A.to_text(link.address), ip=link.endpoint[0], port=link.endpoint[1])

    def _refresh_metrics(self) -> None:
        """Datagrams and bytes in/out, and the links by kind, for exporters."""
        names = ("overlay_datagrams_received", "overlay_bytes_received",
                 "overlay_datagrams_sent", "overlay_bytes_sent")
        for i, name in enumerate(names):
            delta = self._io[i] - self._io_reported[i]
            self._io_reported[i] = self._io[i]
            self.counters.inc(name, delta)
        kinds = dict.fromkeys(("near", "shortcut", "on-demand", "other", "relayed"), 0)
        if self.node is not None:
            for link in self.node.table.links.values():
                kind = link.kind
                if kind == "other" and link.address in self.node.ondemand:
                    kind = "on-demand"
                kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            self.counters.set("overlay_links", count, kind=kind)

    # -- control commands -------------------------------------------------------

    def register_control(self, control: Any) -> None:
        from wow.control.status import add_status_section

        add_status_section(control, "overlay", self.control_status)
        control.register("peers", self.control_peers)
        control.register("netcheck", self.control_netcheck)
        control.register("connect", self.control_connect)
        for op in ("get", "put", "create", "delete"):
            control.register(f"dht.{op}", lambda args, op=op: self.control_dht(op, args))

    def control_status(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.node is None:
            return {"running": False}
        out = self.node.status(self.reactor.seconds())
        out["running"] = True
        out["dropped"] = {
            ",".join(f"{k}={v}" for k, v in labels.items()): value
            for labels, value in self.counters.series("overlay_dropped")
        }
        return out

    def control_peers(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        if self.node is None:
            return []
        return self.node.peers_info(self.reactor.seconds())

    def control_netcheck(self, args: dict[str, Any]) -> dict[str, Any]:
        from wow.control.server import CommandError

        if self.node is None:
            raise CommandError("the overlay is not running")
        return self.node.netcheck(self.reactor.seconds())

    def _local_for(self, destination: Endpoint) -> Endpoint:
        """
        Our local endpoint toward C{destination}: the source address the
        kernel picks for it (a connected UDP socket sends nothing) and our port.
        """
        port = self.port.getHost().port if self.port is not None else 0
        interface = self.config.overlay.interface
        if interface:
            return (interface, port)
        cached = self._sources.get(destination[0])
        if cached is None:
            import socket

            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.connect((destination[0], destination[1] or 9))
                    cached = s.getsockname()[0]
            except OSError:
                cached = "0.0.0.0"
            if len(self._sources) > 256:
                self._sources.clear()
            self._sources[destination[0]] = cached
        return (cached, port)

    def control_dht(self, op: str, args: dict[str, Any]) -> Deferred[Any]:
        from wow.control.server import CommandError

        key = args.get("key")
        value = args.get("value", "")
        ttl = args.get("ttl", 3600)
        if not isinstance(key, str) or not isinstance(value, str) or not isinstance(ttl, int):
            raise CommandError("dht commands take a string key, a string value and an integer ttl")
        dht = self.dht
        try:
            if op == "get":
                d = dht.get(key.encode())
            elif op == "put":
                d = dht.put(key.encode(), value.encode(), ttl)
            elif op == "create":
                d = dht.create(key.encode(), value.encode(), ttl)
            else:
                d = dht.delete(key.encode(), value.encode())
        except ValueError as e:
            raise CommandError(str(e)) from None

        def done(result: Any) -> Any:
            if op != "get":
                return {"ok": True}
            return [{"value": v.value.decode(errors="replace"), "owner": A.to_text(v.owner),
                     "ttl_s": v.ttl_left} for v in result]

        def failed(f: Any) -> None:
            f.trap(DhtError)
            raise CommandError(f"dht {op} failed: {f.value.reason}")

        return d.addCallbacks(done, failed)
