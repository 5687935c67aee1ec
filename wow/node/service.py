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
from wow.node.config import NodeConfig
from wow.util.durable import ensure_private_directory


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
        if config.metrics.listen:
            from wow.prometheus import metrics_service

            metrics_service(reactor, self.counters, "wow_node", config.metrics.listen
                            ).setServiceParent(self)
        if config.web.listen:
            from wow.web.api import web_service

            web_service(reactor, self.control.factory.handlers, config.web.listen
                        ).setServiceParent(self)

    def privilegedStartService(self) -> None:
        ensure_private_directory(self.config.node.state_dir)
        super().privilegedStartService()


def build_node_service(config: NodeConfig, reactor: Any) -> NodeService:
    return NodeService(config, reactor)
