"""
In-memory fakes shared by the unit tests of several parts.

Each fake implements the interface of the real thing and is checked with
C{verifyObject} in the tests, so it cannot drift from it.
"""

from __future__ import annotations

from collections import deque

from zope.interface import implementer

from wow.nic.tap import ITapDevice, ITapSyscalls, TapError


@implementer(ITapDevice)
class FakeTapDevice:
    """
    A TAP device whose host side is two queues: frames the test injects
    (C{inject}) are read by the node; frames the node writes land in
    C{written}.
    """

    def __init__(self, name: str, mtu: int, hwaddr: bytes) -> None:
        self.name = name
        self.mtu = mtu
        self.hwaddr = hwaddr
        self.inbound: deque[bytes] = deque()
        self.written: list[bytes] = []
        self.closed = False
        #: Set to an OSError to make the next write fail.
        self.write_error: OSError | None = None

    def inject(self, frame: bytes) -> None:
        self.inbound.append(frame)

    def fileno(self) -> int:
        return -1

    def read(self, size: int) -> bytes:
        if not self.inbound:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return self.inbound.popleft()[:size]

    def write(self, frame: bytes) -> int:
        if self.write_error is not None:
            error, self.write_error = self.write_error, None
            raise error
        self.written.append(bytes(frame))
        return len(frame)

    def close(self) -> None:
        self.closed = True


@implementer(ITapSyscalls)
class FakeTapSyscalls:
    """Opens L{FakeTapDevice}s; C{fail} makes preflight/open raise L{TapError}."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.devices: list[FakeTapDevice] = []

    def preflight(self, name: str) -> None:
        if self.fail:
            raise TapError(self.fail)

    def open_tap(self, name: str, mtu: int, hwaddr: bytes) -> FakeTapDevice:
        if self.fail:
            raise TapError(self.fail)
        device = FakeTapDevice(name, mtu, hwaddr)
        self.devices.append(device)
        return device
