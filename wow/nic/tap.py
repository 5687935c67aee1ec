"""
The TAP device, behind a small injectable "device syscalls" object.

L{ITapSyscalls} opens a device and returns an L{ITapDevice}: the real one
(L{PytunSyscalls}) uses python-pytun, the fake (L{wow.testing.FakeTapSyscalls})
keeps frames in memory, so L{TapPort} and everything above it is unit-tested
without root.  L{check_tap_prerequisites} turns the known start-up failures
(not root, no C{/dev/net/tun}, the name taken) into one sentence before
anything is opened.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable

from twisted.internet.abstract import FileDescriptor
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from wow.metrics import Counters

#: Read size: larger than any frame the kernel hands us for MTU <= 65535.
READ_SIZE = 65536 + 14


class TapError(Exception):
    """A TAP device could not be opened or configured; str() is one sentence."""


class ITapDevice(Interface):
    """An open TAP device (no packet-info header: whole Ethernet frames)."""

    name = Attribute("The interface name the kernel gave the device.")

    def fileno() -> int:
        """The file descriptor to watch for readability."""

    def read(size: int) -> bytes:
        """One frame; raises L{BlockingIOError} when none is waiting."""

    def write(frame: bytes) -> int:
        """Send one frame to the host's stack."""

    def close() -> None:
        """Close the device (a non-persistent TAP disappears)."""


class ITapSyscalls(Interface):
    """How a TAP device is opened and configured."""

    def preflight(name: str) -> None:
        """
        Check, before anything else starts, that C{name} can be opened.

        @raise TapError: with one sentence (not root, no tun driver, ...).
        """

    def open_tap(name: str, mtu: int, hwaddr: bytes) -> ITapDevice:
        """
        Create/attach the TAP C{name}, set its MTU and host-side MAC, bring
        it up and make it non-blocking.

        @raise TapError: with one sentence.
        """


def check_tap_prerequisites(name: str, *, euid: int | None = None,
                            tun_path: str = "/dev/net/tun",
                            sys_class_net: str = "/sys/class/net") -> None:
    """
    Fail early with one sentence on the known start-up problems.

    @raise TapError: not root, no tun driver, C{name} taken by a non-TAP.
    """
    if (os.geteuid() if euid is None else euid) != 0:
        raise TapError(f"must run as root to create the TAP device {name}")
    if not os.path.exists(tun_path):
        raise TapError(f"{tun_path} does not exist (load the tun kernel module: modprobe tun)")
    existing = os.path.join(sys_class_net, name)
    if os.path.exists(existing) and not os.path.exists(os.path.join(existing, "tun_flags")):
        raise TapError(f"the interface name {name} is already used by a device that is not a TAP")


def router_mac_for(tap_name: str, configured: str = "") -> bytes:
    """
    The MAC the virtual router answers ARP with: the configured one, or a
    stable locally administered unicast MAC derived from the TAP name (so it
    survives restarts and the host's ARP cache stays valid).
    """
    if configured:
        return bytes(int(part, 16) for part in configured.split(":"))
    digest = hashlib.sha256(b"wow-router:" + tap_name.encode()).digest()
    return b"\xfe" + digest[:5]


def load_host_mac(path: str) -> bytes:
    """
    The host-side MAC of the TAP, random once and then kept in C{path}: the
    host's DHCP client identifies itself by it, so keeping it lets a
    restarted node give the host the same lease back.
    """
    try:
        with open(path) as f:
            text = f.read().strip()
        mac = bytes(int(p, 16) for p in text.split(":"))
        if len(mac) == 6 and not mac[0] & 1:
            return mac
    except (OSError, ValueError):
        pass
    from wow.util.durable import atomic_write

    mac = bytes([(os.urandom(1)[0] & 0xFC) | 0x02]) + os.urandom(5)
    atomic_write(path, (":".join(f"{b:02x}" for b in mac) + "\n").encode(), mode=0o644)
    return mac


def open_error(name: str, code: int | None, detail: object) -> TapError:
    """The one sentence for a TAP that could not be created (errno C{code})."""
    if code == errno.EBUSY:
        return TapError(f"the TAP device {name} is in use by another process")
    if code == errno.EINVAL:
        return TapError(f"the interface name {name} is already used by a device that is not a TAP")
    if code == errno.EPERM:
        return TapError(f"permission denied creating the TAP device {name} (run as root)")
    return TapError(f"cannot create the TAP device {name}: {detail}")


@implementer(ITapDevice)
class _PytunDevice:
    def __init__(self, dev: object) -> None:
        self._dev = dev
        self.name: str = dev.name  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return int(self._dev.fileno())  # type: ignore[attr-defined]

    def read(self, size: int) -> bytes:
        # pytun's read() raises pytun.Error on EAGAIN; plain os.read keeps the errno.
        return os.read(self.fileno(), size)

    def write(self, frame: bytes) -> int:
        return os.write(self.fileno(), frame)

    def close(self) -> None:
        self._dev.close()  # type: ignore[attr-defined]


@implementer(ITapSyscalls)
class PytunSyscalls:
    """The real device, through python-pytun."""

    def preflight(self, name: str) -> None:
        check_tap_prerequisites(name)

    def open_tap(self, name: str, mtu: int, hwaddr: bytes) -> ITapDevice:
        import fcntl

        import pytun  # type: ignore[import-not-found]

        try:
            dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as e:
            raise open_error(name, e.args[0] if e.args else None, e.args[-1]) from None
        try:
            dev.mtu = mtu
            dev.hwaddr = hwaddr
            dev.up()
        except pytun.Error as e:
            dev.close()
            raise TapError(f"cannot configure the TAP device {name}: {e.args[-1]}") from None
        fd = dev.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        return _PytunDevice(dev)


class TapPort(FileDescriptor):
    """
    Reads frames from a non-blocking TAP device in the reactor.

    C{doRead} drains the device until C{EAGAIN} (as Twisted's C{TuntapPort}
    does), handing each frame to C{on_frame}; frames the node sends go
    straight to C{write_frame} (a TAP write never blocks for long; a full
    queue drops the frame, counted).
    """

    log = Logger()

    #: Frames read per doRead at most, so one busy device cannot starve the reactor.
    MAX_BURST = 256

    def __init__(self, device: ITapDevice, on_frame: Callable[[bytes], None],
                 counters: Counters, reactor: object) -> None:
        super().__init__(reactor)  # type: ignore[arg-type]
        self.device = device
        self.on_frame = on_frame
        self.counters = counters
        self.connected = 1

    def fileno(self) -> int:
        return self.device.fileno()

    def doRead(self) -> None:
        for _ in range(self.MAX_BURST):
            try:
                frame = self.device.read(READ_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    return
                # The device is gone or broken (deleted under us): stop
                # watching it rather than spin on a readable-but-failing fd.
                self.counters.inc("tap_errors", reason="read")
                self.log.error("reading the TAP {name} failed, no longer reading it: {error}",
                               name=self.device.name, error=e)
                self.stopReading()
                return
            self.deliver(frame)

    def deliver(self, frame: bytes) -> None:
        """One frame read from the device (here or by the node's data plane thread)."""
        self.counters.inc("tap_frames_read")
        self.counters.inc("tap_bytes_read", len(frame))
        try:
            self.on_frame(frame)
        except Exception:
            self.counters.inc("frames_dropped", reason="handler-error")
            self.log.failure("frame handler failed")

    def write_frame(self, frame: bytes) -> None:
        try:
            self.device.write(frame)
        except OSError as e:
            self.counters.inc("frames_dropped", reason="tap-write-error")
            self.log.warn("writing to the TAP failed: {error}", error=e)
            return
        self.counters.inc("tap_frames_written")
        self.counters.inc("tap_bytes_written", len(frame))

    def connectionLost(self, reason: object) -> None:
        self.connected = 0

    def close(self) -> None:
        self.stopReading()
        self.device.close()
        self.connected = 0
