"""
Building blocks of demo (and test) topologies on one machine.

A L{NodeSite} is a network namespace with a real C{twistd wow-node} on its
TAP and, when asked, the host's own real DHCP client on that TAP.  It is
built on L{wow.lab.netns.Lab}, which removes every namespace, device and
process on teardown.  The demo of this issue uses one site; later issues put
several behind NATs (L{wow.lab.wan}).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from wow.control.client import call
from wow.demo.clients import dhclient_argv, udhcpc_argv
from wow.lab.netns import Lab

DHCLIENT_EVENTS = "dhclient-events.log"
UDHCPC_EVENTS = "udhcpc-events.log"


@dataclass
class Lease:
    """What the host's DHCP client applied, as its hook script logged it."""

    ip: str
    mask: str
    dns: str
    domain: str
    lease_time: str
    mtu: str


class NodeSite:
    """
    One namespace, one wow-node on TAP C{tap}; the node's state directory,
    control socket and logs live in the lab's work directory.
    """

    def __init__(self, lab: Lab, suffix: str = "", lease_time: int = 3600,
                 extra_config: str = "") -> None:
        self.lab = lab
        self.ns = lab.netns(suffix + "ns")
        self.tap = lab.name(suffix + "t")
        self.workdir = os.path.join(lab.workdir, suffix or "site")
        os.makedirs(self.workdir, exist_ok=True)
        self.state = os.path.join(self.workdir, "state")
        self.config = os.path.join(self.workdir, "wow-node.toml")
        with open(self.config, "w") as f:
            f.write(f"[dhcp]\nlease_time = {lease_time}\n{extra_config}")
        self.node: subprocess.Popen[bytes] | None = None
        self.runs = 0

    # -- the node ---------------------------------------------------------

    def start(self, timeout: float = 30) -> subprocess.Popen[bytes]:
        """Start wow-node and wait for its readiness line."""
        self.runs += 1
        self.node = self.lab.twistd(self.ns, "wow-node", [
            "--config", self.config, "--tap", self.tap, "--state-dir", self.state,
        ], os.path.join(os.path.basename(self.workdir), f"node{self.runs}"))
        self.lab.wait_for_log(self.node, f"wow-node ready: tap {self.tap}", timeout)
        return self.node

    def stop(self) -> int:
        """Stop wow-node with SIGTERM; its exit status (twistd re-raises SIGTERM)."""
        assert self.node is not None
        code = self.lab.stop(self.node)
        if code not in (0, -signal.SIGTERM):
            raise AssertionError(f"wow-node exited with {code}")
        return code

    def control(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return call(os.path.join(self.state, "control.sock"), command, args)

    def leases(self) -> list[dict[str, Any]]:
        return self.control("leases")  # type: ignore[no-any-return]

    def counter(self, name: str, label: str = "") -> float:
        return float(self.control("counters").get(name, {}).get(label, 0))

    # -- the host side ------------------------------------------------------

    def addresses(self, dev: str | None = None) -> list[str]:
        """IPv4 addresses on the TAP (or C{dev}) as the kernel sees them."""
        out = self.lab.ns_run(self.ns, "ip", "-4", "-o", "addr", "show", "dev", dev or self.tap)
        return [line.split()[3] for line in out.stdout.decode().splitlines()]

    def dhclient(self, log_name: str = "dhclient") -> subprocess.Popen[bytes]:
        """Run ISC dhclient (foreground) on the TAP with our hook script."""
        return self.lab.spawn(self.ns, dhclient_argv(self.tap, self.workdir),
                              os.path.join(os.path.basename(self.workdir), log_name))

    def dhclient_release(self) -> None:
        """C{dhclient -r}: signals the running client and sends DHCPRELEASE."""
        argv = dhclient_argv(self.tap, self.workdir)
        argv = [a for a in argv if a not in ("-d", "-1")]
        argv.insert(1, "-r")
        self.lab.ns_run(self.ns, *argv, timeout=30)

    def udhcpc(self, ns: str | None = None, dev: str | None = None, workdir: str | None = None,
               log_name: str = "udhcpc") -> subprocess.Popen[bytes]:
        """Run busybox udhcpc (foreground) with our hook script."""
        work = workdir or self.workdir
        os.makedirs(work, exist_ok=True)
        return self.lab.spawn(ns or self.ns, udhcpc_argv(dev or self.tap, work),
                              os.path.join(os.path.relpath(work, self.lab.workdir), log_name))

    def events(self, name: str = DHCLIENT_EVENTS, workdir: str | None = None) -> list[list[str]]:
        """The hook script's events: one list of words per event."""
        path = os.path.join(workdir or self.workdir, name)
        try:
            with open(path) as f:
                return [line.split() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_event(self, word: str, name: str = DHCLIENT_EVENTS, count: int = 1,
                   timeout: float = 30, workdir: str | None = None) -> list[str]:
        """Wait for the C{count}-th event C{word}; return it."""
        def found() -> list[list[str]]:
            return [e for e in self.events(name, workdir) if e[0] == word]

        self.lab.wait_until(lambda: len(found()) >= count, timeout=timeout,
                            what=f"{count} x {word} in {name}")
        return found()[count - 1]

    def lease(self, event: list[str]) -> Lease:
        """A BOUND/bound event's fields as the client saw them."""
        return Lease(*(event[1:7] + [""] * (7 - len(event)))[:6])
