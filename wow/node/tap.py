"""
Command-line options and service construction for C{twistd wow-node}.

Options are parsed and the configuration validated here, before twistd
starts logging, so any mistake ends with one sentence on stderr and a
non-zero exit.  L{makeService} is a pure builder from a validated
L{NodeConfig} to the service tree.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from wow.node.config import NodeConfig, load_node_config
from wow.util.config import ConfigError
from wow.util.fatal import fatal

PROGRAM = "wow-node"


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        fatal(PROGRAM, f"--listen {value!r} is not a port number", 2)
    return port


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a WOW node: a TAP virtual NIC configured by the host's own DHCP client, "
        "joined to the WOW overlay."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (see etc/wow-node.toml)."],
        ["tap", None, None, "Name of the TAP device (overrides tap.name)."],
        ["state-dir", None, None, "State directory (overrides node.state_dir)."],
        ["listen", None, None, "Overlay UDP port (overrides overlay.listen)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bootstrap"] = []
        self.config: NodeConfig | None = None

    def opt_bootstrap(self, url: str) -> None:
        """Bootstrap node as udp://HOST:PORT (repeatable; overrides overlay.bootstrap)."""
        self["bootstrap"].append(url)

    def overrides(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self["tap"] is not None:
            out.setdefault("tap", {})["name"] = self["tap"]
        if self["state-dir"] is not None:
            out.setdefault("node", {})["state_dir"] = self["state-dir"]
        if self["listen"] is not None:
            out.setdefault("overlay", {})["listen"] = _port(self["listen"])
        if self["bootstrap"]:
            out.setdefault("overlay", {})["bootstrap"] = list(self["bootstrap"])
        return out

    def postOptions(self) -> None:
        try:
            self.config = load_node_config(self["config"], self.overrides())
        except ConfigError as e:
            fatal(PROGRAM, str(e), 2)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wow.node.service import build_node_service

    assert options.config is not None
    return build_node_service(options.config, reactor)
