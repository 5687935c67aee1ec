"""
The virtual-IP → overlay-address cache with bounded per-destination queues.

Sans-I/O: the owner feeds it the time and lookup results.  A miss queues the
packet (bounded per destination and overall) and asks the owner to start one
lookup; the lookup's answer releases the queue.  Answers are cached for the
lease's remaining TTL; "nobody holds this address" is cached for a short
negative TTL so a flood toward an unleased IP costs one lookup, not one per
packet.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

#: A DHT answer saying "not leased" is believed for this long.
NEGATIVE_TTL_S = 5.0
#: Upper bound on how long a positive answer is believed, whatever its TTL.
MAX_POSITIVE_TTL_S = 300.0
#: Packets queued for one destination while its lookup runs.
MAX_QUEUED_PACKETS = 64
MAX_QUEUED_BYTES = 256 * 1024
#: Destinations with a lookup in flight at once.
MAX_PENDING_DESTINATIONS = 1024
#: Cached answers kept (least recently used evicted).
MAX_ENTRIES = 65536


class Outcome(Enum):
    HIT = "hit"
    QUEUED_NEW_LOOKUP = "queued-new-lookup"  # the owner must start a lookup
    QUEUED = "queued"  # a lookup is already running
    NEGATIVE = "negative"  # known not to be leased: drop
    QUEUE_FULL = "queue-full"  # bounded: drop
    TOO_MANY_PENDING = "too-many-pending"  # bounded: drop


@dataclass
class _Pending:
    packets: deque[bytes] = field(default_factory=deque)
    size: int = 0


class AddressCache:
    """Maps virtual IPs (4-byte keys) to overlay addresses."""

    def __init__(self) -> None:
        #: ip → (overlay address or None for negative, expiry time)
        self._entries: OrderedDict[bytes, tuple[bytes | None, float]] = OrderedDict()
        self._pending: dict[bytes, _Pending] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_destinations(self) -> int:
        return len(self._pending)

    def pending(self, ip: bytes) -> bool:
        """Whether packets for C{ip} wait for a lookup."""
        return ip in self._pending

    @property
    def queued_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def get(self, ip: bytes, now: float) -> bytes | None:
        """The cached, unexpired overlay address of C{ip}, if any."""
        entry = self._entries.get(ip)
        if entry is None:
            return None
        address, expiry = entry
        if expiry <= now:
            del self._entries[ip]
            return None
        self._entries.move_to_end(ip)
        return address

    def peek(self, ip: bytes, now: float) -> tuple[bool, bytes | None]:
        """
        C{(known, address)}: C{known} is False when nothing unexpired is
        cached; C{address} is L{None} for a cached "not leased" answer.
        """
        entry = self._entries.get(ip)
        if entry is None:
            return False, None
        address, expiry = entry
        if expiry <= now:
            del self._entries[ip]
            return False, None
        return True, address

    def fresh(self, ip: bytes, now: float) -> bytes | None:
        """
        The unexpired overlay address cached for C{ip}, changing nothing:
        one dictionary read, safe from the node's data plane thread.
        """
        entry = self._entries.get(ip)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def route(self, ip: bytes, packet: bytes, now: float) -> tuple[Outcome, bytes | None]:
        """
        Decide what to do with C{packet} for C{ip}.

        @return: (L{Outcome.HIT}, address) to send now; otherwise the
            outcome and L{None} (the packet is queued or must be dropped).
        """
        entry = self._entries.get(ip)
        if entry is not None:
            address, expiry = entry
            if expiry > now:
                self._entries.move_to_end(ip)
                if address is None:
                    return Outcome.NEGATIVE, None
                return Outcome.HIT, address
            del self._entries[ip]
        pending = self._pending.get(ip)
        outcome = Outcome.QUEUED
        if pending is None:
            if len(self._pending) >= MAX_PENDING_DESTINATIONS:
                return Outcome.TOO_MANY_PENDING, None
            pending = self._pending[ip] = _Pending()
            outcome = Outcome.QUEUED_NEW_LOOKUP
        if (len(pending.packets) >= MAX_QUEUED_PACKETS
                or pending.size + len(packet) > MAX_QUEUED_BYTES):
            return Outcome.QUEUE_FULL, None
        pending.packets.append(packet)
        pending.size += len(packet)
        return outcome, None

    def resolved(self, ip: bytes, address: bytes | None, ttl: float, now: float,
                 remember: bool = True) -> list[bytes]:
        """
        Record a lookup's answer; return the packets that waited for it
        (to send when C{address} is set, to drop otherwise).

        @param remember: cache the answer (False: only release the queue).
        """
        if not remember:
            lifetime = 0.0
        elif address is None:
            lifetime = NEGATIVE_TTL_S
        else:
            lifetime = max(0.0, min(ttl, MAX_POSITIVE_TTL_S))
        if lifetime > 0:
            self._entries[ip] = (address, now + lifetime)
            self._entries.move_to_end(ip)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        pending = self._pending.pop(ip, None)
        return list(pending.packets) if pending else []

    def learn(self, ip: bytes, address: bytes, ttl: float, now: float) -> None:
        """Remember a binding proved by other means (e.g. an authenticated packet)."""
        self._entries[ip] = (address, now + max(0.0, min(ttl, MAX_POSITIVE_TTL_S)))
        self._entries.move_to_end(ip)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def forget(self, ip: bytes) -> None:
        """Drop a cached answer (e.g. the peer said it no longer holds the lease)."""
        self._entries.pop(ip, None)
