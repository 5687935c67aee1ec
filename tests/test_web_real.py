"""
The status page of a REAL wow-node: three overlay-only nodes on loopback
ports, the first serving C{[web] listen}; headless Chromium loads the page,
sees no console errors and the two other nodes in the peer table; the
screenshot is saved as C{artifacts/status-page-real.png}.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wow.control.client import call
from wow.lab.netns import HERE, Lab

from .test_web import CHROMIUM, browse


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealNodePageTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not os.path.exists(CHROMIUM):
            raise self.skipTest("needs Debian's chromium")
        try:
            import playwright  # noqa: F401
        except ImportError:
            raise self.skipTest("needs playwright") from None
        self.lab = Lab(tag="q")
        self.addCleanup(self.lab.teardown)

    def start(self, index: int, port: int, bootstrap: int | None, web: str = "") -> str:
        work = os.path.join(self.lab.workdir, f"n{index}")
        os.makedirs(work, exist_ok=True)
        config = os.path.join(work, "node.toml")
        with open(config, "w") as f:
            f.write('[tap]\nenabled = false\n[security]\nenabled = false\n'
                    '[overlay]\ninterface = "127.0.0.1"\nkeepalive = 1.0\ndead_after = 6.0\n'
                    'stabilize = 2.0\n')
            if web:
                f.write(f'[web]\nlisten = "{web}"\n')
        args = ["--config", config, "--state-dir", os.path.join(work, "state"),
                "--listen", str(port)]
        if bootstrap is not None:
            args += ["--bootstrap", f"udp://127.0.0.1:{bootstrap}"]
        proc = self.lab.twistd(None, "wow-node", args, f"n{index}")
        self.lab.wait_for_log(proc, "overlay ready", timeout=30)  # an overlay-only node
        return os.path.join(work, "state", "control.sock")

    def test_page_of_a_real_node(self) -> None:
        ports = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
        web = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        sockets = [self.start(0, ports[0], None, web)]
        sockets += [self.start(i, ports[i], ports[0]) for i in (1, 2)]
        addresses = [call(s, "status")["overlay"]["address"] for s in sockets]

        def linked() -> bool:
            return {p["address"] for p in call(sockets[0], "peers")} == set(addresses[1:])

        self.lab.wait_until(linked, timeout=30, interval=0.3, what="node 0 linked to both")
        # every field the page draws is in the peers the node reports
        for peer in call(sockets[0], "peers"):
            for field in ("address", "kind", "endpoint", "rtt_ms", "age_s", "path"):
                self.assertIn(field, peer)
            self.assertEqual(peer["path"], "direct")

        artifacts = os.path.join(HERE, "artifacts")
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "status-page-real.png")
        seen: dict[str, Any] = browse(f"http://{web}/", shot)
        self.assertEqual(seen["errors"], [], json.dumps(seen))
        self.assertEqual(seen["me"], addresses[0])
        self.assertEqual(sorted(seen["addresses"]), sorted(addresses[1:]))
        self.assertEqual(seen["rows"], 2)
        self.assertEqual(seen["links"], 2)
        self.assertGreater(os.path.getsize(shot), 5000)
