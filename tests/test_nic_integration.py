"""
The virtual NIC for real: wow-node in a namespace, unmodified DHCP clients
(ISC dhclient, busybox udhcpc) on its TAP, arping, raw malformed frames, and
the one-sentence start-up failures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import HERE, Lab, skip_reason
from wow.demo.topology import UDHCPC_EVENTS, Lease, NodeSite

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
SKIP = skip_reason("dhclient", "busybox", "arping")


class DhcpClientsTests(SynchronousTestCase):
    if SKIP:
        skip = SKIP

    def site(self, **kw: Any) -> NodeSite:
        lab = Lab(tag="n")
        self.addCleanup(lab.teardown)
        return NodeSite(lab, **kw)

    def test_dhclient_lease_renew_arping_release_restart(self) -> None:
        n = self.site(lease_time=10)
        n.start()
        client = n.dhclient()
        lease = n.lease(n.wait_event("BOUND"))
        # ip, mask, DNS, domain, lease time, MTU as the client applied them.
        self.assertEqual(lease, Lease(lease.ip, "255.255.0.0", "10.128.0.1", "wow", "10", "1360"))
        (record,) = n.leases()
        self.assertEqual((record["ip"], record["hostname"]), (lease.ip, "wowdemo"))
        self.assertEqual(n.addresses(), [lease.ip + "/16"])

        # T1 = 5 s: the client renews (unicast) and the node ACKs it.
        n.wait_event("RENEW", timeout=20)
        self.assertGreaterEqual(n.counter("dhcp_acks", "state=renewing"), 1)
        self.assertEqual(n.addresses(), [lease.ip + "/16"])

        # arping another virtual address: the router MAC answers.
        router_mac = n.control("status")["nic"]["router_mac"]
        out = n.lab.ns_run(n.ns, "arping", "-c", "1", "-w", "5", "-I", n.tap, "10.128.77.77")
        self.assertIn(router_mac.upper(), out.stdout.decode())

        # Release: the node frees the address.
        n.dhclient_release()
        n.lab.wait_until(lambda: n.leases() == [], timeout=10, what="lease released")
        self.assertEqual(n.counter("dhcp_releases"), 1)
        cli = subprocess.run([sys.executable, "-m", "wow", "leases", "--json", "--state-dir",
                              n.state], capture_output=True, text=True, timeout=30, cwd=HERE)
        self.assertEqual((cli.returncode, json.loads(cli.stdout)), (0, []))
        n.lab.stop(client)

        # Restart the node: the same host (same TAP MAC) gets the same address,
        # even with a fresh client lease file (a plain DISCOVER).
        n.stop()
        os.unlink(os.path.join(n.workdir, "dhclient.leases"))
        n.start()
        second = n.dhclient("dhclient2")
        self.assertEqual(n.lease(n.wait_event("BOUND", count=2)).ip, lease.ip)
        self.assertEqual([r["ip"] for r in n.leases()], [lease.ip])
        self.assertEqual(n.addresses(), [lease.ip + "/16"])

        # A client that remembers its lease asks for it again (INIT-REBOOT).
        n.lab.stop(second)
        n.dhclient("dhclient3")
        self.assertEqual(n.lease(n.wait_event("REBOOT")).ip, lease.ip)
        self.assertGreaterEqual(n.counter("dhcp_acks", "state=init-reboot"), 1)

    def test_udhcpc_lease_release_and_malformed_frames(self) -> None:
        n = self.site()
        n.start()
        # Garbage straight onto the TAP from the host side (a raw packet socket).
        n.lab.ns_run(n.ns, sys.executable, "-c", RAW_SENDER, n.tap)
        n.lab.wait_until(lambda: n.counter("frames_dropped", "reason=bad-ipv4") >= 1
                         and n.counter("frames_dropped", "reason=bad-arp") >= 1
                         and n.counter("frames_dropped", "reason=bad-dhcp") >= 1,
                         timeout=10, what="malformed frames counted")
        self.assertGreaterEqual(n.counter("frames_dropped", "reason=bad-udp"), 1)
        for command, needle in (("status", f"tap: {n.tap}"),
                                ("counters", 'frames_dropped{reason=bad-ipv4}')):
            cli = subprocess.run([sys.executable, "-m", "wow", command, "--state-dir", n.state],
                                 capture_output=True, text=True, timeout=30, cwd=HERE)
            self.assertEqual(cli.returncode, 0, cli.stderr)
            self.assertIn(needle, cli.stdout)
        # ...and the node keeps serving.
        client = n.udhcpc()
        lease = n.lease(n.wait_event("bound", UDHCPC_EVENTS))
        (record,) = n.leases()
        self.assertEqual((record["ip"], record["hostname"]), (lease.ip, "wowudhcpc"))
        self.assertEqual(n.addresses(), [lease.ip + "/16"])
        # SIGUSR2: udhcpc releases its lease.
        with open(os.path.join(n.workdir, "udhcpc.pid")) as f:
            os.kill(int(f.read()), signal.SIGUSR2)
        n.lab.wait_until(lambda: n.leases() == [], timeout=10, what="lease released")
        n.lab.stop(client)
        self.assertTrue(n.node is not None and n.node.poll() is None)

    def test_bridge_of_vms_each_get_their_own_lease(self) -> None:
        n = self.site()
        n.start()
        br = n.lab.bridge(n.ns, "br")
        n.lab.ns_run(n.ns, "ip", "link", "set", n.tap, "master", br)
        ips = []
        for i in (1, 2):
            vm = n.lab.netns(f"vm{i}")
            inside, outside = n.lab.veth(vm, n.ns, f"v{i}")
            n.lab.ns_run(n.ns, "ip", "link", "set", outside, "master", br)
            work = os.path.join(n.lab.workdir, f"vm{i}")
            n.udhcpc(ns=vm, dev=inside, workdir=work)
            ips.append(n.lease(n.wait_event("bound", UDHCPC_EVENTS, workdir=work)).ip)
        self.assertEqual(len(set(ips)), 2)
        self.assertEqual(sorted(r["ip"] for r in n.leases()), sorted(ips))
        self.assertEqual(len({r["mac"] for r in n.leases()}), 2)


#: Sent from inside the namespace: malformed frames of every layer.
RAW_SENDER = r"""
import socket, struct, sys
from ipaddress import IPv4Address
from wow.net.ethernet import EthernetFrame, build_ethernet, BROADCAST, ETH_P_IP, ETH_P_ARP
from wow.net.ipv4 import IPv4Packet, build_ipv4
from wow.net.udp import UDPDatagram, build_udp
src = b"\x02\x00\x00\x00\x00\x99"
zero, bcast = IPv4Address(0), IPv4Address("255.255.255.255")
def eth(t, p): return build_ethernet(EthernetFrame(BROADCAST, src, t, p))
good_udp = build_udp(UDPDatagram(68, 67, b"not dhcp at all"), zero, bcast)
bad_udp = bytearray(build_udp(UDPDatagram(68, 67, b"x" * 300), zero, bcast)); bad_udp[6] ^= 0xFF
frames = [
    b"\x01" * 20,                                          # unknown 802.3 length frame
    eth(ETH_P_IP, b"\x45\x00\x00"),                        # truncated IPv4
    eth(ETH_P_IP, b"\x46" + b"\x00" * 30),                 # IPv4 with a bad checksum
    eth(ETH_P_ARP, b"\x00\x01\x08\x00"),                   # truncated ARP
    eth(ETH_P_IP, build_ipv4(IPv4Packet(zero, bcast, 17, good_udp))),     # not DHCP
    eth(ETH_P_IP, build_ipv4(IPv4Packet(zero, bcast, 17, bytes(bad_udp)))),  # bad UDP sum
]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for f in frames:
    s.send(f)
"""


class StartupFailureTests(SynchronousTestCase):
    """Known start-up failures: one sentence on stderr, non-zero exit, no traceback."""

    if SKIP:
        skip = SKIP

    def run_node(self, lab: Lab, ns: str, *args: str, hide_tun: bool = False
                 ) -> tuple[int, str]:
        pidfile = os.path.join(lab.workdir, f"fail-{time.monotonic_ns()}.pid")
        env = dict(os.environ, PYTHONPATH=HERE)
        argv = [*TWISTD, "-n", "--pidfile", pidfile, "wow-node", *args]
        if hide_tun:
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs none /dev/net && exec "$@"', "sh", *argv]
        result = subprocess.run(lab.ns_argv(ns, argv),
                                capture_output=True, timeout=60, cwd=HERE, env=env)
        return result.returncode, result.stderr.decode()

    def assertOneSentence(self, code: int, stderr: str, needle: str) -> None:
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("wow-node: ") and lines[0].endswith("."), lines[0])
        self.assertIn(needle, lines[0])

    def test_failures(self) -> None:
        lab = Lab(tag="n")
        self.addCleanup(lab.teardown)
        ns = lab.netns("f")
        state = os.path.join(lab.workdir, "state")
        veth, _ = lab.veth(ns, ns, "v")

        code, err = self.run_node(lab, ns, "--tap", veth, "--state-dir", state)
        self.assertOneSentence(code, err, f"{veth} is already used by a device that is not a TAP")

        # A TAP held by a running node is busy for a second one.
        tap = lab.name("t")
        first = lab.twistd(ns, "wow-node", ["--tap", tap, "--state-dir", state], "first")
        lab.wait_for_log(first, "wow-node ready")
        code, err = self.run_node(lab, ns, "--tap", tap, "--state-dir", state + "2")
        self.assertOneSentence(code, err, f"the TAP device {tap} is in use by another process")
        lab.stop(first)

        # No /dev/net/tun: hide it behind an empty tmpfs in a private mount namespace.
        code, err = self.run_node(lab, ns, "--tap", tap, "--state-dir", state,
                                  hide_tun=True)
        self.assertOneSentence(code, err, "/dev/net/tun does not exist")

        code, err = self.run_node(lab, ns, "--tap", "x" * 16, "--state-dir", state)
        self.assertOneSentence(code, err, "must be 1 to 15 characters long")
        code, err = self.run_node(lab, ns, "--config", "/nonexistent/wow-node.toml")
        self.assertOneSentence(code, err, "does not exist")
        for text, needle in (('[tap]\nspeed = 1\n', "unknown setting tap.speed"),
                             ('[network]\nsubnet = "10.1.0.0/33"\n', "not a valid subnet")):
            path = os.path.join(lab.workdir, "bad.toml")
            with open(path, "w") as f:
                f.write(text)
            code, err = self.run_node(lab, ns, "--config", path)
            self.assertOneSentence(code, err, needle)

    def test_not_root(self) -> None:
        if subprocess.run(["which", "setpriv"], capture_output=True).returncode != 0:
            raise self.skipTest("needs setpriv")
        lab = Lab(tag="n")
        self.addCleanup(lab.teardown)
        ns = lab.netns("r")
        os.chmod(lab.workdir, 0o777)
        state = os.path.join(lab.workdir, "state")
        env = dict(os.environ, PYTHONPATH=HERE)
        result = subprocess.run(
            lab.ns_argv(ns, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *TWISTD, "-n", "--pidfile", os.path.join(lab.workdir, "x.pid"),
                             "wow-node", "--state-dir", state]),
            capture_output=True, timeout=60, cwd=HERE, env=env)
        self.assertOneSentence(result.returncode, result.stderr.decode(), "must run as root")
