"""The Prometheus exporter presents Counters faithfully and serves them over HTTP."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from wow.metrics import Counters
from wow.prometheus import metrics_service, parse_listen, registry_for
from wow.util.config import ConfigError


def scrape_text(counters: Counters) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.exposition import generate_latest

    text = generate_latest(registry_for(counters, "wow")).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


class CollectorTests(SynchronousTestCase):
    def test_counters_and_gauges(self) -> None:
        counters = Counters()
        counters.inc("frames_dropped", reason="truncated")
        counters.inc("frames_dropped", 2, reason="bad-checksum")
        counters.inc("frames_in")
        counters.set("links", 3, kind="near")
        samples = scrape_text(counters)
        self.assertEqual(
            sorted(samples["wow_frames_dropped_total"], key=lambda s: s[1]),
            [({"reason": "truncated"}, 1.0), ({"reason": "bad-checksum"}, 2.0)],
        )
        self.assertEqual(samples["wow_frames_in_total"], [({}, 1.0)])
        self.assertEqual(samples["wow_links"], [({"kind": "near"}, 3.0)])

    def test_parse_listen(self) -> None:
        self.assertEqual(parse_listen("127.0.0.1:9477", "x"), ("127.0.0.1", 9477))
        for bad in ("9477", "localhost:1", "127.0.0.1:99999", ":1"):
            self.assertRaises(ConfigError, parse_listen, bad, "x")


class ServeTests(TestCase):
    def test_scrape_over_http(self):  # type: ignore[no-untyped-def]
        counters = Counters()
        counters.inc("dns_queries", result="noerror")
        service = metrics_service(reactor, counters, "wowtest", "127.0.0.1:0")
        service.startService()
        self.addCleanup(service.stopService)

        d: Deferred[int] = Deferred()

        def port_of(port):  # type: ignore[no-untyped-def]
            d.callback(port.getHost().port)
            return port  # keep the port for stopService

        service._waitingForPort.addCallback(port_of)

        def fetch(port: int):  # type: ignore[no-untyped-def]
            pool = HTTPConnectionPool(reactor, persistent=False)
            return Agent(reactor, pool=pool).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())

        d.addCallback(fetch)
        d.addCallback(readBody)

        def check(body: bytes) -> None:
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            [sample] = families["wowtest_dns_queries"].samples
            self.assertEqual(sample.labels, {"result": "noerror"})
            self.assertEqual(sample.value, 1.0)

        d.addCallback(check)
        return d
