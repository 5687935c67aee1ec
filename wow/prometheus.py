"""
Prometheus exposition of a daemon's L{Counters}.

The protocol logic only increments L{wow.metrics.Counters}; this module
translates them into Prometheus metric families on each scrape (a custom
collector on a private registry, so several daemons in one test process
never share a global registry) and serves them over HTTP with twisted.web.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wow.metrics import Counters
from wow.util.config import ConfigError


class CountersCollector(Collector):
    """Presents one L{Counters} as Prometheus metric families named C{prefix_*}."""

    def __init__(self, counters: Counters, prefix: str) -> None:
        self.counters = counters
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        self.counters.refresh()
        for name in self.counters.names():
            yield self._family(CounterMetricFamily, name, self.counters.series(name))
        for name in self.counters.gauge_names():
            yield self._family(GaugeMetricFamily, name, self.counters.gauge_series(name))
        for name in self.counters.summary_names():
            series = list(self.counters.summary_series(name))
            labels = sorted({k for lbls, _, _ in series for k in lbls})
            family = SummaryMetricFamily(f"{self.prefix}_{name}", self.counters.help_for(name),
                                         labels=labels)
            for lbls, count, total in series:
                family.add_metric([lbls.get(k, "") for k in labels], count, total)
            yield family

    def _family(self, kind: Any, name: str,
                series_iter: Iterator[tuple[dict[str, str], float]]) -> Metric:
        series = list(series_iter)
        labels = sorted({k for lbls, _ in series for k in lbls})
        family = kind(f"{self.prefix}_{name}", self.counters.help_for(name), labels=labels)
        for lbls, value in series:
            family.add_metric([lbls.get(k, "") for k in labels], value)
        return family


def registry_for(counters: Counters, prefix: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CountersCollector(counters, prefix))
    return registry


class MetricsResource(Resource):
    """C{GET /metrics}: the text exposition format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """C{"127.0.0.1:9477"} → C{("127.0.0.1", 9477)}; L{ConfigError} otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} {value!r} must look like ADDRESS:PORT")
    import ipaddress

    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(f"{where} {value!r} must use an IPv4 address literal") from None
    return host, int(port)


def metrics_service(reactor: Any, counters: Counters, prefix: str, listen: str
                    ) -> StreamServerEndpointService:
    """A service serving C{counters} at C{http://listen/metrics}."""
    host, port = parse_listen(listen, "metrics.listen")
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry_for(counters, prefix)))
    endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    return StreamServerEndpointService(endpoint, Site(root))
