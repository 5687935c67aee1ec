"""The CLI side of the control socket: a blocking, one-shot call."""

from __future__ import annotations

import json
import socket
from typing import Any


class ControlError(Exception):
    """The daemon refused the command, or could not be reached."""


def call(path: str, command: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Send one command to the daemon at C{path} and return its result."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no daemon is listening at {path} (is wow-node running?)") from None
        except ConnectionRefusedError:
            raise ControlError(f"the daemon at {path} is not running") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path} (run as root)") from None
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(f"the daemon at {path} did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError("the daemon sent a malformed reply") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")
