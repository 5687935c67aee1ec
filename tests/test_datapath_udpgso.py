"""
UDP GSO/GRO: batching within the kernel's limits, fallbacks when the kernel
or the path refuses, drains until EAGAIN -- with a fake socket, and once for
real over loopback.
"""

from __future__ import annotations

import errno
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from wow.datapath import udpgso
from wow.datapath.testing import FakeUdpSocket
from wow.metrics import Counters

PEER = ("10.0.0.2", 5555)


def pieces(n: int, size: int, last: int | None = None) -> list[bytes]:
    out = [bytes([i % 256]) * size for i in range(n)]
    if last is not None:
        out[-1] = out[-1][:last]
    return out


class SendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.counters = Counters()
        self.sock = FakeUdpSocket()
        self.udp = udpgso.GsoUdp(self.sock, self.counters)

    def test_probe(self) -> None:
        self.assertTrue(self.udp.gso)
        self.assertTrue(self.udp.gro)
        self.assertEqual(self.sock.options[(udpgso.SOL_UDP, udpgso.UDP_GRO)], 1)
        bare = FakeUdpSocket(gso=False, gro=False)
        u = udpgso.GsoUdp(bare, self.counters)
        self.assertEqual((u.gso, u.gro), (False, False))

    def test_one_call_for_a_superframe(self) -> None:
        ps = pieces(41, 1464, last=1000)
        self.udp.send_pieces(ps, PEER)
        self.assertEqual(self.sock.calls, ["sendmsg"])
        self.assertEqual(self.sock.sent, [(ps, PEER)])

    def test_split_at_64_segments(self) -> None:
        ps = pieces(130, 100)
        self.udp.send_pieces(ps, PEER)
        self.assertEqual(self.sock.calls, ["sendmsg"] * 3)
        self.assertEqual([len(g) for g, _ in self.sock.sent], [64, 64, 2])
        self.assertEqual([x for g, _ in self.sock.sent for x in g], ps)

    def test_split_at_65507_bytes(self) -> None:
        ps = pieces(50, 1472)  # 73,600 bytes
        self.udp.send_pieces(ps, PEER)
        self.assertEqual([len(g) for g, _ in self.sock.sent], [44, 6])
        self.assertEqual(udpgso.MAX_GSO_BYTES // 1472, 44)

    def test_single_and_uneven_go_one_by_one(self) -> None:
        self.udp.send_pieces([b"x" * 10], PEER)
        self.udp.send_pieces([b"a" * 10, b"b" * 5, b"c" * 10], PEER)
        self.assertEqual(self.sock.calls, ["sendto"] * 4)

    def test_fallback_when_path_refuses_gso(self) -> None:
        self.sock.gso_send_error = errno.EIO
        ps = pieces(10, 100)
        self.udp.send_pieces(ps, PEER)
        self.assertFalse(self.udp.gso)
        self.assertEqual([g[0] for g, _ in self.sock.sent], ps)
        self.assertEqual(self.counters.get("datapath_gso_disabled", reason="EIO"), 1)
        self.udp.send_pieces(ps, PEER)
        self.assertNotIn("sendmsg", self.sock.calls[1:])

    def test_send_buffer(self) -> None:
        ps = pieces(130, 100, last=40)
        self.udp.send_buffer(b"".join(ps), 100, PEER)
        self.assertEqual(self.sock.calls, ["sendmsg"] * 3)
        self.assertEqual([x for g, _ in self.sock.sent for x in g], ps)
        self.assertEqual(self.udp.datagrams_sent, 130)

    def test_send_buffer_byte_limit_and_lone_tail(self) -> None:
        ps = pieces(45, 1472)  # 44 fit one send; the 45th goes alone
        self.udp.send_buffer(b"".join(ps), 1472, PEER)
        self.assertEqual(self.sock.calls, ["sendmsg", "sendto"])
        self.assertEqual([x for g, _ in self.sock.sent for x in g], ps)

    def test_send_buffer_without_gso(self) -> None:
        sock = FakeUdpSocket(gso=False)
        udp = udpgso.GsoUdp(sock, self.counters)
        ps = pieces(5, 100, last=1)
        udp.send_buffer(b"".join(ps), 100, PEER)
        self.assertEqual(sock.calls, ["sendto"] * 5)
        self.assertEqual([g[0] for g, _ in sock.sent], ps)
        udp.send_buffer(b"small", 100, PEER)
        self.assertEqual(sock.sent[-1], ([b"small"], PEER))

    def test_send_buffer_gso_refused(self) -> None:
        self.sock.gso_send_error = errno.EIO
        ps = pieces(10, 100)
        self.udp.send_buffer(b"".join(ps), 100, PEER)
        self.assertFalse(self.udp.gso)
        self.assertEqual([g[0] for g, _ in self.sock.sent], ps)

    def test_busy_is_counted_not_raised(self) -> None:
        self.sock.send_error = OSError(errno.ENOBUFS, "no buffers")
        self.udp.send_pieces(pieces(10, 100), PEER)
        self.udp.send(b"x", PEER)
        self.sock.send_error = OSError(errno.ECONNREFUSED, "refused")
        self.udp.send(b"x", PEER)
        self.assertEqual(self.counters.get(udpgso.DROPPED, reason="send-busy"), 2)
        self.assertEqual(self.counters.get(udpgso.DROPPED, reason="send-busy-batch"), 9)
        self.assertEqual(self.counters.get(udpgso.DROPPED, reason="refused"), 1)
        self.assertTrue(self.udp.gso)


class ReceiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.counters = Counters()
        self.sock = FakeUdpSocket()
        self.udp = udpgso.GsoUdp(self.sock, self.counters)

    def test_drain_until_eagain(self) -> None:
        self.sock.incoming.extend([(b"a" * 250, 100, PEER), (b"single", 0, PEER),
                                   OSError(errno.ECONNREFUSED, "refused"), (b"x", 0, PEER)])
        got = self.udp.recv_batch()
        self.assertEqual(got, [(b"a" * 250, 100, PEER), (b"single", 0, PEER), (b"x", 0, PEER)])
        self.assertEqual(self.counters.get(udpgso.DROPPED, reason="recv-error"), 1)
        self.assertEqual(self.udp.recv_batch(), [])

    def test_max_calls(self) -> None:
        self.sock.incoming.extend([(b"x", 0, PEER)] * 10)
        self.assertEqual(len(self.udp.recv_batch(max_calls=4)), 4)
        self.assertEqual(len(self.sock.incoming), 6)

    def test_truncated(self) -> None:
        self.sock.incoming.append((b"x" * (udpgso.RECV_BUF + 1), 0, PEER))
        self.assertEqual(self.udp.recv_batch(), [])
        self.assertEqual(self.counters.get(udpgso.DROPPED, reason="truncated"), 1)

    def test_split(self) -> None:
        self.assertEqual([bytes(x) for x in udpgso.split(b"a" * 250, 100)],
                         [b"a" * 100, b"a" * 100, b"a" * 50])
        self.assertEqual([bytes(x) for x in udpgso.split(b"abc", 0)], [b"abc"])
        self.assertEqual([bytes(x) for x in udpgso.split(b"abc", 3)], [b"abc"])


class LoopbackTests(SynchronousTestCase):
    """The real kernel: GSO send, GRO and non-GRO receive over 127.0.0.1."""

    def setUp(self) -> None:
        self.counters = Counters()
        self.a = udpgso.open_udp("127.0.0.1", 0)
        self.b = udpgso.open_udp("127.0.0.1", 0)
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        if not udpgso.probe_gso(self.a):
            raise self.skipTest("kernel without UDP_SEGMENT")

    def drain(self, udp: udpgso.GsoUdp, want: int) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + 5
        while sum(len(x) for x in out) < want and time.monotonic() < deadline:
            for data, seg, _ in udp.recv_batch():
                out += [bytes(x) for x in udpgso.split(data, seg)]
            time.sleep(0.001)
        return out

    def test_gso_to_plain_receiver(self) -> None:
        tx = udpgso.GsoUdp(self.a, self.counters, gro=False)
        rx = udpgso.GsoUdp(self.b, self.counters, gro=False)
        ps = pieces(41, 1464, last=700)
        tx.send_pieces(ps, self.b.getsockname())
        self.assertEqual(tx.sendmsg_calls, 1)
        self.assertEqual(self.drain(rx, sum(map(len, ps))), ps)

    def test_send_buffer_real(self) -> None:
        tx = udpgso.GsoUdp(self.a, self.counters, gro=False)
        rx = udpgso.GsoUdp(self.b, self.counters, gro=False)
        ps = pieces(100, 1000, last=3)
        tx.send_buffer(b"".join(ps), 1000, self.b.getsockname())
        self.assertEqual(tx.sendmsg_calls, 2)
        self.assertEqual(self.drain(rx, sum(map(len, ps))), ps)

    def test_gso_to_gro_receiver(self) -> None:
        tx = udpgso.GsoUdp(self.a, self.counters, gro=False)
        rx = udpgso.GsoUdp(self.b, self.counters)
        if not rx.gro:
            raise self.skipTest("kernel without UDP_GRO")
        ps = pieces(41, 1464, last=700)
        tx.send_pieces(ps, self.b.getsockname())
        calls = []
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < len(ps) and time.monotonic() < deadline:
            batch = rx.recv_batch()
            calls += [seg for _, seg, _ in batch]
            for data, seg, _ in batch:
                got += [bytes(x) for x in udpgso.split(data, seg)]
        self.assertEqual(got, ps)
        # Coalesced: fewer receives than datagrams, with the segment size reported.
        self.assertLess(len(calls), len(ps))
        self.assertIn(1464, calls)

    def test_no_receiver_is_not_an_error(self) -> None:
        tx = udpgso.GsoUdp(self.a, self.counters)
        addr = self.b.getsockname()
        self.b.close()
        for _ in range(3):
            tx.send_pieces(pieces(3, 100), addr)
            tx.recv_batch()
        # An unconnected socket gets no ICMP errors: nothing raised, nothing lost locally.
        self.assertEqual(tx.datagrams_sent, 9)
        self.assertEqual(tx.recv_batch(), [])

    def test_ipv6(self) -> None:
        try:
            a = udpgso.open_udp("::1", 0)
        except OSError:
            raise self.skipTest("no IPv6 loopback") from None
        self.addCleanup(a.close)
        b = udpgso.open_udp("::1", 0)
        self.addCleanup(b.close)
        tx = udpgso.GsoUdp(a, self.counters, gro=False)
        rx = udpgso.GsoUdp(b, self.counters, gro=False)
        ps = pieces(5, 1000)
        tx.send_pieces(ps, b.getsockname()[:2])
        self.assertEqual(self.drain(rx, 5000), ps)
        self.assertEqual(socket.AF_INET6, a.family)
