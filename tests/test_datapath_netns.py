"""
The data path for real: two namespaces joined by a veth pair, a
point-to-point forwarder (L{wow.datapath.forwarder}, a test fixture, not the
overlay) in each, and ping and iperf3 TCP between the TAP addresses.

The mixed case -- one side with offloads, the other a plain TAP -- makes the
real kernel's TCP check every checksum and segment that Python's software
fallback (L{wow.datapath.vnet.segment}) produces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from tests.netns import Lab, skip_reason

UNDER_A, UNDER_B = "10.98.0.1", "10.98.0.2"
TAP_A, TAP_B = "10.97.0.1", "10.97.0.2"


class TwoNamespaces(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = skip_reason("iperf3", "ping")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="p")
        self.addCleanup(self.lab.teardown)
        self.na, self.nb = self.lab.netns("a"), self.lab.netns("b")
        va, vb = self.lab.veth(self.na, self.nb, "v")
        self.lab.addr(self.na, va, UNDER_A + "/24")
        self.lab.addr(self.nb, vb, UNDER_B + "/24")

    def forwarder(self, ns: str, side: str, local: str, peer: str, addr: str,
                  *extra: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "wow.datapath.forwarder", "--tap", self.lab.name("t" + side),
                "--local", f"{local}:5555", "--peer", f"{peer}:5555", "--address", addr + "/24",
                *extra]
        proc = self.lab.spawn(ns, argv, "fwd-" + side)
        self.lab.wait_for_log(proc, "forwarder ready")
        return proc

    def start(self, extra_a: tuple[str, ...] = (), extra_b: tuple[str, ...] = ()
              ) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        fa = self.forwarder(self.na, "a", UNDER_A, UNDER_B, TAP_A, *extra_a)
        fb = self.forwarder(self.nb, "b", UNDER_B, UNDER_A, TAP_B, *extra_b)
        return fa, fb

    def ping(self) -> None:
        self.lab.wait_until(
            lambda: self.lab.ns_run(self.na, "ping", "-c1", "-W1", TAP_B, check=False)
            .returncode == 0, timeout=15, what="first ping reply")
        out = self.lab.ns_run(self.na, "ping", "-c", "5", "-i", "0.05", "-s", "3000", TAP_B)
        self.assertIn(b" 0% packet loss", out.stdout)

    def iperf(self, *extra: str, dst: str = TAP_B, seconds: int = 2) -> float:
        server = self.lab.spawn(self.nb, ["iperf3", "-s", "-1", "-B", dst], "iperf-s")
        self.lab.wait_until(
            lambda: b"LISTEN" in self.lab.ns_run(self.nb, "ss", "-ltn", "sport = :5201",
                                                 check=False).stdout,
            timeout=10, what="iperf3 listening")
        out = self.lab.ns_run(self.na, "iperf3", "-c", dst, "-t", str(seconds), "-J", *extra,
                              timeout=40)
        self.lab.stop(server)
        result = json.loads(out.stdout)
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6

    def stats(self, proc: subprocess.Popen[bytes]) -> dict:  # type: ignore[type-arg]
        self.lab.stop(proc)
        for line in self.lab.log_text(proc).splitlines():
            if line.startswith("stats "):
                return json.loads(line[6:])  # type: ignore[no-any-return]
        self.fail("no stats line:\n" + self.lab.log_text(proc))

    def test_offload(self) -> None:
        """Super-frames both ways: TCP works, and large frames went as reassembled pieces."""
        fa, fb = self.start()
        self.assertIn("vnet_hdr=12", self.lab.log_text(fa))
        self.ping()
        mbps = self.iperf()
        self.assertGreater(mbps, 50)
        # IPv6 inside the tunnel: TSO6 super-frames, checked and written whole too.
        for ns, tap, addr in ((self.na, "ta", "fd97::1"), (self.nb, "tb", "fd97::2")):
            self.lab.ns_run(ns, "ip", "-6", "addr", "add", addr + "/64", "dev",
                            self.lab.name(tap), "nodad")
        self.assertGreater(self.iperf(dst="fd97::2", seconds=1), 50)
        sa, sb = self.stats(fa), self.stats(fb)
        self.assertGreater(sa["superframes_out"], 100)
        self.assertGreater(sb["multi_piece_messages_in"], 100)
        # Far fewer sends than datagrams: GSO carried the pieces.
        self.assertLess(sa["sendmsg_calls"] * 10, sa["datagrams_sent"])
        self.assertEqual(sb["counters"].get("datapath_frames_dropped"), None)

    def test_offload_to_plain(self) -> None:
        """One side offloads, the other is a plain TAP: Python segments for the kernel."""
        fa, fb = self.start(extra_b=("--no-offload",))
        self.assertIn("vnet_hdr=0", self.lab.log_text(fb))
        self.ping()
        self.assertGreater(self.iperf(), 20)
        self.assertGreater(self.iperf("-R"), 20)
        sa, sb = self.stats(fa), self.stats(fb)
        self.assertGreater(sa["superframes_out"], 10)
        self.assertFalse(sb["vnet_hdr"])
        self.assertEqual(sb["counters"].get("datapath_frames_dropped"), None)

    def test_per_packet_path(self) -> None:
        """Both plain: the one-packet-per-call path still works."""
        fa, fb = self.start(("--no-offload",), ("--no-offload",))
        self.ping()
        time.sleep(0.1)
        self.assertGreater(self.iperf(), 10)
        self.assertEqual(self.stats(fa)["sendmsg_calls"], 0)
