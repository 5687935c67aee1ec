"""The [overlay] settings: defaults match the example file, mistakes are one sentence."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from wow.node.config import load_node_config
from wow.overlay.service import params_from_config
from wow.util.config import ConfigError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OverlayConfigTests(SynchronousTestCase):
    def test_example_file_states_the_defaults(self) -> None:
        example = load_node_config(os.path.join(HERE, "etc", "wow-node.toml"))
        defaults = load_node_config(None)
        self.assertEqual(example.overlay, defaults.overlay)
        self.assertTrue(example.tap.enabled)
        p = params_from_config(defaults.overlay)
        self.assertEqual((p.keepalive, p.dead_after, p.replicas, p.near), (15.0, 45.0, 3, 2))

    def test_refusals(self) -> None:
        for values, word in [
            ({"keepalive": 0.0}, "overlay.keepalive"),
            ({"keepalive": 20.0, "dead_after": 10.0}, "overlay.dead_after"),
            ({"near": 1}, "overlay.near"),
            ({"ttl": 300}, "overlay.ttl"),
            ({"replicas": 0}, "overlay.replicas"),
            ({"dht_max_value": 5000}, "overlay.dht_max_value"),
            ({"bootstrap": ["tcp://1.2.3.4:5"]}, "bootstrap"),
            ({"keepalive": "fast"}, "overlay.keepalive"),
        ]:
            with self.assertRaises(ConfigError) as cm:
                load_node_config(None, {"overlay": values})
            self.assertIn(word, str(cm.exception))

    def test_overlay_only_node(self) -> None:
        config = load_node_config(None, {"tap": {"enabled": False}})
        self.assertFalse(config.tap.enabled)
