"""
The throughput benchmark's bookkeeping (not its figures): ratios against each
peer, and the path registry a C{wow} path will be added to.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_throughput", os.path.join(HERE, "bench", "throughput.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class RatiosTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bench = load()

    def test_ratios_against_every_other_path(self) -> None:
        results = {
            "raw": {"mbps": 16000, "rtt_ms": 0.05},
            "wow_datapath": {"mbps": 4000, "rtt_ms": 0.5},
            "nebula": {"mbps": 800, "rtt_ms": 0.4},
            "openvpn": {"mbps": 500, "rtt_ms": 0.25},
            "tinc": {"error": "no connectivity"},
        }
        r = self.bench.ratios(results)
        self.assertEqual(r["wow_datapath"]["nebula"], {"mbps": 5.0, "rtt_ms": 1.25})
        self.assertEqual(r["wow_datapath"]["openvpn"], {"mbps": 8.0, "rtt_ms": 2.0})
        self.assertEqual(r["wow_datapath"]["raw"]["mbps"], 0.25)
        self.assertNotIn("tinc", r["wow_datapath"])
        self.assertEqual(set(r), {"wow_datapath"})

    def test_a_wow_path_is_compared_too(self) -> None:
        r = self.bench.ratios({"wow": {"mbps": 2000}, "nebula": {"mbps": 1000}})
        self.assertEqual(r, {"wow": {"nebula": {"mbps": 2.0}}})

    def test_registry(self) -> None:
        for name in self.bench.DEFAULT_PATHS:
            self.assertIn(name, self.bench.PATHS)
        self.assertEqual(self.bench.DEFAULT_PATHS[:2], ("raw", "wow_datapath"))

    def test_the_full_node_is_measured_by_default(self) -> None:
        self.assertIn("wow", self.bench.DEFAULT_PATHS)
        self.assertIn("wow", self.bench.WOW_PATHS)
        self.assertEqual(self.bench.PATHS["wow"][0], "dhclient")
