"""C{wow demo} for real: it prints the lease and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import HERE, skip_reason

SKIP = skip_reason("dhclient")
WOW = [sys.executable, "-m", "wow"]


def leftovers(prefix: str) -> list[str]:
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [n for n in names if n.startswith(prefix)] + [
        line for line in links.splitlines() if f" {prefix}" in line]


class DemoTests(SynchronousTestCase):
    if SKIP:
        skip = SKIP

    def check_output(self, out: str) -> str:
        self.assertRegex(out, r"address\s+10\.128\.\d+\.\d+/16")
        self.assertRegex(out, r"DNS server\s+10\.128\.0\.1")
        self.assertRegex(out, r"domain\s+wow")
        self.assertRegex(out, r"lease time\s+3600 s")
        match = re.search(r"nothing left behind \(prefix (d[0-9a-f]{5})\)", out)
        assert match is not None, out
        prefix = match.group(1)
        self.assertEqual(leftovers(prefix), [])
        self.assertFalse(os.path.exists(f"/tmp/wowlab-{prefix}"))
        return prefix

    def test_duration(self) -> None:
        result = subprocess.run([*WOW, "demo", "--single", "--duration", "0.5"],
                                capture_output=True, text=True, timeout=120, cwd=HERE)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.check_output(result.stdout)

    def test_ctrl_c_tears_down(self) -> None:
        proc = subprocess.Popen([*WOW, "demo", "--single"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=HERE)
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "press Ctrl-C" in line or not line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err)
        self.check_output("".join(lines) + out)

    def test_not_root_is_one_sentence(self) -> None:
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 *WOW, "demo"], capture_output=True, text=True, timeout=60,
                                cwd=HERE)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertIn("must run as root", result.stderr)


class WanDemoTests(SynchronousTestCase):
    """The README's main command: the multi-site demo, end to end."""

    if SKIP:
        skip = SKIP

    def test_demo_runs_and_leaves_nothing(self) -> None:
        result = subprocess.run([*WOW, "demo", "--duration", "0"], capture_output=True,
                                text=True, timeout=400, cwd=HERE)
        out = result.stdout
        self.assertEqual(result.returncode, 0, out + result.stderr)
        for name in ("pub", "a1", "a2", "b1", "b2"):
            self.assertRegex(out, rf"{name}: dhclient got 10\.128\.\d+\.\d+")
            self.assertRegex(out, rf"{name}: {name}\.wow resolves to")
        for name in ("a1", "a2", "b1", "b2"):
            self.assertRegex(out, rf"{name}: certificate from wow-ca installed")
        self.assertEqual(out.count(", 0% packet loss"), 4, out)
        self.assertRegex(out, r"iperf3 a1 → b1\.wow: \d+ Mbit/s")
        # the pairs that talked hold DTLS sessions (security is on in the demo)
        self.assertRegex(out, r"a1: .*b1 \([^)]*DTLS ECDHE-ECDSA-[A-Z0-9-]+\)")
        # wow netcheck and wow ping on the nodes
        self.assertRegex(out, r"pub: seen as [\d.]+:\d+; mapping none; reachable directly: yes")
        self.assertRegex(out, r"Overlay ping a1 → b1 \(wow ping b1\):\n  reply from "
                         r"wow:[0-9a-f]{40} \(10\.128\.\d+\.\d+\): (direct link|relayed)")
        match = re.search(r"nothing left behind \(prefix (d[0-9a-f]{5})\)", out)
        assert match is not None, out
        self.assertEqual(leftovers(match.group(1)), [])

    def test_keep_then_down(self) -> None:
        result = subprocess.run([*WOW, "demo", "--keep"], capture_output=True, text=True,
                                timeout=400, cwd=HERE)
        self.addCleanup(subprocess.run, [*WOW, "demo", "down"], capture_output=True, cwd=HERE)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("wow demo shell a1", result.stdout)
        match = re.search(r"namespaces (d[0-9a-f]{5})\*", result.stdout)
        assert match is not None, result.stdout
        prefix = match.group(1)
        self.assertNotEqual(leftovers(prefix), [])
        inside = subprocess.run(["ip", "netns", "exec", f"{prefix}s1h1", "getent", "hosts",
                                 "b2.wow"], capture_output=True, text=True)
        self.assertRegex(inside.stdout, r"10\.128\.\d+\.\d+\s+b2\.wow")
        down = subprocess.run([*WOW, "demo", "down"], capture_output=True, text=True,
                              timeout=60, cwd=HERE)
        self.assertEqual(down.returncode, 0, down.stderr)
        self.assertEqual(leftovers(prefix), [])
        again = subprocess.run([*WOW, "demo", "down"], capture_output=True, text=True,
                               timeout=60, cwd=HERE)
        self.assertEqual(again.returncode, 1)
        self.assertIn("no kept demo", again.stderr)
