"""
Eight real C{twistd -n wow-node} processes on loopback inside one network
namespace: they form a correct ring, a DHT value put on one node is read on
another, two nodes killed with SIGKILL are cut out of the ring within a
bounded time, and restarted they rejoin with the same addresses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.netns import Lab, skip_reason
from wow import __version__
from wow.control.client import ControlError, call

NODES = 8
BASE_PORT = 47100
#: Keepalive 0.5 s, dead after 3 s: a killed node must be gone within this.
REPAIR_BOUND = 15.0

CONFIG = """
[tap]
enabled = false
[overlay]
interface = "127.0.0.1"
keepalive = 0.5
dead_after = 3.0
stabilize = 2.0
"""


class RealDaemonRing(TestCase):
    timeout = 180

    def setUp(self) -> None:
        reason = skip_reason()
        if reason:
            self.skipTest(reason)
        self.lab = Lab(tag="o")
        self.addCleanup(self.lab.teardown)
        self.ns = self.lab.netns("n")
        self.config = os.path.join(self.lab.workdir, "node.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def state_dir(self, i: int) -> str:
        return os.path.join(self.lab.workdir, f"n{i}")

    def start(self, i: int) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        args = [twistd, "-n", "--pidfile", os.path.join(self.lab.workdir, f"n{i}.pid"),
                "wow-node", "--config", self.config, "--state-dir", self.state_dir(i),
                "--tap", self.lab.name(f"t{i}"), "--listen", str(BASE_PORT + i)]
        for b in (0, 1):
            if b != i:
                args += ["--bootstrap", f"udp://127.0.0.1:{BASE_PORT + b}"]
        proc = self.lab.spawn(self.ns, args, f"node{i}-{len(self.lab.processes)}")
        self.procs[i] = proc
        self.lab.wait_for_log(proc, "overlay ready", timeout=30)

    def ctl(self, i: int, command: str, args: dict[str, Any] | None = None) -> Any:
        return call(os.path.join(self.state_dir(i), "control.sock"), command, args)

    def wow(self, *argv: str, node: int) -> str:
        wow = os.path.join(os.path.dirname(sys.executable), "wow")
        result = subprocess.run([wow, *argv, "--state-dir", self.state_dir(node)],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def ring_ok(self, members: list[int]) -> bool:
        try:
            status = {i: self.ctl(i, "status")["overlay"] for i in members}
        except ControlError:
            return False
        order = sorted(members, key=lambda i: status[i]["address"])
        n = len(order)
        for pos, i in enumerate(order):
            succ = status[order[(pos + 1) % n]]["address"]
            pred = status[order[(pos - 1) % n]]["address"]
            if status[i]["successor"] != succ or status[i]["predecessor"] != pred:
                return False
        return True

    def test_ring_dht_kill_and_rejoin(self) -> None:
        for i in range(NODES):
            self.start(i)
        everyone = list(range(NODES))
        self.lab.wait_until(lambda: self.ring_ok(everyone), timeout=40, what="a correct ring")
        addresses = {i: self.ctl(i, "status")["overlay"]["address"] for i in everyone}
        self.assertEqual(len(set(addresses.values())), NODES)
        peers = self.ctl(3, "peers")
        self.assertGreaterEqual(len(peers), 4)
        self.assertTrue({"near"} <= {p["kind"] for p in peers})

        # The wow CLI over the control socket, human and JSON forms.
        status = json.loads(self.wow("status", "--json", node=3))
        self.assertEqual(status["overlay"]["address"], addresses[3])
        self.assertEqual(status["overlay"]["version"], __version__)
        self.assertIn("successor", self.wow("status", node=3))
        table = self.wow("peers", node=3)
        self.assertIn("near", table)
        self.assertEqual(len(json.loads(self.wow("peers", "--json", node=3))), len(peers))
        self.assertEqual(self.wow("dht", "create", "cli-key", "v", node=1).strip(), "ok")
        self.assertIn(addresses[1], self.wow("dht", "get", "cli-key", node=7))

        self.ctl(2, "dht.put", {"key": "greeting", "value": "hello from 2", "ttl": 600})
        got = self.ctl(6, "dht.get", {"key": "greeting"})
        self.assertEqual([(v["value"], v["owner"]) for v in got],
                         [("hello from 2", addresses[2])])

        # Two nodes die without a word; the ring heals around them.
        for victim in (4, 5):
            self.lab.stop(self.procs[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        survivors = [i for i in everyone if i not in (4, 5)]
        self.lab.wait_until(lambda: self.ring_ok(survivors), timeout=REPAIR_BOUND,
                            what=f"ring repair within {REPAIR_BOUND} s")
        repaired_in = time.monotonic() - killed_at
        self.assertLess(repaired_in, REPAIR_BOUND)
        got = self.ctl(0, "dht.get", {"key": "greeting"})
        self.assertEqual([v["value"] for v in got], ["hello from 2"])

        # Restarted, they come back with the addresses their keys give them.
        for victim in (4, 5):
            self.start(victim)
        self.lab.wait_until(lambda: self.ring_ok(everyone), timeout=40, what="rejoined ring")
        for victim in (4, 5):
            self.assertEqual(self.ctl(victim, "status")["overlay"]["address"], addresses[victim])
