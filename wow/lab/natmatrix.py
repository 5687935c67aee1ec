"""
The NAT matrix: real wow-nodes behind every kind of NAT, every pair tried.

One lab holds the internet, a public bootstrap node, and two sites of each
kind (none, full cone, restricted cone, port-restricted cone, symmetric,
double NAT), one node per site.  For every pair of kinds (21 pairs: node A
of the first kind, node B of the second, always behind different routers)
the A node asks for a direct link (the control command the IP router's
traffic triggers), all pairs at once; then each pair is judged from A's
C{wow peers}: direct or relayed, how long punching took, and whether an
overlay ping (C{wow ping}) gets through.

Used by C{bench/nat_matrix.py} (figures, JSON) and the integration test
C{tests/test_nat_matrix.py} (assertions).  Overlay-only nodes (no TAP) keep
the 13 processes light on a 2-core machine.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wow.control.client import ControlError, call
from wow.lab.nat import NatKind
from wow.lab.netns import Lab
from wow.lab.wan import Host, Internet

PORT = 4789
KINDS = ("none", "full-cone", "restricted-cone", "port-restricted", "symmetric", "double")
_NAT = {"none": NatKind.PUBLIC, "full-cone": NatKind.FULL_CONE,
        "restricted-cone": NatKind.RESTRICTED, "port-restricted": NatKind.PORT_RESTRICTED,
        "symmetric": NatKind.SYMMETRIC, "double": NatKind.DOUBLE}
CONFIG = """\
[tap]
enabled = false
[security]
enabled = false
[overlay]
keepalive = 5.0
dead_after = 20.0
stabilize = 3.0
"""

#: Pairs punching can open; the others (symmetric with port-restricted or
#: double) need birthday probing, and symmetric with symmetric stays relayed.
EXPECT_RELAYED = {("symmetric", "symmetric")}
BIRTHDAY = {("port-restricted", "symmetric"), ("symmetric", "double")}


@dataclass
class MatrixNode:
    name: str
    kind: str
    host: Host
    socket: str
    address: str = ""
    proc: Any = None

    def ctl(self, command: str, args: dict[str, Any] | None = None, timeout: float = 10
            ) -> Any:
        return call(self.socket, command, args, timeout=timeout)


def pairs() -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(KINDS) for b in KINDS[i:]]


class NatMatrix:
    """Builds the lab, starts the nodes, tries every pair; L{lab} owns everything."""

    def __init__(self, lab: Lab, say: Any = None) -> None:
        self.lab = lab
        self.say = say or (lambda text: None)
        self.nodes: dict[tuple[str, int], MatrixNode] = {}
        self.boot: MatrixNode | None = None
        self.internet: Internet | None = None

    def _start(self, name: str, kind: str, host: Host, bootstrap: str | None) -> MatrixNode:
        state = os.path.join(self.lab.workdir, name)
        config = os.path.join(self.lab.workdir, "node.toml")
        if not os.path.exists(config):
            with open(config, "w") as f:
                f.write(CONFIG)
        args = ["--config", config, "--state-dir", state, "--listen", str(PORT)]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        node = MatrixNode(name, kind, host, os.path.join(state, "control.sock"))
        node.proc = self.lab.twistd(host.ns, "wow-node", args, name)
        return node

    def build(self) -> None:
        self.internet = net = Internet(self.lab)
        boot_host = net.add_public_host("boot")
        self.boot = self._start("boot", "none", boot_host, None)
        self.lab.wait_for_log(self.boot.proc, "overlay ready", timeout=30)
        url = f"udp://{boot_host.address}:{PORT}"
        for kind in KINDS:
            for i in range(2):
                site = net.add_site(_NAT[kind], hosts=1)
                name = f"{kind[:4]}{i}"
                self.nodes[kind, i] = self._start(name, kind, site.hosts[0], url)
        for node in [self.boot, *self.nodes.values()]:
            self.lab.wait_for_log(node.proc, "overlay ready", timeout=60)
            node.address = str(node.ctl("status")["overlay"]["address"])
        self.say(f"{len(self.nodes) + 1} wow-nodes up behind "
                 f"{len(net.sites)} routers (namespaces {self.lab.prefix}*)")

    def settle(self, timeout: float = 60) -> None:
        """Wait until every node has learnt its NAT's mapping behaviour (>= 2 peers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mappings = {n.name: n.ctl("netcheck")["mapping"] for n in self.nodes.values()}
            if "unknown" not in mappings.values():
                return
            time.sleep(1)
        self.say(f"some nodes never learnt their mapping: {mappings}")

    def _link(self, a: MatrixNode, b: MatrixNode) -> dict[str, Any] | None:
        for p in a.ctl("peers"):
            if p["address"] == b.address:
                return dict(p)
        return None

    def try_pair(self, ka: str, kb: str, wait: float) -> dict[str, Any]:
        a, b = self.nodes[ka, 0], self.nodes[kb, 1]
        before = self._link(a, b)
        started = time.monotonic()
        a.ctl("connect", {"address": b.address})
        row: dict[str, Any] = {"a": ka, "b": kb, "mode": "relayed", "ping_ok": False,
                               "direct_s": None, "via": None, "linked_before": False}
        if before is not None and before.get("path") == "direct":
            row.update(mode="direct", linked_before=True, direct_s=before.get("punch_s"))
        else:
            deadline = started + wait
            while time.monotonic() < deadline:
                link = self._link(a, b)
                if link is not None and link.get("path") == "direct":
                    row.update(mode="direct", direct_s=round(time.monotonic() - started, 3))
                    if link.get("punch_s") is not None:
                        row["direct_s"] = link["punch_s"]
                    break
                time.sleep(0.1)
            else:
                link = self._link(a, b)
                if link is not None:
                    row["via"] = link.get("via")
        for _ in range(3):
            try:
                r = a.ctl("ping", {"target": b.address, "timeout": 2}, timeout=10)
            except ControlError:
                continue
            if r.get("reply"):
                row["ping_ok"] = True
                row["ping_path"] = r.get("path")
                break
        return row

    def run(self, wait: float = 8.0) -> list[dict[str, Any]]:
        """
        Every pair at once (threads only wait on control sockets).  A pair
        that should be direct but is relayed asks once more (as traffic
        would: a relayed pair retries at once), so C{first_mode} is the
        first attempt's outcome and C{mode} the final one.
        """
        with ThreadPoolExecutor(max_workers=len(pairs())) as pool:
            futures = [pool.submit(self.try_pair, a, b, wait) for a, b in pairs()]
            rows = [f.result() for f in futures]
            for r in rows:
                r["first_mode"] = r["mode"]
                r["attempts"] = 1
            again = [i for i, r in enumerate(rows) if r["mode"] != "direct"
                     and (r["a"], r["b"]) not in EXPECT_RELAYED]
            if again:
                time.sleep(2.5)  # past the end of the first direct phase
                retried = [pool.submit(self.try_pair, rows[i]["a"], rows[i]["b"], wait)
                           for i in again]
                for i, f in zip(again, retried, strict=True):
                    rows[i] = dict(f.result(), first_mode=rows[i]["first_mode"], attempts=2)
            return rows


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a matrix run (empty: everything the issue requires)."""
    problems = []
    for r in rows:
        pair = (r["a"], r["b"])
        if not r["ping_ok"]:
            problems.append(f"{pair}: ping failed")
        want = "relayed" if pair in EXPECT_RELAYED else "direct"
        if r["mode"] != want:
            problems.append(f"{pair}: {r['mode']}, expected {want}")
    return problems


def main_json(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    times = sorted(r["direct_s"] for r in rows if r["direct_s"] is not None)
    return {"pairs": rows, "seconds": round(seconds, 1),
            "median_direct_s": times[len(times) // 2] if times else None,
            "python": sys.version.split()[0]}
