"""The local allocator: pool, stickiness, expiry, quarantine, durability."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wow.dhcp.allocator import IAllocator, LocalAllocator, default_pool
from wow.metrics import Counters

NET = IPv4Network("10.9.0.0/24")
GW = IPv4Address("10.9.0.1")
A = b"\x02\x00\x00\x00\x00\x0a"
B = b"\x02\x00\x00\x00\x00\x0b"
C = b"\x02\x00\x00\x00\x00\x0c"


class AllocatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp() + "-leases.json")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.counters = Counters()

    def make(self, **kw: Any) -> LocalAllocator:
        return LocalAllocator(self.path, NET, GW, self.clock, self.counters, **kw)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAllocator, self.make()))

    def test_default_pool_skips_network_broadcast_gateway(self) -> None:
        self.assertEqual(default_pool(NET, GW),
                         (IPv4Address("10.9.0.2"), IPv4Address("10.9.0.254")))
        self.assertEqual(default_pool(NET, IPv4Address("10.9.0.254")),
                         (IPv4Address("10.9.0.1"), IPv4Address("10.9.0.253")))

    def test_offer_is_stable_per_client_and_distinct_between_clients(self) -> None:
        alloc = self.make()
        a1 = self.successResultOf(alloc.offer(A, None, None))
        a2 = self.successResultOf(alloc.offer(A, None, None))
        b = self.successResultOf(alloc.offer(B, None, None))
        self.assertEqual(a1.ip, IPv4Address("10.9.0.2"))
        self.assertEqual(a1.ip, a2.ip)
        self.assertNotEqual(a1.ip, b.ip)

    def test_requested_address_honoured_when_free(self) -> None:
        alloc = self.make()
        lease = self.successResultOf(alloc.offer(A, None, IPv4Address("10.9.0.77")))
        self.assertEqual(lease.ip, IPv4Address("10.9.0.77"))
        other = self.successResultOf(alloc.offer(B, None, IPv4Address("10.9.0.77")))
        self.assertNotEqual(other.ip, IPv4Address("10.9.0.77"))
        outside = self.successResultOf(alloc.offer(C, None, IPv4Address("10.8.0.5")))
        self.assertIn(outside.ip, NET)

    def test_commit_refuses_other_clients_address_and_outside_pool(self) -> None:
        alloc = self.make()
        ip = self.successResultOf(alloc.offer(A, None, None)).ip
        self.assertIsNotNone(self.successResultOf(alloc.commit(A, None, ip, 100)))
        self.assertIsNone(self.successResultOf(alloc.commit(B, None, ip, 100)))
        self.assertIsNone(self.successResultOf(alloc.commit(B, None, GW, 100)))
        self.assertIsNone(self.successResultOf(alloc.commit(B, None, IPv4Address("10.9.1.3"), 100)))

    def test_client_id_identifies_the_client(self) -> None:
        alloc = self.make()
        ip = self.successResultOf(alloc.commit(A, b"\x01abc", IPv4Address("10.9.0.9"), 100)).ip
        # Same client id behind another MAC: same client.
        self.assertEqual(self.successResultOf(alloc.offer(B, b"\x01abc", None)).ip, ip)
        # Same MAC without the client id: another client.
        self.assertNotEqual(self.successResultOf(alloc.offer(A, None, None)).ip, ip)

    def test_same_client_same_address_after_restart_and_release(self) -> None:
        alloc = self.make()
        ip = self.successResultOf(alloc.offer(A, None, None)).ip
        self.successResultOf(alloc.commit(A, None, ip, 100, "alpha", "alpha.wow"))
        again = self.make()
        lease = self.successResultOf(again.lookup(A, None))
        self.assertEqual((lease.ip, lease.hostname, lease.fqdn), (ip, "alpha", "alpha.wow"))
        self.assertTrue(self.successResultOf(again.release(A, None, ip)))
        self.assertEqual(self.successResultOf(again.leases()), [])
        # Another client gets a never-used address, A gets its old one back.
        third = self.make()
        self.assertNotEqual(self.successResultOf(third.offer(B, None, None)).ip, ip)
        self.assertEqual(self.successResultOf(third.offer(A, None, None)).ip, ip)

    def test_expiry(self) -> None:
        alloc = self.make(pool_start=IPv4Address("10.9.0.10"),
                          pool_end=IPv4Address("10.9.0.11"))
        ip_a = self.successResultOf(alloc.commit(A, None, IPv4Address("10.9.0.10"), 30)).ip
        self.successResultOf(alloc.commit(B, None, IPv4Address("10.9.0.11"), 30))
        self.assertIsNone(self.successResultOf(alloc.offer(C, None, None)))
        self.assertEqual(self.counters.get("dhcp_pool_exhausted"), 1)
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(alloc.leases()), [])
        self.assertIsNone(self.successResultOf(alloc.lookup(A, None)))
        # Expired: the pool is full of stale records; C gets the oldest one.
        self.assertIn(self.successResultOf(alloc.offer(C, None, None)).ip,
                      {ip_a, IPv4Address("10.9.0.11")})

    def test_offer_hold_then_free(self) -> None:
        alloc = self.make(pool_start=IPv4Address("10.9.0.10"),
                          pool_end=IPv4Address("10.9.0.10"), offer_hold=5)
        self.successResultOf(alloc.offer(A, None, None))
        self.assertIsNone(self.successResultOf(alloc.offer(B, None, None)))
        self.clock.advance(6)
        lease = self.successResultOf(alloc.offer(B, None, None))
        self.assertEqual(lease.ip, IPv4Address("10.9.0.10"))

    def test_decline_quarantines(self) -> None:
        alloc = self.make(pool_start=IPv4Address("10.9.0.10"),
                          pool_end=IPv4Address("10.9.0.11"), quarantine=100)
        ip = self.successResultOf(alloc.offer(A, None, None)).ip
        self.assertTrue(self.successResultOf(alloc.decline(A, None, ip)))
        self.assertFalse(self.successResultOf(alloc.decline(B, None, ip)))
        self.assertNotEqual(self.successResultOf(alloc.offer(A, None, None)).ip, ip)
        self.assertIsNone(self.successResultOf(alloc.commit(B, None, ip, 10)))
        # Quarantine survives a restart.
        again = self.make(pool_start=IPv4Address("10.9.0.10"),
                          pool_end=IPv4Address("10.9.0.11"), quarantine=100)
        self.assertIsNone(self.successResultOf(again.commit(C, None, ip, 10)))
        self.clock.advance(101)
        self.assertIsNotNone(self.successResultOf(again.commit(C, None, ip, 10)))

    def test_release_by_someone_else_refused(self) -> None:
        alloc = self.make()
        ip = self.successResultOf(alloc.commit(A, None, IPv4Address("10.9.0.5"), 100)).ip
        self.assertFalse(self.successResultOf(alloc.release(B, None, ip)))
        self.assertEqual(len(self.successResultOf(alloc.leases())), 1)

    def test_group_commit_writes_once_then_fires(self) -> None:
        alloc = self.make(group_commit=True)
        ds = [alloc.commit(bytes([2, 0, 0, 0, 0, i]), None, IPv4Address(f"10.9.0.{10 + i}"), 60)
              for i in range(5)]
        ds.append(alloc.release(bytes([2, 0, 0, 0, 0, 0]), None, IPv4Address("10.9.0.10")))
        self.assertEqual([d.called for d in ds], [False] * 6)
        self.assertFalse(os.path.exists(self.path))
        self.clock.advance(0)
        self.assertEqual([d.called for d in ds], [True] * 6)
        self.assertEqual(self.counters.get("lease_file_writes"), 1)
        again = self.make()
        self.assertEqual(len(self.successResultOf(again.leases())), 4)

    def test_group_commit_failure_fails_every_waiter(self) -> None:
        alloc = self.make(group_commit=True)
        alloc.path = os.path.join(self.mktemp(), "missing-dir", "leases.json")
        d1 = alloc.commit(A, None, IPv4Address("10.9.0.10"), 60)
        d2 = alloc.commit(B, None, IPv4Address("10.9.0.11"), 60)
        self.clock.advance(0)
        self.failureResultOf(d1, FileNotFoundError)
        self.failureResultOf(d2, FileNotFoundError)

    def test_corrupt_file_is_kept_aside(self) -> None:
        with open(self.path, "w") as f:
            f.write("{not json")
        alloc = self.make()
        self.assertEqual(self.successResultOf(alloc.leases()), [])
        self.assertTrue(os.path.exists(self.path + ".corrupt"))
        self.assertEqual(self.counters.get("lease_file_errors", reason="corrupt"), 1)

    def test_file_is_private_json(self) -> None:
        alloc = self.make()
        self.successResultOf(alloc.commit(A, None, IPv4Address("10.9.0.5"), 100, "h"))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        with open(self.path) as f:
            data = json.load(f)
        self.assertEqual(data["leases"][0]["ip"], "10.9.0.5")


CHURN = r"""
import sys
from ipaddress import IPv4Address, IPv4Network
from twisted.internet.task import Clock
from wow.dhcp.allocator import LocalAllocator
clock = Clock(); clock.advance(1000)
alloc = LocalAllocator(sys.argv[1], IPv4Network("10.9.0.0/22"), IPv4Address("10.9.0.1"), clock)
print("started", flush=True)
i = 0
while True:
    mac = (i % 300).to_bytes(6, "big")
    lease = alloc.offer(mac, None, None).result
    alloc.commit(mac, None, lease.ip, 3600, f"h{i}")
    if i % 7 == 0:
        alloc.release(mac, None, lease.ip)
    i += 1
"""


class KillNineTests(SynchronousTestCase):
    """A lease file written by a process killed mid-churn is always whole."""

    def test_kill_9_mid_churn(self) -> None:
        path = os.path.abspath(self.mktemp() + "-leases.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for delay in (0.3, 0.45, 0.6):
            proc = subprocess.Popen([sys.executable, "-c", CHURN, path], cwd=root,
                                    stdout=subprocess.PIPE,
                                    env={**os.environ, "PYTHONPATH": root})
            assert proc.stdout is not None
            self.assertEqual(proc.stdout.readline().strip(), b"started")
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            with open(path) as f:
                data = json.load(f)  # never torn
            ips = [r["ip"] for r in data["leases"] if r["state"] == "bound"]
            self.assertGreater(len(data["leases"]), 0)
            self.assertEqual(len(ips), len(set(ips)))
            clock = Clock()
            clock.advance(1000)
            alloc = LocalAllocator(path, IPv4Network("10.9.0.0/22"), IPv4Address("10.9.0.1"),
                                   clock)
            bound = self.successResultOf(alloc.leases())
            self.assertEqual(sorted(str(lease.ip) for lease in bound), sorted(ips))
