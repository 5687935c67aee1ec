"""
End-to-end security for real: wow-nodes with [security] on, the community
CA (wow-ca) on the public node, automatic enrolment over the virtual network.

Five hosts on the demo's "internet" bridge (the demo's own runner builds
and starts them, with a flat topology): C{pub} (the public node, runs the
CA at 10.128.0.2), C{a} and C{b} (enrolled), C{u} (never enrolled) and
C{c} (given a copy of a's certificate and key).  One test walks through the
issue's list, each step asserting the outcome:

 - u pings pub but not a (dropped as not-enrolled on u);
 - a pings pub and b; a's C{wow peers} shows b secured, cipher and serial;
 - the underlay (tcpdump on the bridge) never carries a→b's ping payload in
   clear, though a→pub's (in clear, public) shows the detector works;
 - the captured a→b frames, replayed on the wire, are rejected by b's
   session (counted as replays) and deliver nothing;
 - packets a sends from a second leased IP (a macvlan on its TAP) reach b
   through the session but are dropped: not the certificate's IP;
 - c, holding a's certificate and key at another IP and overlay address,
   is refused by b;
 - a's certificate revoked at the CA: b tears down a's sessions within 30 s
   (CRL fetched on the schedule and flooded through the overlay) and a can
   no longer reach b; c, which fetches no CRL, gets it through the overlay.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_security_netns import udp_payloads
from wow.demo.wan import CA_ADDRESS, PORT, DemoNode, DemoWan
from wow.lab.netns import HERE, Lab, skip_reason
from wow.lab.wan import Internet

SECRET = "WOW-SECRET!"
PATTERN = SECRET.encode().hex()
#: Replays a list of Ethernet frames (hex, on stdin) out of one interface.
#: The UDP checksum is cleared (0: none): a veth capture holds it unfinished.
REPLAY = (
    "import json, socket, sys\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    "s.bind((sys.argv[1], 0))\n"
    "for h in json.load(sys.stdin):\n"
    "    f = bytearray.fromhex(h); u = 14 + (f[14] & 15) * 4; f[u + 6:u + 8] = bytes(2)\n"
    "    s.send(f)\n"
)


class FlatWan(DemoWan):
    """The demo's runner on a flat internet: every host public."""

    NAMES = ("pub", "a", "b", "u", "c")

    def build(self) -> None:
        self.net = net = Internet(self.lab)
        for name in self.NAMES:
            self.nodes.append(self._node(name, net.add_public_host(name)))


def ethernet_frames(pcap: bytes, src: str, dst: str) -> list[bytes]:
    """The Ethernet frames of UDP from C{src} to C{dst} in a classic pcap."""
    import socket
    import struct

    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    out, offset = [], 24
    while offset + 16 <= len(pcap):
        incl = struct.unpack(endian + "IIII", pcap[offset:offset + 16])[2]
        frame = pcap[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        if len(frame) >= 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17 \
                and frame[26:30] == s and frame[30:34] == d:
            out.append(frame)
    return out


class SecurityIntegrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = skip_reason("dhclient", "ping", "tcpdump", "iperf3")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="sc")
        self.addCleanup(self.lab.teardown)
        self.log: list[str] = []
        self.wan = FlatWan(self.lab, self.log.append)
        # crl_refresh stays the demo's 300 s: the fetch period scales with the
        # overlay's size (5 nodes: every 10-22 s), and the first fetch floods.
        # The fast path (super-frames as four 16 KB records, GSO/GRO) carries the
        # secured traffic.
        self.wan.extra_config = "[tap]\noffload = true\n"

    # -- helpers -----------------------------------------------------------

    def node(self, name: str) -> DemoNode:
        return next(n for n in self.wan.nodes if n.name == name)

    def ping(self, src: DemoNode, ip: str, count: int = 1, *extra: str) -> bool:
        return self.lab.ns_run(src.ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2",
                               *extra, ip, check=False, timeout=30).returncode == 0

    def eventually_ping(self, src: DemoNode, ip: str, timeout: float = 30) -> None:
        self.lab.wait_until(lambda: self.ping(src, ip), timeout=timeout, interval=0.5,
                            what=f"ping {src.name} -> {ip}")

    def count(self, node: DemoNode, name: str, **labels: str) -> float:
        series = node.ctl("counters").get(name, {})
        want = {f"{k}={v}" for k, v in labels.items()}
        return sum(v for k, v in series.items() if want <= set(k.split(",")))

    def secured_peer(self, node: DemoNode, other: DemoNode) -> dict[str, Any] | None:
        address = node_address(other)
        for p in node.ctl("peers"):
            if p["address"] == address and p.get("secured"):
                return p  # type: ignore[no-any-return]
        return None

    def cli(self, node: DemoNode, command: str) -> str:
        """The output of C{wow COMMAND} against C{node}'s control socket."""
        out = subprocess.run([sys.executable, "-m", "wow", command, "--socket", node.socket],
                             capture_output=True, text=True, timeout=30, cwd=HERE)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def certificate(self, node: DemoNode) -> dict[str, Any]:
        return node.ctl("security")["status"].get("certificate") or {}  # type: ignore

    # -- the test ------------------------------------------------------------

    def test_security(self) -> None:
        wan, lab = self.wan, self.lab
        wan.build()
        pub, a, b, u, c = (self.node(n) for n in FlatWan.NAMES)
        ca_url = f"https://{CA_ADDRESS}:8443"
        for n in (pub, a, b, u):
            wan.start_node(n, ca_url if n in (a, b) else "")
        wan.wait_for("joined", lambda n: "joined" in n.steps, [pub, a, b, u], timeout=60)
        wan.start_dhclient(pub, requested=CA_ADDRESS)
        wan.wait_for("pub's lease", lambda n: bool(n.ip), [pub], timeout=60)
        wan.start_ca(pub)
        for n in (a, b, u):
            wan.start_dhclient(n)
        wan.wait_for("leases", lambda n: bool(n.ip), [a, b, u], timeout=60)
        lab.wait_until(lambda: all(self.certificate(n) for n in (a, b)), timeout=120,
                       interval=1, what="a and b enrolled and their certificates loaded")

        # An unenrolled node reaches the public node, not a private one.
        self.eventually_ping(u, pub.ip)
        self.assertFalse(self.ping(u, a.ip, 2))
        lab.wait_until(lambda: self.count(u, "security_packets_dropped", reason="not-enrolled")
                       > 0, timeout=10, what="u's packets to a dropped as not-enrolled")
        self.assertEqual(u.ctl("status")["security"]["certificate"],
                         "not enrolled (host.pem is missing)")

        # An enrolled node reaches both; its peer is secured, with cipher and serial.
        self.eventually_ping(a, pub.ip)
        self.eventually_ping(a, b.ip)
        peer = self.secured_peer(a, b)
        assert peer is not None, a.ctl("peers")
        self.assertEqual(peer["serial"], self.certificate(b)["serial"])
        self.assertRegex(peer["cipher"], r"ECDHE-ECDSA-(AES\d+-GCM|CHACHA20)")
        self.assertEqual(peer["peer_ip"], b.ip)
        self.assertEqual(a.ctl("status")["security"]["certificate"], "valid")
        self.assertRegex(self.cli(a, "peers"),
                         rf"{node_address(b)} .* yes +ECDHE-ECDSA-\S+ +{peer['serial']}")
        self.assertRegex(self.cli(a, "status"), r"certificate:? +valid")
        self.assertRegex(self.cli(u, "status"), r"certificate:? +not enrolled")

        # TCP between a and b: offloaded super-frames, secured, on the fast path.
        fast = self.count(b, "overlay_fastpath_messages")
        server = lab.spawn(b.ns, ["iperf3", "-s", "-1", "-B", b.ip], "iperf3-s")
        time.sleep(0.5)
        out = lab.ns_run(a.ns, "iperf3", "-c", b.ip, "-t", "2", "-J", timeout=60)
        lab.stop(server)
        self.assertGreater(json.loads(out.stdout)["end"]["sum_received"]["bytes"], 10_000_000)
        self.assertGreater(self.count(b, "overlay_fastpath_messages"), fast + 100)
        self.assertEqual(self.count(b, "security_packets_dropped"), 0)

                # The underlay: a→b's payload never in clear (a→pub's is: public).
        pcap_path = os.path.join(lab.workdir, "bridge.pcap")
        dump = lab.spawn(wan.net.ns, ["tcpdump", "-i", wan.net.bridge, "-n", "-U",  # type: ignore
                                      "--immediate-mode", "-s", "0", "-w", pcap_path, "udp"],
                         "tcpdump")
        lab.wait_for_log(dump, "listening on")
        self.assertTrue(self.ping(a, b.ip, 5, "-p", PATTERN, "-s", "200"))
        self.assertTrue(self.ping(a, pub.ip, 2, "-p", PATTERN, "-s", "200"))
        time.sleep(0.5)
        lab.stop(dump)
        with open(pcap_path, "rb") as f:
            pcap = f.read()
        to_b = udp_payloads(pcap, a.host.address, PORT)
        secured = [p for p in ethernet_frames(pcap, a.host.address, b.host.address)]
        self.assertGreaterEqual(len(secured), 5)
        self.assertFalse(any(SECRET.encode() in p for p in secured))
        self.assertTrue(to_b)
        clear = ethernet_frames(pcap, a.host.address, pub.host.address)
        self.assertTrue(any(SECRET.encode() in p for p in clear), "the detector sees clear text")

        # Replayed a→b frames: rejected by b's session, nothing delivered.
        forwarded = self.count(b, "ip_forwarded", direction="in")
        replays = self.count(b, "security_records_dropped", reason="replay")
        lab.ns_run(a.ns, sys.executable, "-c", REPLAY, "eth0",
                   input=("[" + ",".join(f'"{f.hex()}"' for f in secured) + "]").encode())
        lab.wait_until(lambda: self.count(b, "security_records_dropped", reason="replay")
                       >= replays + 5, timeout=10, what="b counted the replays")
        self.assertEqual(self.count(b, "ip_forwarded", direction="in"), forwarded)

        # A second leased IP on a's TAP: through the session, but not the
        # certificate's IP: dropped by b.
        mv = lab.name("mv")
        lab.ns_run(a.ns, "ip", "link", "add", "link", a.tap, "name", mv, "type", "macvlan",
                   "mode", "bridge")
        lab.ns_run(a.ns, "ip", "link", "set", mv, "up")
        lab.spawn(a.ns, ["dhclient", "-d", "-4", "-1", "-pf", os.path.join(a.work, "mv.pid"),
                         "-lf", os.path.join(a.work, "mv.leases"), "-sf", "/bin/true", mv],
                  "a/dhclient-mv")
        second = self.wait_second_lease(a)
        lab.ns_run(a.ns, "ip", "addr", "add", f"{second}/32", "dev", mv)
        self.assertFalse(self.ping(a, b.ip, 3, "-I", second))
        self.assertGreater(self.count(b, "security_packets_dropped", reason="forged-source"), 0)
        self.assertTrue(self.ping(a, b.ip))  # the real IP still works

        # A copy of a's certificate and key on another node: refused.
        c_state = os.path.join(c.work, "state")
        for name in ("host.pem", "host.key", "ca.pem"):
            shutil.copy(os.path.join(a.work, "state", name), os.path.join(c_state, name))
        wan.start_node(c, "")
        wan.start_dhclient(c)
        wan.wait_for("c's lease", lambda n: bool(n.ip), [c], timeout=60)
        self.eventually_ping(c, pub.ip)
        self.assertFalse(self.ping(c, b.ip, 3))
        self.assertIsNone(self.secured_peer(b, c))
        refused = self.count(b, "security_handshakes_refused", reason="overlay-mismatch") + \
            self.count(c, "security_handshakes_refused", reason="overlay-mismatch")
        self.assertGreater(refused, 0)

        # Revocation: a's sessions torn down within 30 s of the CRL's publication.
        self.assertIsNotNone(self.secured_peer(b, a))
        revoked = subprocess.run(
            [sys.executable, "-m", "wow", "ca", "revoke", a.ip, "--state-dir",
             os.path.join(lab.workdir, "ca")], capture_output=True, text=True, timeout=30,
            cwd=HERE)
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        published = time.monotonic()
        lab.wait_until(lambda: self.secured_peer(b, a) is None, timeout=30, interval=0.5,
                       what="b tore down a's session")
        took = time.monotonic() - published
        self.assertLess(took, 30)
        self.log.append(f"revocation took effect on b after {took:.1f} s")
        self.assertFalse(self.ping(a, b.ip, 2))
        self.assertGreater(self.count(b, "security_sessions_revoked"), 0)
        # c fetches no CRL (no [ca] url): the new one reached it through the
        # overlay, verified against the CA, and names c's copied certificate.
        lab.wait_until(lambda: self.certificate(c).get("revoked"), timeout=20, interval=0.5,
                       what="the CRL pushed to c")
        self.assertGreaterEqual(self.count(c, "security_crl_applied", source="overlay"), 1)
        self.assertEqual(self.count(c, "security_crl_applied", source="fetch"), 0)
        self.assertEqual(c.ctl("status")["security"]["certificate"], "REVOKED")

    def wait_second_lease(self, a: DemoNode) -> str:
        path = os.path.join(a.work, "mv.leases")

        def leased() -> str | None:
            try:
                with open(path) as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            found = [ln.split()[1].rstrip(";") for ln in text.splitlines()
                     if ln.strip().startswith("fixed-address")]
            return found[-1] if found else None

        self.lab.wait_until(lambda: leased() is not None, timeout=30, interval=0.5,
                            what="a second lease on a's TAP")
        ip = leased()
        assert ip is not None and ip != a.ip
        return ip


def node_address(node: DemoNode) -> str:
    return str(node.ctl("status")["overlay"]["address"])
