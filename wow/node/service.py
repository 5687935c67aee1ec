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
from wow.node.config import NodeConfig
from wow.util.durable import ensure_private_directory


class NodeService(MultiService):
    """The root of one node's service tree."""

    log = Logger()

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.control = ControlService(reactor, config.control_socket)
        self.control.setServiceParent(self)
        # The overlay: one UDP port, the ring and the DHT (docs/architecture.md).
        from wow.overlay.service import OverlayService

        self.overlay = OverlayService(config, reactor, getattr(self, "counters", None))
        self.overlay.setServiceParent(self)
        self.overlay.register_control(self.control)

    def privilegedStartService(self) -> None:
        ensure_private_directory(self.config.node.state_dir)
        super().privilegedStartService()


def build_node_service(config: NodeConfig, reactor: Any) -> NodeService:
    return NodeService(config, reactor)
