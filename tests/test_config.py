"""Tests for L{wow.util.config} and the node configuration."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from wow.node.config import DEFAULT_TAP_MTU, OVERHEAD, UNDERLAY_MTU, NodeConfig, load_node_config
from wow.util.config import ConfigError


class NodeConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def assertRefused(self, text: str, fragment: str, overrides=None) -> str:
        path = self.write(text)
        with self.assertRaises(ConfigError) as cm:
            load_node_config(path, overrides)
        message = str(cm.exception)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        config = load_node_config(None)
        self.assertEqual(config, NodeConfig())
        self.assertEqual(config.tap.name, "wow0")
        self.assertEqual(config.control_socket, "/var/lib/wow/control.sock")

    def test_mtu_budget(self) -> None:
        """The default MTU plus all framing fits a 1500-byte path."""
        self.assertLessEqual(DEFAULT_TAP_MTU + OVERHEAD, UNDERLAY_MTU)

    def test_example_config_is_valid(self) -> None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load_node_config(os.path.join(here, "etc", "wow-node.toml"))
        self.assertEqual(config, NodeConfig())

    def test_unknown_key(self) -> None:
        self.assertRefused("[tap]\ncolour = 'red'\n", "unknown setting tap.colour")

    def test_unknown_section(self) -> None:
        self.assertRefused("[frobnicate]\n", "unknown setting frobnicate")

    def test_bad_subnet(self) -> None:
        self.assertRefused("[network]\nsubnet = '10.0.0.1/8'\n", "network.subnet")

    def test_wrong_type(self) -> None:
        self.assertRefused("[tap]\nmtu = 'big'\n", "tap.mtu must be an integer")

    def test_tap_name_too_long(self) -> None:
        self.assertRefused("", "tap.name", {"tap": {"name": "x" * 16}})

    def test_missing_file(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_node_config("/nonexistent/wow.toml")
        self.assertIn("does not exist", str(cm.exception))

    def test_bad_toml(self) -> None:
        self.assertRefused("[tap\n", "not valid TOML")

    def test_bad_bootstrap(self) -> None:
        self.assertRefused("[overlay]\nbootstrap = ['tcp://x:1']\n", "udp://HOST:PORT")

    def test_overrides_replace_file(self) -> None:
        path = self.write("[tap]\nname = 'a0'\n[overlay]\nlisten = 1\n")
        config = load_node_config(
            path, {"tap": {"name": "b0"}, "overlay": {"bootstrap": ["udp://127.0.0.1:9"]}}
        )
        self.assertEqual(config.tap.name, "b0")
        self.assertEqual(config.overlay.listen, 1)
        self.assertEqual(config.overlay.bootstrap, ("udp://127.0.0.1:9",))

    def test_pool_outside_subnet(self) -> None:
        self.assertRefused("[dhcp]\npool_start = '192.0.2.1'\n", "outside network.subnet")
