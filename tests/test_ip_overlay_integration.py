"""
IP over the overlay for real: three sites on a plain "internet" bridge, each
a namespace with a wow-node and the host's own dhclient on its TAP.  Virtual
IPs come from the DHT; ping, TCP and UDP (iperf3) work between every pair
over direct links; a restarted node gets the same address and traffic resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wow.control.client import call
from wow.demo.clients import dhclient_argv
from wow.lab.netns import Lab, skip_reason
from wow.lab.wan import Internet

PORT = 4789
CONFIG = """
[dhcp]
mode = "dht"
lease_time = 600
[overlay]
keepalive = 1.0
dead_after = 6.0
stabilize = 2.0
[security]
enabled = false
"""


class Node:
    def __init__(self, lab: Lab, host: Any, index: int, config: str) -> None:
        self.lab = lab
        self.ns = host.ns
        self.address = host.address
        self.index = index
        self.tap = lab.name(f"t{index}")
        self.work = os.path.join(lab.workdir, f"n{index}")
        os.makedirs(self.work, exist_ok=True)
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, bootstrap: str | None) -> None:
        self.runs += 1
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                "--pidfile", os.path.join(self.work, "twistd.pid"), "wow-node",
                "--config", self.config, "--state-dir", os.path.join(self.work, "state"),
                "--tap", self.tap, "--listen", str(PORT)]
        if bootstrap:
            argv += ["--bootstrap", bootstrap]
        self.proc = self.lab.spawn(self.ns, argv, f"n{self.index}/node{self.runs}")
        self.lab.wait_for_log(self.proc, "wow-node ready", timeout=30)

    def dhclient(self) -> None:
        self.client = self.lab.spawn(self.ns, dhclient_argv(self.tap, self.work, timeout=60),
                                     f"n{self.index}/dhclient{self.runs}")

    def bound(self) -> list[str]:
        try:
            with open(os.path.join(self.work, "dhclient-events.log")) as f:
                return [ln.split()[1] for ln in f if ln.split()[:1] in (["BOUND"], ["REBOOT"])]
        except FileNotFoundError:
            return []

    def ctl(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return call(os.path.join(self.work, "state", "control.sock"), command, args)

    def run(self, *argv: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[bytes]:
        return self.lab.ns_run(self.ns, *argv, check=check, timeout=timeout)


class IpOverOverlayTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = skip_reason("dhclient", "ping", "iperf3", "dig")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="I")
        self.addCleanup(self.lab.teardown)
        self.net = Internet(self.lab)
        config = os.path.join(self.lab.workdir, "node.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        self.nodes = [Node(self.lab, self.net.add_public_host(f"h{i}"), i, config)
                      for i in range(3)]

    def ping(self, a: Node, ip: str, count: int = 3) -> bool:
        result = a.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", ip, check=False)
        return result.returncode == 0

    def test_three_sites(self) -> None:
        first = self.nodes[0]
        first.start(None)
        for node in self.nodes[1:]:
            node.start(f"udp://{first.address}:{PORT}")
        for node in self.nodes:
            node.dhclient()
        self.lab.wait_until(lambda: all(n.bound() for n in self.nodes), timeout=60,
                            interval=0.3, what="every host bound a virtual IP")
        ips = [n.bound()[0] for n in self.nodes]
        self.assertEqual(len(set(ips)), 3, ips)

        # ping between every pair (the first packets wait for the lease lookup)
        for a in self.nodes:
            for b, ip in zip(self.nodes, ips, strict=True):
                if a is not b:
                    self.lab.wait_until(lambda a=a, ip=ip: self.ping(a, ip, 1), timeout=20,
                                        what=f"ping {a.index} -> {ip}")
                    self.assertTrue(self.ping(a, ip, 3))

        # names live in the DHT: each node resolves the others' host names
        # (dhclient sends host-name "wowdemo": the first claimant keeps it, the
        # others keep their derived names)
        for a in self.nodes:
            for ip in ips:
                derived = "c" + ip.replace(".", "-") + ".wow"
                self.lab.wait_until(
                    lambda a=a, derived=derived, ip=ip: ip in a.run(
                        "dig", "+short", derived, "@10.128.0.1", check=False).stdout.decode(),
                    timeout=20, what=f"{derived} from node {a.index}")
        owners = [a.run("dig", "+short", "wowdemo.wow", "@10.128.0.1").stdout.decode().split()
                  for a in self.nodes]
        self.assertEqual(len({tuple(o) for o in owners}), 1, owners)
        self.assertEqual(len(owners[0]), 1)
        self.assertIn(owners[0][0], ips)

        # TCP and UDP with iperf3 between two sites
        server = self.lab.spawn(self.nodes[2].ns, ["iperf3", "-s", "-B", ips[2], "-1"],
                                "iperf3-tcp")
        time.sleep(0.5)  # iperf3 -s binds quickly; -c retries are not available
        out = self.nodes[0].run("iperf3", "-c", ips[2], "-t", "2", "-J")
        tcp = json.loads(out.stdout)
        self.assertGreater(tcp["end"]["sum_received"]["bytes"], 100_000)
        self.lab.stop(server)
        server = self.lab.spawn(self.nodes[2].ns, ["iperf3", "-s", "-B", ips[2], "-1"],
                                "iperf3-udp")
        time.sleep(0.5)
        out = self.nodes[1].run("iperf3", "-c", ips[2], "-u", "-b", "20M", "-t", "2", "-J")
        udp = json.loads(out.stdout)
        self.assertGreater(udp["end"]["sum"]["packets"], 100)
        self.assertLess(udp["end"]["sum"]["lost_percent"], 20)
        self.lab.stop(server)

        # traffic runs over direct links: every node holds a link to every other
        for a in self.nodes:
            peers = {p["address"] for p in a.ctl("peers")}
            for b in self.nodes:
                if b is not a:
                    self.assertIn(b.ctl("status")["overlay"]["address"], peers)

        # a restarted node gets the same IP and traffic resumes
        victim = self.nodes[1]
        assert victim.client is not None and victim.proc is not None
        self.lab.stop(victim.client)
        self.lab.stop(victim.proc)
        victim.start(f"udp://{first.address}:{PORT}")
        victim.dhclient()
        self.lab.wait_until(lambda: len(victim.bound()) >= 2, timeout=60, interval=0.3,
                            what="the restarted host bound again")
        self.assertEqual(victim.bound()[-1], ips[1])
        self.lab.wait_until(lambda: self.ping(first, ips[1], 1), timeout=30,
                            what="traffic to the restarted node")
