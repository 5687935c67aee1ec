"""
Decentralised DHCP for real: ten C{twistd wow-node} processes in
C{dhcp.mode = "dht"}, joined in one overlay on loopback, each with its own
TAP and the host's own ISC dhclient on it, all started at once (a boot
storm).  Every host gets an address, all different, each claimed in the DHT
by its node; a node stopped cleanly releases its claim and, restarted, gets
the same address back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import Lab, skip_reason
from wow.control.client import call
from wow.demo.clients import dhclient_argv

NODES = 10
BASE_PORT = 47300

CONFIG = """
[dhcp]
mode = "dht"
lease_time = 600
# 12 addresses for 10 hosts: the random first picks collide.
pool_start = "10.128.0.10"
pool_end = "10.128.0.21"
[overlay]
interface = "127.0.0.1"
keepalive = 0.5
dead_after = 3.0
stabilize = 2.0
"""


class DhtBootStormTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = skip_reason("dhclient")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="r")
        self.addCleanup(self.lab.teardown)
        self.ns = self.lab.netns("n")
        self.config = os.path.join(self.lab.workdir, "node.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def work(self, i: int) -> str:
        path = os.path.join(self.lab.workdir, f"n{i}")
        os.makedirs(path, exist_ok=True)
        return path

    def tap(self, i: int) -> str:
        return self.lab.name(f"t{i}")

    def start(self, i: int) -> subprocess.Popen[bytes]:
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        args = [*twistd, "-n", "--pidfile", os.path.join(self.work(i), "twistd.pid"),
                "wow-node", "--config", self.config, "--state-dir",
                os.path.join(self.work(i), "state"), "--tap", self.tap(i),
                "--listen", str(BASE_PORT + i)]
        for b in (0, 1):
            if b != i:
                args += ["--bootstrap", f"udp://127.0.0.1:{BASE_PORT + b}"]
        proc = self.lab.spawn(self.ns, args, f"n{i}/node-{len(self.lab.processes)}")
        self.procs[i] = proc
        return proc

    def ctl(self, i: int, command: str, args: dict[str, Any] | None = None) -> Any:
        return call(os.path.join(self.work(i), "state", "control.sock"), command, args)

    def bound(self, i: int) -> list[str]:
        """The addresses dhclient bound on node i's TAP, in order."""
        try:
            with open(os.path.join(self.work(i), "dhclient-events.log")) as f:
                return [line.split()[1] for line in f
                        if line.split()[:1] in (["BOUND"], ["REBOOT"])]
        except FileNotFoundError:
            return []

    def dhclient(self, i: int) -> subprocess.Popen[bytes]:
        return self.lab.spawn(self.ns, dhclient_argv(self.tap(i), self.work(i), timeout=60),
                              f"n{i}/dhclient-{len(self.lab.processes)}")

    def owner(self, i: int, ip: str) -> list[str]:
        values = self.ctl(i, "dht.get", {"key": f"dhcp:10.128.0.0/16:{ip}"})
        return sorted(v["owner"] for v in values)

    def test_ten_real_nodes_boot_at_once(self) -> None:
        for i in range(NODES):
            self.start(i)
        for i in range(NODES):
            self.lab.wait_for_log(self.procs[i], "wow-node ready", timeout=60)
        addresses = {i: self.ctl(i, "status")["overlay"]["address"] for i in range(NODES)}

        clients = {i: self.dhclient(i) for i in range(NODES)}
        self.lab.wait_until(lambda: all(self.bound(i) for i in range(NODES)), timeout=120,
                            interval=0.5, what="every host bound an address")
        ips = {i: self.bound(i)[0] for i in range(NODES)}
        self.assertEqual(len(set(ips.values())), NODES, ips)
        for i, ip in ips.items():
            self.assertEqual([r["ip"] for r in self.ctl(i, "leases")], [ip])
            # Any node's DHT names the holder.
            self.assertEqual(self.owner((i + 3) % NODES, ip), [addresses[i]])

        # A clean stop releases the claim; the restarted node claims the same
        # address again and the host's client gets it back.
        victim = 4
        self.lab.stop(clients[victim])
        self.lab.stop(self.procs[victim])
        self.lab.wait_until(lambda: self.owner(0, ips[victim]) == [], timeout=20,
                            what="the stopped node's claim deleted")
        self.start(victim)
        self.lab.wait_for_log(self.procs[victim], "wow-node ready", timeout=60)
        self.dhclient(victim)
        self.lab.wait_until(lambda: len(self.bound(victim)) >= 2, timeout=90, interval=0.5,
                            what="the restarted node's host bound again")
        self.assertEqual(self.bound(victim)[1], ips[victim])
        self.lab.wait_until(lambda: self.owner(0, ips[victim]) == [addresses[victim]],
                            timeout=20, what="the address claimed again by the same node")
