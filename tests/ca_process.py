"""A C{twistd -n wow-ca} subprocess on loopback, for the crash test and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "from twisted.scripts.twistd import run; run()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CaProcess:
    """Start, wait for, and kill one wow-ca process (by its own PID only)."""

    def __init__(self, state_dir: str, port: int, policy: str = "auto") -> None:
        self.state_dir = state_dir
        self.port = port
        self.policy = policy
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(os.path.dirname(state_dir), "wow-ca.log")

    def start(self, timeout: float = 30) -> None:
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:
            start = log.tell()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    TWISTD,
                    "-n",
                    "--pidfile",
                    "",
                    "wow-ca",
                    "--state-dir",
                    self.state_dir,
                    "--address",
                    "127.0.0.1",
                    "--listen",
                    str(self.port),
                    "--policy",
                    self.policy,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=HERE,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                if b"wow-ca ready" in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"wow-ca did not start; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)

    def ca_pem(self) -> bytes:
        with open(os.path.join(self.state_dir, "ca.pem"), "rb") as f:
            return f.read()
