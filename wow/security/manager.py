"""
All secured channels of one node, and the limits that protect it.

The IP router hands L{SessionManager} the plaintext it routes to a peer and
the secured datagrams the link delivers from a peer; it gets back datagrams
to send and plaintexts to deliver.  The manager bounds what strangers can
make it hold: an unknown overlay address earns no state until it echoes a
cookie, half-open handshakes are bounded (one per peer, C{max_half_open} overall), and the
number of channels is bounded.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wow.security.channel import (
    FROM_CLIENT,
    ChannelParams,
    HelloVerdict,
    SecureChannel,
    check_new_hello,
    frame,
    session_lost_reply,
)
from wow.security.dtls import DtlsContext
from wow.security.records import Buffer

MAX_HALF_OPEN = 64
MAX_CHANNELS = 4096

#: (peer overlay address, datagram) pairs for the link.
Outgoing = list[tuple[bytes, bytes]]


class SessionManager:
    """The security core between the IP router and the link."""

    log = Logger()

    def __init__(
        self,
        local: bytes,
        context: DtlsContext,
        clock: IReactorTime,
        params: ChannelParams | None = None,
        *,
        max_half_open: int = MAX_HALF_OPEN,
        max_channels: int = MAX_CHANNELS,
    ) -> None:
        self.local = local
        self.context = context
        self.clock = clock
        self.params = params or ChannelParams()
        self.max_half_open = max_half_open
        self.max_channels = max_channels
        self.channels: dict[bytes, SecureChannel] = {}

    @property
    def counters(self):  # type: ignore[no-untyped-def]
        return self.context.counters

    def _admit(self, channel: SecureChannel) -> str | None:
        # Per peer there is at most one: a newer hello supersedes the older.
        total = sum(c.half_open() for c in self.channels.values())
        if total >= self.max_half_open:
            return "half-open-total"
        return None

    def _new_channel(self, peer: bytes, expected_ip: str | None) -> SecureChannel | None:
        if len(self.channels) >= self.max_channels:
            self._evict_idle()
            if len(self.channels) >= self.max_channels:
                self.counters.inc("security_handshakes_refused", reason="too-many-channels")
                return None
        channel = SecureChannel(
            peer, self.local, self.context, self.clock, self.params, expected_ip, self._admit
        )
        self.channels[peer] = channel
        return channel

    def _evict_idle(self) -> None:
        for peer, channel in list(self.channels.items()):
            if not channel.sessions and not channel.queue:
                del self.channels[peer]

    def channel(self, peer: bytes) -> SecureChannel | None:
        return self.channels.get(peer)

    def send(
        self, peer: bytes, plaintext: bytes, now: float, expected_ip: str | None = None
    ) -> list[bytes]:
        """
        Secure one plaintext (≤ 16 KB) for C{peer}; starts the handshake and
        queues it when there is no session yet.

        @param expected_ip: the virtual IP the router resolved to C{peer}; the
            peer's certificate must name it.
        """
        channel = self.channels.get(peer)
        if channel is None:
            channel = self._new_channel(peer, expected_ip)
            if channel is None:
                self.counters.inc("security_packets_dropped", reason="too-many-channels")
                return []
        return channel.send(plaintext, now)

    def connect(self, peer: bytes, now: float, expected_ip: str | None = None) -> list[bytes]:
        """Start a handshake to C{peer} ahead of any data (no-op when one runs or is up)."""
        channel = self.channels.get(peer)
        if channel is None:
            channel = self._new_channel(peer, expected_ip)
            if channel is None:
                return []
        return channel.open(now)

    def receive(self, peer: bytes, datagram: Buffer, now: float) -> tuple[list[bytes], list[bytes]]:
        """
        A secured datagram from C{peer}: plaintexts to route and datagrams to
        send back.  A stranger's hello is answered without keeping anything.
        """
        if len(datagram) < 2:
            self.counters.inc("security_records_dropped", reason="malformed")
            return [], []
        return self.receive_parts(peer, datagram[0], memoryview(datagram)[1:], now)

    def receive_parts(
        self, peer: bytes, header: int, body: Buffer, now: float
    ) -> tuple[list[bytes], list[bytes]]:
        """
        L{receive} for a link that hands over the framing byte and the DTLS
        records separately: the records are not copied again.
        """
        channel = self.channels.get(peer)
        if channel is None:
            if not header & FROM_CLIENT:
                self.counters.inc("security_records_dropped", reason="no-session")
                return [], session_lost_reply(header, body)
            verdict, value = check_new_hello(self.context, peer, body, now)
            if verdict == HelloVerdict.REPLY:
                assert isinstance(value, bytes)
                self.counters.inc("security_hello_verify_sent")
                return [], [frame(header & ~FROM_CLIENT & 0xFF, value)]
            if verdict == HelloVerdict.DROP:
                assert isinstance(value, str)
                self.counters.inc("security_records_dropped", reason=value)
                return [], session_lost_reply(header, body)
            channel = self._new_channel(peer, None)
            if channel is None:
                return [], []
        return channel.receive_parts(header, body, now)

    def check_source(self, peer: bytes, src_ip: str) -> bool:
        """
        Whether an inner packet decrypted from C{peer}'s session may carry
        the source address C{src_ip} (the IP its certificate names).
        """
        channel = self.channels.get(peer)
        if channel is not None and channel.peer_ip is not None and channel.peer_ip == src_ip:
            return True
        self.counters.inc("security_packets_dropped", reason="forged-source")
        return False

    def tick(self, now: float) -> Outgoing:
        out: Outgoing = []
        for peer, channel in list(self.channels.items()):
            out.extend((peer, d) for d in channel.tick(now))
            if not channel.sessions and not channel.queue and channel.failure is None:
                del self.channels[peer]
        return out

    def next_deadline(self) -> float | None:
        times = [t for t in (c.next_deadline() for c in self.channels.values()) if t is not None]
        return min(times) if times else None

    def revoke(self, serials: Iterable[int]) -> Outgoing:
        """Tear down every session using a certificate among C{serials}."""
        wanted = frozenset(serials)
        out: Outgoing = []
        for peer, channel in self.channels.items():
            out.extend((peer, d) for d in channel.revoke(wanted))
        return out

    def close(self, peer: bytes, reason: str) -> list[bytes]:
        channel = self.channels.pop(peer, None)
        return channel.close(reason) if channel is not None else []

    def peers(self) -> list[dict[str, object]]:
        """One summary per peer, for C{wow peers}."""
        return [c.info() for c in self.channels.values()]
