"""
C{wow netcheck} behind real NATs: two public overlay nodes and one node
each behind a port-restricted (endpoint-independent mapping) and a symmetric
(address-and-port-dependent mapping) Linux NAT router, all real wow-node
processes in namespaces.  Each NATed node learns its mapping from what the
two public peers (at different addresses) saw in the link handshakes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wow.lab.nat import NatKind
from wow.lab.netns import HERE, Lab, skip_reason
from wow.lab.wan import Internet

PORT = 4789
CONFIG = """
[tap]
enabled = false
[security]
enabled = false
[overlay]
keepalive = 1.0
dead_after = 6.0
stabilize = 2.0
"""


class NetcheckBehindNatTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = skip_reason("iptables")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="q")
        self.addCleanup(self.lab.teardown)
        self.config = os.path.join(self.lab.workdir, "node.toml")
        with open(self.config, "w") as f:
            f.write(CONFIG)

    def start(self, name: str, ns: str, bootstrap: str | None) -> str:
        state = os.path.join(self.lab.workdir, name)
        args = ["--config", self.config, "--state-dir", state, "--listen", str(PORT)]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        proc = self.lab.twistd(ns, "wow-node", args, name)
        self.lab.wait_for_log(proc, "overlay ready", timeout=30)
        return os.path.join(state, "control.sock")

    def netcheck(self, sock: str) -> dict[str, Any]:
        env = dict(os.environ, PYTHONPATH=HERE)
        out = subprocess.run([sys.executable, "-m", "wow", "netcheck", "--json", "--socket",
                              sock], capture_output=True, text=True, timeout=30, env=env,
                             cwd=HERE)
        self.assertEqual(out.returncode, 0, out.stderr)
        return dict(json.loads(out.stdout))

    def test_mappings(self) -> None:
        net = Internet(self.lab)
        pubs = [net.add_public_host(f"p{i}") for i in range(2)]
        cone = net.add_site(NatKind.PORT_RESTRICTED, hosts=1)
        symmetric = net.add_site(NatKind.SYMMETRIC, hosts=1)
        boot = f"udp://{pubs[0].address}:{PORT}"
        socks = {"p0": self.start("p0", pubs[0].ns, None),
                 "p1": self.start("p1", pubs[1].ns, boot),
                 "cone": self.start("cone", cone.hosts[0].ns, boot),
                 "sym": self.start("sym", symmetric.hosts[0].ns, boot)}
        expected = {"p0": "none", "p1": "none", "cone": "endpoint-independent",
                    "sym": "address-and-port-dependent"}
        reports: dict[str, dict[str, Any]] = {}

        def settled() -> bool:
            for name, sock in socks.items():
                reports[name] = self.netcheck(sock)
            return all(reports[n]["mapping"] == m for n, m in expected.items())

        try:
            self.lab.wait_until(settled, timeout=40, interval=1.0, what="every mapping known")
        except AssertionError as e:
            summary = {n: (r["mapping"], r["reflexive_endpoints"]) for n, r in reports.items()}
            raise AssertionError(f"{e}: {summary}") from None
        self.assertEqual(reports["p0"]["reachable_directly"], "yes")
        self.assertEqual(reports["cone"]["reachable_directly"], "probably")
        self.assertEqual(reports["sym"]["reachable_directly"], "no")
        # the NATed nodes are seen at their router's public address, never their own
        self.assertEqual({e.split(":")[0] for e in reports["cone"]["reflexive_endpoints"]},
                         {cone.public_address})
        sym_seen = reports["sym"]["reflexive_endpoints"]
        self.assertEqual({e.split(":")[0] for e in sym_seen}, {symmetric.public_address})
        self.assertGreaterEqual(len(sym_seen), 2)  # one external port per destination
        self.assertIn(f"{cone.hosts[0].address}:{PORT}", reports["cone"]["local"])
