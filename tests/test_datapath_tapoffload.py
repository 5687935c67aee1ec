"""
The offloading TAP: negotiation with the kernel (fake and real), draining
until EAGAIN, and write errors counted rather than raised.
"""

from __future__ import annotations

import errno
import json
import sys

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.netns import Lab, skip_reason
from wow.datapath import tapoffload as T
from wow.datapath.testing import FakeOffloadTapSyscalls
from wow.metrics import Counters


class FakeTapTests(SynchronousTestCase):
    def open(self, **kw: object) -> tuple[T.OffloadTap, FakeOffloadTapSyscalls, Counters]:
        sys_ = FakeOffloadTapSyscalls(**kw)  # type: ignore[arg-type]
        counters = Counters()
        tap = T.OffloadTap("wowtap0", counters, syscalls=sys_)
        tap.open()
        return tap, sys_, counters

    def test_interfaces(self) -> None:
        verifyObject(T.IOffloadTapSyscalls, FakeOffloadTapSyscalls())
        verifyObject(T.IOffloadTapSyscalls, T.RealOffloadTapSyscalls())

    def test_full_offloads(self) -> None:
        tap, sys_, _ = self.open()
        self.assertEqual(tap.vnet_hdr_len, 12)
        self.assertEqual(sys_.vnet_hdr_sz, 12)
        self.assertEqual(sys_.iff_flags, T.IFF_TAP | T.IFF_NO_PI | T.IFF_VNET_HDR)
        self.assertEqual(tap.offloads, T.OFFLOAD_LADDER[0])
        self.assertEqual(sys_.offloads, T.OFFLOAD_LADDER[0])
        self.assertEqual(sys_.gso_max_size, {"wowtap0": 60000})
        self.assertEqual(tap.fileno(), 7)

    def test_older_kernel_without_uso(self) -> None:
        tso = T.TUN_F_CSUM | T.TUN_F_TSO4 | T.TUN_F_TSO6 | T.TUN_F_TSO_ECN
        tap, sys_, _ = self.open(accept_offloads=[tso, T.TUN_F_CSUM, 0])
        self.assertEqual(tap.offloads, tso)

    def test_no_offloads_at_all(self) -> None:
        tap, sys_, _ = self.open(accept_offloads=[0])
        self.assertEqual((tap.offloads, tap.vnet_hdr_len), (0, 12))
        self.assertEqual(sys_.gso_max_size, {})

    def test_no_vnet_hdr_support(self) -> None:
        tap, sys_, _ = self.open(features=T.IFF_TAP | T.IFF_NO_PI)
        self.assertEqual((tap.vnet_hdr_len, tap.offloads), (0, 0))
        self.assertEqual(sys_.iff_flags, T.IFF_TAP | T.IFF_NO_PI)
        self.assertNotIn(T.TUNSETOFFLOAD, [r for r, _ in sys_.ioctls])

    def test_plain_on_request(self) -> None:
        sys_ = FakeOffloadTapSyscalls()
        tap = T.OffloadTap("t", Counters(), syscalls=sys_, vnet_hdr=False)
        tap.open()
        self.assertEqual(tap.vnet_hdr_len, 0)

    def test_gso_max_size_failure_degrades(self) -> None:
        tap, _, counters = self.open(gso_max_size_error=True)
        self.assertEqual(tap.vnet_hdr_len, 12)
        self.assertEqual(counters.get("datapath_tap_setup_degraded", reason="gso-max-size"), 1)

    def test_tunsetiff_failure(self) -> None:
        sys_ = FakeOffloadTapSyscalls()

        def refuse(fd: int, request: int, arg: bytes | int) -> bytes | int:
            if request == T.TUNSETIFF:
                raise OSError(errno.EPERM, "Operation not permitted")
            return FakeOffloadTapSyscalls.ioctl(sys_, fd, request, arg)

        sys_.ioctl = refuse  # type: ignore[method-assign]
        tap = T.OffloadTap("t", Counters(), syscalls=sys_)
        with self.assertRaises(T.TapError) as e:
            tap.open()
        self.assertIn("Operation not permitted", str(e.exception))
        self.assertEqual(sys_.closed, [7])

    def test_read_batch_drains(self) -> None:
        tap, sys_, counters = self.open()
        frames = [b"\0" * 12 + bytes([i]) * 60 for i in range(5)]
        sys_.incoming.extend([frames[0], b"\0" * 12, frames[1], frames[2]])
        self.assertEqual(tap.read_batch(), [frames[0], frames[1], frames[2]])
        self.assertEqual(counters.get(T.DROPPED, reason="short-read"), 1)
        self.assertEqual(tap.read_batch(), [])
        sys_.incoming.extend(frames)
        self.assertEqual(tap.read_batch(max_frames=2), frames[:2])
        sys_.incoming.appendleft(OSError(errno.EBADFD, "bad"))
        self.assertEqual(tap.read_batch(), [])
        self.assertEqual(counters.get(T.DROPPED, reason="read-error"), 1)

    def test_write(self) -> None:
        tap, sys_, counters = self.open()
        self.assertTrue(tap.writev([b"h" * 12, memoryview(b"frame")]))
        self.assertEqual(sys_.written, [b"h" * 12 + b"frame"])
        sys_.write_error = OSError(errno.EINVAL, "bad header")
        self.assertFalse(tap.write(b"x" * 20))
        self.assertEqual(counters.get(T.DROPPED, reason="rejected"), 1)

    def test_close(self) -> None:
        tap, sys_, _ = self.open()
        tap.close()
        tap.close()
        self.assertEqual(sys_.closed, [7])


PROBE = r"""
import json, subprocess, sys
from wow.datapath.tapoffload import OffloadTap
from wow.metrics import Counters
tap = OffloadTap(sys.argv[1], Counters())
tap.open()
link = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", tap.name],
                                 capture_output=True, check=True).stdout)[0]
print(json.dumps({"vnet": tap.vnet_hdr_len, "offloads": tap.offloads,
                  "gso_max_size": link.get("gso_max_size"), "batch": tap.read_batch()}))
"""


class RealTapTests(SynchronousTestCase):
    """The same class against the kernel's TAP, inside a namespace of our own."""

    def test_real_device(self) -> None:
        reason = skip_reason()
        if reason:
            raise self.skipTest(reason)
        lab = Lab(tag="p")
        self.addCleanup(lab.teardown)
        ns = lab.netns("t")
        out = lab.ns_run(ns, sys.executable, "-c", PROBE, lab.name("tap"))
        got = json.loads(out.stdout)
        self.assertEqual(got["vnet"], 12)
        self.assertTrue(got["offloads"] & T.TUN_F_TSO4)
        self.assertTrue(got["offloads"] & T.TUN_F_CSUM)
        self.assertEqual(got["gso_max_size"], 60000)
        self.assertEqual(got["batch"], [])  # non-blocking: nothing waiting, no hang
