"""
Command-line options and service construction for C{twistd wow-ca}.

Options are parsed and the configuration validated before twistd starts
logging, so a mistake ends with one sentence on stderr and exit status 2.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from wow.ca.config import CaConfig, load_ca_config
from wow.util.config import ConfigError
from wow.util.fatal import fatal

PROGRAM = "wow-ca"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a WOW community CA: EST (RFC 7030) enrolment over HTTPS, certificates bound "
        "to each node's virtual IP, automatic, manual or LDAP approval."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (see etc/wow-ca.toml)."],
        ["state-dir", None, None, "State directory (overrides ca.state_dir)."],
        ["listen", None, None, "HTTPS port (overrides listen.port)."],
        ["address", None, None, "Address to listen on (overrides listen.address)."],
        ["policy", None, None, "auto, manual or ldap (overrides policy.kind)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.config: CaConfig | None = None

    def overrides(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self["state-dir"] is not None:
            out.setdefault("ca", {})["state_dir"] = self["state-dir"]
        if self["listen"] is not None:
            try:
                out.setdefault("listen", {})["port"] = int(self["listen"])
            except ValueError:
                fatal(PROGRAM, f"--listen {self['listen']!r} is not a port number", 2)
        if self["address"] is not None:
            out.setdefault("listen", {})["address"] = self["address"]
        if self["policy"] is not None:
            out.setdefault("policy", {})["kind"] = self["policy"]
        return out

    def postOptions(self) -> None:
        try:
            self.config = load_ca_config(self["config"], self.overrides())
        except ConfigError as e:
            fatal(PROGRAM, str(e), 2)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wow.ca.service import CaService

    assert options.config is not None

    class Service(CaService):
        def privilegedStartService(self) -> None:
            from twisted.internet.error import CannotListenError

            try:
                super().privilegedStartService()
            except CannotListenError as e:
                fatal(PROGRAM, f"cannot listen on port {e.port}: {e.socketError}", 1)
            except (OSError, ValueError) as e:
                fatal(PROGRAM, f"cannot start: {e}", 1)

    return Service(options.config, reactor)
