"""
The C{wow-node} service tree.

L{build_node_service} composes the node's parts into one MultiService; each
part is its own child service so it starts, stops and is tested on its own.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from wow.control.server import ControlService
from wow.metrics import Counters
from wow.nic.service import NicService
from wow.node.config import NodeConfig
from wow.node.status import StatusBoard
from wow.util.durable import ensure_private_directory
from wow.util.fatal import fatal


class NodeService(MultiService):
    """The root of one node's service tree."""

    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: Shared by every part of this node; exported by the metrics service.
        self.counters = Counters()
        self.control = ControlService(reactor, config.control_socket)
        self.control.setServiceParent(self)
        self.status = StatusBoard(reactor, self.counters)
        self.control.register("status", self.status.status)
        self.control.register("counters", self.status.counters_snapshot)
        self.nic = NicService(config, reactor, self.counters)
        self.nic.setServiceParent(self)
        self.control.register("leases", self.nic.leases)
        self.status.contribute("nic", self.nic.status)
        self.enroller = None
        if config.ca.url:
            from wow.ca.client import node_enroller

            self.enroller = node_enroller(config, reactor, self.nic.host_ip)
            if self.enroller is not None:
                self.enroller.setServiceParent(self)
        if config.metrics.listen:
            from wow.prometheus import metrics_service

            metrics_service(reactor, self.counters, "wow_node", config.metrics.listen
                            ).setServiceParent(self)
        if config.web.listen:
            from wow.web.api import web_service

            web_service(reactor, self.control.factory.handlers, config.web.listen
                        ).setServiceParent(self)

    def privilegedStartService(self) -> None:
        # Children's known start-up failures (not root, no /dev/net/tun, ...)
        # end in one sentence before anything is created.
        for child in self:
            preflight = getattr(child, "preflight", None)
            if preflight is not None:
                preflight()
        try:
            ensure_private_directory(self.config.node.state_dir)
        except OSError as e:
            fatal("wow-node", f"cannot create the state directory "
                  f"{self.config.node.state_dir}: {e.strerror}", 1)
        super().privilegedStartService()


def build_node_service(config: NodeConfig, reactor: Any) -> NodeService:
    return NodeService(config, reactor)
