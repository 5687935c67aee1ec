"""Tests for L{wow.security.policy} and the [security] config section."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wow.node.config import NodeConfig, SecuritySection, load_node_config
from wow.security.policy import Action, Decision, Direction, PeerState, Policy
from wow.util.config import ConfigError

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
NONE, HS, EST, FAILED = (
    PeerState.NONE,
    PeerState.HANDSHAKING,
    PeerState.ESTABLISHED,
    PeerState.FAILED,
)

ME = "10.128.0.2"
PRIVATE = "10.128.0.3"
PUBLIC = "10.128.0.10"
LAB = "10.128.200.5"  # in an unsecured subnet

S, P, D = Action.SECURE, Action.PLAIN, Action.DROP


class PolicyTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        # The whole network is secured except 10.128.200.0/24; .10 is public.
        self.policy = Policy(["10.128.0.0/17", "10.128.201.0/24"], ["10.128.0.10/32"])

    def test_table(self) -> None:
        table = [
            # direction, src, dst, have_cert, state -> action, reason
            (OUT, ME, PRIVATE, True, NONE, S, "secured-subnet"),
            (OUT, ME, PRIVATE, True, HS, S, "secured-subnet"),
            (OUT, ME, PRIVATE, True, EST, S, "session"),
            (OUT, ME, PRIVATE, True, FAILED, D, "handshake-failed"),
            (OUT, ME, PRIVATE, False, NONE, D, "not-enrolled"),
            (OUT, ME, PUBLIC, False, NONE, P, "public-node"),
            (OUT, ME, PUBLIC, True, NONE, P, "public-node"),
            (OUT, ME, PUBLIC, True, EST, S, "session"),
            (OUT, PUBLIC, PRIVATE, False, NONE, P, "public-node"),  # a public node answers
            (OUT, LAB, "10.128.200.6", False, NONE, P, "unsecured-subnet"),
            (OUT, LAB, PRIVATE, False, NONE, D, "not-enrolled"),
            (IN, PRIVATE, ME, True, EST, S, "session"),
            (IN, PRIVATE, ME, True, NONE, D, "plaintext-to-secured"),
            (IN, PRIVATE, ME, False, NONE, D, "plaintext-to-secured"),
            (IN, PUBLIC, ME, False, NONE, P, "public-node"),
            (IN, PUBLIC, ME, True, NONE, P, "public-node"),
            (IN, PRIVATE, PUBLIC, False, NONE, P, "public-node"),  # at the public node
            (IN, LAB, "10.128.200.6", False, NONE, P, "unsecured-subnet"),
            (IN, LAB, ME, True, NONE, D, "plaintext-to-secured"),
            (IN, ME, LAB, False, NONE, D, "plaintext-to-secured"),  # spoofed secured source
            (OUT, ME, "not an ip", True, NONE, D, "bad-address"),
        ]
        for direction, src, dst, cert, state, action, reason in table:
            got = self.policy.decide(direction, src, dst, cert, state)
            self.assertEqual(got, Decision(action, reason), (direction, src, dst, cert, state))

    def test_disabled(self) -> None:
        policy = Policy(["10.128.0.0/16"], enabled=False)
        self.assertEqual(policy.decide(OUT, ME, PRIVATE, False, NONE), Decision(P, "security-off"))

    def test_from_config_defaults_to_whole_network(self) -> None:
        config = NodeConfig()
        policy = Policy.from_config(config.security, config.network)
        self.assertEqual([str(n) for n in policy.secure_subnets], ["10.128.0.0/16"])
        self.assertEqual(
            policy.decide(OUT, ME, "10.128.255.1", False, NONE), Decision(D, "not-enrolled")
        )
        # Either end in a secured subnet is enough to need security.
        self.assertEqual(policy.decide(OUT, ME, "192.168.1.1", False, NONE).action, D)
        self.assertEqual(policy.decide(OUT, "192.168.1.2", "192.168.1.1", False, NONE).action, P)


class SecurityConfigTests(SynchronousTestCase):
    def load(self, text: str) -> NodeConfig:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return load_node_config(path)

    def test_defaults(self) -> None:
        self.assertEqual(NodeConfig().security, SecuritySection())
        self.assertTrue(SecuritySection().enabled)

    def test_values(self) -> None:
        config = self.load(
            "[security]\nsecure_subnets = ['10.128.0.0/17']\npublic_nodes = ['10.128.0.10']\n"
            "crl_url = 'https://ca.wow/crl'\nrekey_interval = 600\n"
        )
        self.assertEqual(config.security.public_nodes, ("10.128.0.10",))
        self.assertEqual(config.security.rekey_interval, 600)

    def test_refusals(self) -> None:
        for text, fragment in (
            ("secure_subnets = ['10.128.0.1/16']", "security.secure_subnets[0]"),
            ("public_nodes = ['node-a']", "security.public_nodes[0]"),
            ("crl_url = 'ftp://x/crl'", "security.crl_url"),
            ("rekey_interval = 1", "security.rekey_interval"),
            ("rekey_bytes = 10", "security.rekey_bytes"),
            ("max_half_open = 0", "security.max_half_open"),
            ("enabled = 'yes'", "security.enabled must be true or false"),
        ):
            with self.assertRaises(ConfigError) as cm:
                self.load("[security]\n" + text + "\n")
            self.assertIn(fragment, str(cm.exception))
