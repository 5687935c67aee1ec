"""Summaries (DHT latency) and refresh-on-scrape gauges (links by kind) in the exporter."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wow.metrics import Counters

from .test_prometheus import scrape_text


class SummaryTests(SynchronousTestCase):
    def test_summary_count_and_sum(self) -> None:
        counters = Counters()
        counters.observe("dht_op_seconds", 0.25, op="get")
        counters.observe("dht_op_seconds", 0.5, op="get")
        counters.observe("dht_op_seconds", 2.0, op="create")
        samples = scrape_text(counters)
        self.assertEqual(sorted(samples["wow_dht_op_seconds_count"], key=lambda s: s[1]),
                         [({"op": "create"}, 1.0), ({"op": "get"}, 2.0)])
        self.assertEqual(sorted(samples["wow_dht_op_seconds_sum"], key=lambda s: s[1]),
                         [({"op": "get"}, 0.75), ({"op": "create"}, 2.0)])
        self.assertEqual(list(counters.summary_series("dht_op_seconds"))[1],
                         ({"op": "get"}, 2, 0.75))

    def test_refreshers_run_on_each_scrape(self) -> None:
        counters = Counters()
        links = [3]
        counters.add_refresher(lambda: counters.set("links", links[0], kind="near"))
        self.assertEqual(scrape_text(counters)["wow_links"], [({"kind": "near"}, 3.0)])
        links[0] = 1
        self.assertEqual(scrape_text(counters)["wow_links"], [({"kind": "near"}, 1.0)])


class OverlayMetricsTests(SynchronousTestCase):
    """The overlay service's hot-path ints reach the counters on a scrape."""

    def test_datagrams_and_links(self) -> None:
        from wow.overlay.service import OverlayService

        counters = Counters()
        service = OverlayService(config=None, reactor=None, counters=counters)
        service.received(b"x" * 10, ("127.0.0.1", 1))  # no node yet: counted, not handled
        service.received(b"x" * 5, ("127.0.0.1", 1))
        samples = scrape_text(counters)
        self.assertEqual(samples["wow_overlay_datagrams_received_total"], [({}, 2.0)])
        self.assertEqual(samples["wow_overlay_bytes_received_total"], [({}, 15.0)])
        self.assertEqual(samples["wow_overlay_datagrams_sent_total"], [({}, 0.0)])
        self.assertEqual({lbl["kind"]: v for lbl, v in samples["wow_overlay_links"]},
                         dict.fromkeys(("near", "shortcut", "on-demand", "other", "relayed"),
                                       0.0))
        service.received(b"y", ("127.0.0.1", 1))
        self.assertEqual(scrape_text(counters)["wow_overlay_datagrams_received_total"],
                         [({}, 3.0)])
