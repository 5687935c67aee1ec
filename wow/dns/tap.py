"""
Command-line options and service construction for C{twistd wow-dns}.

Options are parsed, the configuration validated and the names file loaded
before twistd starts logging, so any mistake ends with one sentence on
stderr and a non-zero exit.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from wow.dns.config import DnsConfig, load_dns_config
from wow.util.config import ConfigError
from wow.util.fatal import fatal

PROGRAM = "wow-dns"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve a WOW's virtual domain (host names, names derived from every address, "
        "PTR records) over DNS, forwarding other names for clients of the virtual network."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (see etc/wow-dns.toml)."],
        ["listen", None, None, "Address to answer on (overrides dns.listen)."],
        ["port", "p", None, "Port (overrides dns.port)."],
        ["names-file", None, None, "Hosts-style names file (overrides dns.names_file)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.config: DnsConfig | None = None

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self["listen"] is not None:
            out["listen"] = self["listen"]
        if self["port"] is not None:
            try:
                out["port"] = int(self["port"])
            except ValueError:
                fatal(PROGRAM, f"--port {self['port']!r} is not a port number", 2)
        if self["names-file"] is not None:
            out["names_file"] = self["names-file"]
        return out

    def postOptions(self) -> None:
        try:
            self.config = load_dns_config(self["config"], self.overrides())
        except ConfigError as e:
            fatal(PROGRAM, str(e), 2)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wow.dns.service import build_dns_service

    assert options.config is not None
    try:
        return build_dns_service(options.config, reactor)
    except ConfigError as e:
        fatal(PROGRAM, str(e), 2)
