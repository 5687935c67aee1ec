"""
Thin Twisted adapters around L{DnsEngine}: a UDP protocol, a TCP protocol
(two-byte length framing, RFC 1035 §4.2.2 / RFC 7766) and a service that
listens on both.  All decisions live in the engine; these classes only move
bytes and never let an exception escape a receive handler.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from wow.dns.engine import DnsEngine
from wow.util.fatal import fatal

_LEN = struct.Struct(">H")


class DnsDatagramProtocol(DatagramProtocol):
    """Answers DNS over UDP; garbage is the engine's business, crashes are not."""

    log = Logger()

    def __init__(self, engine: DnsEngine) -> None:
        self.engine = engine
        self._sendto: Any = None

    def startProtocol(self) -> None:
        # Twisted's write() validates the address as an IP literal (twice)
        # before every send; ours always comes from recvfrom, and that check
        # costs as much as the fast path itself, so send on the socket.
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if sock is not None else None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            response = self.engine.answer(data, addr[0])
        except Exception:
            self.log.failure("DNS query from {addr} raised", addr=addr)
            self.engine.counters.inc("dns_queries_dropped", reason="internal-error")
            return
        if response is None:
            return
        if response.__class__ is bytes:
            self._send(response, addr)
            return
        assert isinstance(response, Deferred)

        def send_later(data: bytes | None) -> None:
            if data is not None:
                self._send(data, addr)

        response.addCallback(send_later)
        response.addErrback(lambda f: self.log.failure("DNS answer failed", f))

    def _send(self, data: bytes, addr: Any) -> None:
        if self.transport is None:
            return
        try:
            if self._sendto is not None:
                self._sendto(data, addr)
            else:
                self.transport.write(data, addr)
        except (OSError, MessageLengthError) as e:
            self.engine.counters.inc("dns_responses_unsent", reason=type(e).__name__)


class DnsStreamProtocol(Protocol, TimeoutMixin):
    """DNS over TCP: length-prefixed messages, pipelined, idle connections closed."""

    log = Logger()

    def __init__(self, engine: DnsEngine, idle_timeout: float, clock: Any) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.callLater = clock.callLater  # type: ignore[method-assign]
        self._buffer = b""

    def connectionMade(self) -> None:
        self.setTimeout(self.idle_timeout)
        self.peer = self.transport.getPeer().host  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        while len(self._buffer) >= 2:
            (length,) = _LEN.unpack_from(self._buffer)
            if length == 0:
                self.engine.counters.inc("dns_queries_dropped", reason="tcp-empty")
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            if len(self._buffer) < 2 + length:
                return
            message, self._buffer = self._buffer[2:2 + length], self._buffer[2 + length:]
            self._handle(message)

    def _handle(self, message: bytes) -> None:
        try:
            response = self.engine.answer(message, self.peer, tcp=True)
        except Exception:
            self.log.failure("DNS query over TCP from {peer} raised", peer=self.peer)
            self.engine.counters.inc("dns_queries_dropped", reason="internal-error")
            return
        if isinstance(response, Deferred):
            response.addCallback(self._write)
            response.addErrback(lambda f: self.log.failure("DNS answer failed", f))
        else:
            self._write(response)

    def _write(self, response: bytes | None) -> None:
        if response is not None and self.transport is not None:
            self.transport.write(_LEN.pack(len(response)) + response)

    def timeoutConnection(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        factory = getattr(self, "factory", None)
        if factory is not None:
            factory.open -= 1


class DnsStreamFactory(Factory):
    """Builds TCP protocols, at most C{max_connections} at a time."""

    noisy = False

    def __init__(self, engine: DnsEngine, idle_timeout: float, clock: Any,
                 max_connections: int = 256) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.max_connections = max_connections
        self.open = 0

    def buildProtocol(self, addr: Any) -> DnsStreamProtocol | None:
        if self.open >= self.max_connections:
            self.engine.counters.inc("dns_tcp_refused", reason="too-many-connections")
            return None  # Twisted closes the connection
        self.open += 1
        proto = DnsStreamProtocol(self.engine, self.idle_timeout, self.clock)
        proto.factory = self
        return proto


class DnsListenService(Service):
    """
    Listens on one address for UDP and TCP (ports below 1024 are opened in
    C{privilegedStartService}, before twistd drops privileges).
    """

    log = Logger()

    def __init__(self, engine: DnsEngine, reactor: Any, address: str, port: int,
                 tcp_idle_timeout: float = 30, program: str = "wow-dns") -> None:
        self.engine = engine
        self.reactor = reactor
        self.address = address
        self.port = port
        self.tcp_idle_timeout = tcp_idle_timeout
        self.program = program
        self.udp: Any = None
        self.tcp: Any = None

    def privilegedStartService(self) -> None:
        try:
            # A real query is a few hundred bytes; a 4 KB receive buffer is
            # cheaper per datagram than 64 KB, and anything longer arrives
            # cut short, fails to parse and is counted as malformed.
            self.udp = self.reactor.listenUDP(self.port, DnsDatagramProtocol(self.engine),
                                              interface=self.address, maxPacketSize=4096)
            port = self.udp.getHost().port
            self.tcp = self.reactor.listenTCP(
                port, DnsStreamFactory(self.engine, self.tcp_idle_timeout, self.reactor),
                interface=self.address)
        except CannotListenError as e:
            if self.udp is not None:
                self.udp.stopListening()
            fatal(self.program, f"cannot listen on {self.address} port {self.port}: "
                  f"{e.socketError}")
        self.port = port
        super().privilegedStartService()

    def startService(self) -> None:
        if self.udp is None:
            self.privilegedStartService()
        super().startService()
        self.log.info("DNS answering on {address} port {port} (UDP and TCP)",
                      address=self.address, port=self.port)

    def stopService(self) -> Any:
        super().stopService()
        if self.tcp is not None:
            self.tcp.stopListening()
        if self.udp is not None:
            return self.udp.stopListening()
        return None
