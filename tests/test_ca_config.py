"""wow-ca's configuration, its twistd options, the node's [ca] section and the enrolment plan."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.ca_support import NOW, b64, make_csr
from wow.ca.client import Enrol, Reenrol, WaitUntil, node_enroller, plan
from wow.ca.config import CaConfig, load_ca_config
from wow.ca.csr import CsrRules, check_request
from wow.ca.issue import Signer, create_ca, parse_est_certs
from wow.node.config import load_node_config
from wow.util.config import ConfigError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CaConfigTests(SynchronousTestCase):
    def test_example_file_documents_the_defaults(self) -> None:
        self.assertEqual(load_ca_config(os.path.join(HERE, "etc", "wow-ca.toml")), CaConfig())

    def test_refusals_name_the_key(self) -> None:
        cases = [
            ({"policy": {"kind": "sometimes"}}, "policy.kind"),
            ({"listen": {"port": 70000}}, "listen.port"),
            ({"listen": {"address": "nowhere"}}, "listen.address"),
            ({"issue": {"key_types": ["dsa"]}}, "issue.key_types"),
            ({"issue": {"rsa_min_bits": 1024}}, "issue.rsa_min_bits"),
            ({"issue": {"lifetime": 5}}, "issue.lifetime"),
            ({"ldap": {"url": "http://x"}}, "ldap.url"),
            ({"ldap": {"user_filter": "uid=x"}}, "ldap.user_filter"),
            ({"crl": {"lifetime": 1}}, "crl.lifetime"),
            ({"issue": {"networks": ["10.0.0.1/8"]}}, "issue.networks"),
            ({"ca": {"colour": "red"}}, "ca.colour"),
        ]
        for overrides, word in cases:
            with self.subTest(word):
                with self.assertRaises(ConfigError) as cm:
                    load_ca_config(None, overrides)
                self.assertIn(word, str(cm.exception))

    def test_server_names(self) -> None:
        self.assertEqual(CaConfig().listen.server_names, ("127.0.0.1", "localhost"))
        c = load_ca_config(None, {"listen": {"address": "10.128.0.2"}})
        self.assertEqual(c.listen.server_names, ("10.128.0.2",))
        c = load_ca_config(None, {"listen": {"tls_names": ["ca.wow", "10.1.1.1"]}})
        self.assertEqual(c.listen.server_names, ("ca.wow", "10.1.1.1"))

    def test_twistd_options(self) -> None:
        from wow.ca.tap import Options

        options = Options()
        options.parseOptions(["--state-dir", "/tmp/x", "--listen", "9443", "--policy", "manual"])
        assert options.config is not None
        self.assertEqual(
            (options.config.ca.state_dir, options.config.listen.port, options.config.policy.kind),
            ("/tmp/x", 9443, "manual"),
        )
        self.assertEqual(options.config.control_socket, "/tmp/x/control.sock")


class NodeSectionTests(SynchronousTestCase):
    def test_node_ca_section(self) -> None:
        c = load_node_config(None, {"ca": {"url": "https://10.128.0.2:8443"}})
        self.assertEqual(c.ca.url, "https://10.128.0.2:8443")
        for bad, word in (
            ({"url": "http://x"}, "ca.url"),
            ({"url": "https://x:99999"}, "ca.url"),
            ({"ca_fingerprint": "abc"}, "ca.ca_fingerprint"),
            ({"renew_before": 1}, "ca.renew_before"),
        ):
            with self.assertRaises(ConfigError) as cm:
                load_node_config(None, {"ca": bad})
            self.assertIn(word, str(cm.exception))

    def test_node_enroller_only_with_url(self) -> None:
        self.assertIsNone(node_enroller(load_node_config(None), None, lambda: None))
        c = load_node_config(
            None, {"ca": {"url": "https://10.128.0.2:8443"}, "node": {"name": "alpha"}}
        )
        enroller = node_enroller(c, None, lambda: "10.128.0.9", "ab" * 20)
        assert enroller is not None
        self.assertEqual(enroller.settings.hostname, "alpha")
        self.assertEqual(enroller.settings.overlay, "urn:wow:node:" + "ab" * 20)
        self.assertEqual(enroller.current_ip(), "10.128.0.9")


class PlanTests(SynchronousTestCase):
    """The node's sans-I/O decision: enrol, renew, or wait until when."""

    def setUp(self) -> None:
        self.ca_key, self.ca = create_ca("CA", 3650, NOW)
        signer = Signer(self.ca_key, self.ca, 30 * 86400)
        valid = check_request(b64(make_csr(cn="n1", ips=("10.128.0.5",))), "10.128.0.5", CsrRules())
        self.cert = signer.issue(valid, 1234, NOW)
        self.expires = self.cert.not_valid_after_utc.timestamp()

    def test_table(self) -> None:
        ip, day = "10.128.0.5", 86400
        _, other_ca = create_ca("Other", 10, NOW)
        cases = [
            (NOW, None, True, self.ca, ip, Enrol),
            (NOW, self.cert, False, self.ca, ip, Enrol),
            (NOW, self.cert, True, other_ca, ip, Enrol),
            (NOW, self.cert, True, self.ca, "10.128.0.6", Enrol),
            (self.expires + 1, self.cert, True, self.ca, ip, Enrol),
            (self.expires - 6 * day, self.cert, True, self.ca, ip, Reenrol),
            (NOW, self.cert, True, self.ca, ip, WaitUntil),
        ]
        for now, cert, matches, ca, node_ip, kind in cases:
            with self.subTest(f"{kind.__name__} {now - NOW}"):
                self.assertIsInstance(plan(now, cert, matches, ca, node_ip, "n1", 7 * day), kind)
        wait = plan(NOW, self.cert, True, self.ca, ip, "n1", 7 * day)
        assert isinstance(wait, WaitUntil)
        self.assertEqual(wait.when, self.expires - 7 * day)
        # A renewal window longer than the lifetime is capped at halfway.
        wait = plan(NOW, self.cert, True, self.ca, ip, "n1", 365 * day)
        assert isinstance(wait, WaitUntil)
        self.assertAlmostEqual(wait.when, NOW - 60 + (self.expires - NOW + 60) / 2, delta=1)
        self.assertIsInstance(plan(NOW, self.cert, True, self.ca, ip, "renamed", 7 * day), Enrol)


class EstBodyFuzzTests(SynchronousTestCase):
    @given(st.binary(max_size=2000))
    def test_certs_only_parser_raises_only_value_error(self, data: bytes) -> None:
        try:
            parse_est_certs(data)
        except ValueError:
            pass


class CaFilesTests(SynchronousTestCase):
    """The CA key and certificate are created once, private, and reloaded."""

    def test_created_once_0600_then_reloaded(self) -> None:
        import stat

        from wow.ca.issue import load_or_create_ca

        state = self.mktemp()
        os.makedirs(state)
        key, cert, created = load_or_create_ca(state, "CA", 10, NOW)
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(state, "ca.key")).st_mode), 0o600)
        self.assertEqual(cert.public_key().curve.name, "secp256r1")  # type: ignore[union-attr]
        again_key, again, created = load_or_create_ca(state, "CA", 10, NOW + 5)
        self.assertFalse(created)
        self.assertEqual(again, cert)
        # A key that does not match the certificate is a start-up error, not a new CA.
        other = self.mktemp()
        os.makedirs(other)
        load_or_create_ca(other, "CA", 10, NOW)
        os.replace(os.path.join(other, "ca.key"), os.path.join(state, "ca.key"))
        with self.assertRaises(ValueError) as cm:
            load_or_create_ca(state, "CA", 10, NOW)
        self.assertIn("does not match", str(cm.exception))

    def test_server_certificate_reused_until_names_change(self) -> None:
        from cryptography import x509

        from wow.ca.service import server_certificate
        from wow.ca.store import Store

        state = self.mktemp()
        os.makedirs(state)
        signer = Signer(*create_ca("CA", 3650, NOW), 86400)
        store = Store(os.path.join(state, "ca.sqlite"))
        self.addCleanup(store.close)
        _, first = server_certificate(state, signer, store, ("127.0.0.1",), NOW)
        _, same = server_certificate(state, signer, store, ("127.0.0.1",), NOW + 10)
        self.assertEqual(first, same)
        _, renamed = server_certificate(state, signer, store, ("10.128.0.2", "ca.wow"), NOW)
        cert = x509.load_pem_x509_certificate(renamed)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual([str(v) for v in san.get_values_for_type(x509.IPAddress)], ["10.128.0.2"])
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["ca.wow"])
        cert.verify_directly_issued_by(signer.cert)
        self.assertEqual([r.kind for r in store.certs()], ["server", "server"])


class EnrollUsageTests(SynchronousTestCase):
    """C{wow enroll} refuses bad arguments with one sentence and exit status 2, offline."""

    def run_enroll(self, *args: str) -> tuple[int, str]:
        import contextlib
        import io

        from wow.cli.main import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(
                ["enroll", "--ca", "https://127.0.0.1:1", "--state-dir", self.mktemp(), *args]
            )
        return code, err.getvalue().strip()

    def test_bad_arguments(self) -> None:
        creds = self.mktemp()
        with open(creds, "w") as f:
            f.write("no-colon-here\n")
        cases = [
            (("--ip", "10.1.2"), "is not an IP address"),
            (("--ip", "10.1.2.3", "--hostname", "bad_name"), "not a valid host name"),
            (("--ip", "10.1.2.3", "--hostname", "n", "--overlay-address", "xyz"), "40 hex digits"),
            (("--ip", "10.1.2.3", "--hostname", "n", "--credentials", creds), "user:password"),
            (
                ("--ip", "10.1.2.3", "--hostname", "n", "--credentials", "/nonexistent"),
                "No such file",
            ),
        ]
        for args, words in cases:
            with self.subTest(args):
                code, err = self.run_enroll(*args)
                self.assertEqual(code, 2)
                self.assertTrue(err.startswith("wow enroll: "), err)
                self.assertIn(words, err)
                self.assertEqual(len(err.splitlines()), 1)
