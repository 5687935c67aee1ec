"""
The lab's NAT routers behave as their RFC 4787 kind says.

An RFC 5780-style check: a host behind each router sends from one socket to
two rendezvous addresses on the internet, each with two ports; the source
endpoints the rendezvous sockets see tell the mapping behaviour, and which
rendezvous sockets can then reach the host's mapping tells the filtering.
"""

from __future__ import annotations

import json
import textwrap

from twisted.trial.unittest import TestCase

from wow.lab.nat import NatKind
from wow.lab.netns import Lab, skip_reason
from wow.lab.wan import Internet

PROBE = textwrap.dedent(
    """
    import json, socket, sys
    targets = json.loads(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 40000))
    s.settimeout(0.3)
    for host, port in targets:
        s.sendto(b"probe", (host, port))
    seen, heard = set(), set()
    while True:
        try:
            data, addr = s.recvfrom(100)
        except TimeoutError:
            break
        kind, _, value = data.decode().partition(" ")
        (seen if kind == "map" else heard).add(value)
    print(json.dumps({"seen": sorted(seen), "heard": sorted(heard)}))
    """
)

RENDEZVOUS = textwrap.dedent(
    """
    import socket, select, json, sys, time
    ports = [int(p) for p in sys.argv[1:]]
    socks = []
    for ip in ("198.18.0.10", "198.18.0.11", "198.18.0.12"):
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port)); socks.append(s)
    first = {}
    deadline = time.time() + 20
    while time.time() < deadline:
        r, _, _ = select.select(socks, [], [], 0.5)
        for s in r:
            data, addr = s.recvfrom(100)
            s.sendto(f"map {addr[0]}:{addr[1]}".encode(), addr)
            me = "%s:%d" % s.getsockname()
            first.setdefault("mapping", addr)
            if len(first) == 1 and me.endswith(":3478") and me.startswith("198.18.0.10"):
                # after the first probe, every rendezvous socket pokes that mapping
                time.sleep(0.05)
                for other in socks:
                    other.sendto(("poke %s:%d" % other.getsockname()).encode(), addr)
                first["done"] = True
    """
)


class NatKindsTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = skip_reason("nft")
        if reason:
            raise self.skipTest(reason)

    def check(self, kind: NatKind) -> tuple[set[str], list[str]]:
        lab = Lab(tag="L")
        self.addCleanup(lab.teardown)
        net = Internet(lab)
        rv = net.add_public_host("rv")
        for extra in ("198.18.0.11/24", "198.18.0.12/24"):
            lab.ns_run(rv.ns, "ip", "addr", "add", extra, "dev", "eth0")
        site = net.add_site(kind, hosts=1)
        server = lab.spawn(rv.ns, ["python3", "-c", RENDEZVOUS, "3478", "3479"], "rv")
        import time

        time.sleep(0.3)
        targets = [["198.18.0.10", 3478], ["198.18.0.10", 3479], ["198.18.0.11", 3478]]
        out = lab.ns_run(site.hosts[0].ns, "python3", "-c", PROBE, json.dumps(targets))
        lab.stop(server)
        result = json.loads(out.stdout)
        return set(result["seen"]), result["heard"]

    PROBED = ["198.18.0.10:3478", "198.18.0.10:3479", "198.18.0.11:3478"]
    BOTH_ADDRESSES = PROBED + ["198.18.0.11:3479"]
    EVERYONE = BOTH_ADDRESSES + ["198.18.0.12:3478", "198.18.0.12:3479"]

    def test_port_restricted(self) -> None:
        seen, heard = self.check(NatKind.PORT_RESTRICTED)
        self.assertEqual(len(seen), 1)  # endpoint-independent mapping
        self.assertEqual(heard, self.PROBED)  # address-and-port-dependent filtering

    def test_full_cone(self) -> None:
        seen, heard = self.check(NatKind.FULL_CONE)
        self.assertEqual(len(seen), 1)
        self.assertEqual(heard, self.EVERYONE)  # endpoint-independent filtering

    def test_restricted_cone(self) -> None:
        seen, heard = self.check(NatKind.RESTRICTED)
        self.assertEqual(len(seen), 1)
        self.assertEqual(heard, self.BOTH_ADDRESSES)  # address-dependent filtering

    def test_symmetric(self) -> None:
        seen, heard = self.check(NatKind.SYMMETRIC)
        self.assertEqual(len(seen), 3)  # a new mapping per destination
        self.assertEqual(heard, ["198.18.0.10:3478"])

    def test_double(self) -> None:
        seen, heard = self.check(NatKind.DOUBLE)
        self.assertEqual(len(seen), 1)
        self.assertEqual(heard, self.PROBED)


class SiteLanTests(TestCase):
    timeout = 60

    def test_hosts_of_one_site_reach_each_other(self) -> None:
        """The router switches its LAN (even with br_netfilter loaded on the machine)."""
        reason = skip_reason("nft", "ping")
        if reason:
            raise self.skipTest(reason)
        lab = Lab(tag="L")
        self.addCleanup(lab.teardown)
        site = Internet(lab).add_site(NatKind.PORT_RESTRICTED, hosts=2)
        a, b = site.hosts
        out = lab.ns_run(a.ns, "ping", "-c", "1", "-W", "2", b.address, check=False)
        self.assertEqual(out.returncode, 0, out.stdout.decode() + out.stderr.decode())
