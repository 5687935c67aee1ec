"""
Network-namespace test topologies, torn down even when a test fails.

Each L{Lab} has a unique short prefix (so two runs never collide and device
names stay within IFNAMSIZ), creates namespaces, veth pairs and bridges with
C{ip}, runs commands inside namespaces, starts daemons and waits for their
readiness lines, and removes everything it made in L{Lab.teardown} (register
it with C{self.addCleanup(lab.teardown)} before building anything).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def skip_reason(*tools: str) -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


class Lab:
    """A set of namespaces, links and processes owned by one test."""

    def __init__(self, tag: str = "w") -> None:
        # 1-2 letter tag + 5 hex digits: names like "wA3f9c1-n1" stay short.
        self.prefix = f"{tag}{secrets.token_hex(3)[:5]}"
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, str] = {}
        self.etc_netns: list[str] = []
        self.workdir = os.path.join("/tmp", f"wowlab-{self.prefix}")
        os.makedirs(self.workdir, exist_ok=True)

    # -- building ---------------------------------------------------------

    def name(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        assert len(name) <= 15, name
        return name

    def netns(self, suffix: str) -> str:
        """Create a namespace with loopback up; return its name."""
        ns = self.name(suffix)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.namespaces.append(ns)
        self.ns_run(ns, "ip", "link", "set", "lo", "up")
        return ns

    def veth(self, ns_a: str | None, ns_b: str | None, suffix: str) -> tuple[str, str]:
        """A veth pair with one end in each namespace (None = the root namespace)."""
        a, b = self.name(suffix + "a"), self.name(suffix + "b")
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        self.links.append(a)
        for dev, ns in ((a, ns_a), (b, ns_b)):
            if ns is not None:
                subprocess.run(["ip", "link", "set", dev, "netns", ns], check=True)
            self.ns_run(ns, "ip", "link", "set", dev, "up")
        return a, b

    def bridge(self, ns: str, suffix: str) -> str:
        """A bridge inside C{ns}."""
        br = self.name(suffix)
        self.ns_run(ns, "ip", "link", "add", br, "type", "bridge")
        self.ns_run(ns, "ip", "link", "set", br, "up")
        return br

    def addr(self, ns: str | None, dev: str, cidr: str) -> None:
        self.ns_run(ns, "ip", "addr", "add", cidr, "dev", dev)

    def resolv_conf(self, ns: str, text: str = "") -> str:
        """
        Give C{ns} its own /etc/resolv.conf (ip netns exec bind-mounts
        /etc/netns/NS/resolv.conf over it); return the file's path.
        """
        directory = os.path.join("/etc/netns", ns)
        os.makedirs(directory, exist_ok=True)
        self.etc_netns.append(directory)
        path = os.path.join(directory, "resolv.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- running ----------------------------------------------------------

    @staticmethod
    def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)

    def ns_run(self, ns: str | None, *argv: str, check: bool = True, timeout: float = 60,
               input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(self.ns_argv(ns, argv), capture_output=True, timeout=timeout,
                                input=input)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {ns or 'root'} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result

    def spawn(self, ns: str | None, argv: Sequence[str], log_name: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process; its output goes to a log file."""
        log_path = os.path.join(self.workdir, log_name + ".log")
        log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = HERE + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        proc = subprocess.Popen(self.ns_argv(ns, argv), stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, cwd=HERE, start_new_session=True)
        log.close()
        self.processes.append(proc)
        self.logs[proc.pid] = log_path
        return proc

    def twistd(self, ns: str | None, plugin: str, args: Sequence[str], log_name: str
               ) -> subprocess.Popen[bytes]:
        """Start C{twistd -n PLUGIN ARGS} from this checkout."""
        pidfile = os.path.join(self.workdir, log_name + ".pid")
        # "python -m twisted" is twist, not twistd: run twistd's entry point.
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile", pidfile, plugin, *args]
        return self.spawn(ns, argv, log_name)

    def log_text(self, proc: subprocess.Popen[bytes]) -> str:
        with open(self.logs[proc.pid], "rb") as f:
            return f.read().decode(errors="replace")

    def wait_for_log(self, proc: subprocess.Popen[bytes], needle: str, timeout: float = 20
                     ) -> None:
        """Wait until C{needle} appears in the process's log, or fail loudly."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text(proc):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{needle!r} not seen within {timeout} s (exit {proc.poll()}); log:\n"
            + self.log_text(proc)[-3000:]
        )

    @staticmethod
    def wait_until(predicate, timeout: float = 20, interval: float = 0.1,  # type: ignore[no-untyped-def]
                   what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        raise AssertionError(f"{what} not reached within {timeout} s")

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10) -> int:
        """Signal the process we started (by PID) and reap it."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    # -- keeping a lab across processes (wow demo --keep / down) ------------

    def to_state(self) -> dict[str, object]:
        """What L{teardown} needs, as JSON-able data."""
        return {"prefix": self.prefix, "namespaces": self.namespaces, "links": self.links,
                "pids": [p.pid for p in self.processes if p.poll() is None],
                "workdir": self.workdir, "etc_netns": self.etc_netns}

    @staticmethod
    def teardown_state(state: dict[str, Any]) -> None:
        """Tear down a lab kept by another process (its processes by PID)."""
        for pid in reversed(state.get("pids", [])):
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        deadline = time.monotonic() + 10
        for pid in state.get("pids", []):
            while time.monotonic() < deadline:
                try:
                    os.kill(int(pid), 0)
                except (ProcessLookupError, ValueError):
                    break
                time.sleep(0.1)
        lab = Lab.__new__(Lab)
        lab.prefix = str(state["prefix"])
        lab.namespaces = list(state.get("namespaces", []))
        lab.links = list(state.get("links", []))
        lab.processes = []
        lab.logs = {}
        lab.workdir = str(state.get("workdir", ""))
        lab.etc_netns = list(state.get("etc_netns", []))
        lab.teardown()

    # -- teardown ---------------------------------------------------------

    def teardown(self) -> None:
        for proc in reversed(self.processes):
            try:
                self.stop(proc)
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            # Kill anything still running inside the namespace (only ours live there).
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for directory in self.etc_netns:
            shutil.rmtree(directory, ignore_errors=True)
        keep = os.environ.get("WOW_KEEP_LAB_LOGS")
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
