"""
wow-ca for real: a C{twistd -n wow-ca} process in one network namespace,
nodes in another, enrolling with only openssl and curl (the README's own
lines), with C{wow enroll}, and administered with C{wow ca}.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from cryptography import x509
from twisted.trial.unittest import SkipTest, TestCase

from tests.netns import HERE, Lab, skip_reason

CA_IP, NODE_IP, OTHER_IP = "10.77.0.1", "10.77.0.5", "10.77.0.6"
PORT = 8443
TWISTD = "from twisted.scripts.twistd import run; run()"


def readme_block() -> str:
    """The openssl + curl lines of the README (the ```sh block under Certificates)."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Certificates (wow-ca)") :]
    return section[
        section.index("```sh\n") + 6 : section.index("```", section.index("```sh\n") + 6)
    ]


def wow(
    *args: str, ns: str | None = None, lab: Lab | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "wow", *args]
    if ns is not None:
        argv = Lab.ns_argv(ns, argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=HERE)


class RealCaTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        why = skip_reason("openssl", "curl")
        if why:
            raise SkipTest(why)
        self.lab = Lab(tag="c")
        self.addCleanup(self.lab.teardown)
        lab = self.lab
        self.ns_ca = lab.netns("ca")
        self.ns_node = lab.netns("nd")
        a, b = lab.veth(self.ns_ca, self.ns_node, "v")
        lab.addr(self.ns_ca, a, f"{CA_IP}/24")
        lab.addr(self.ns_node, b, f"{NODE_IP}/24")
        lab.addr(self.ns_node, b, f"{OTHER_IP}/24")
        self.state = os.path.join(lab.workdir, "ca-state")
        self.url = f"https://{CA_IP}:{PORT}"

    def start_ca(self, policy: str, retry_after: int = 60, extra: str = "") -> str:
        """Start wow-ca; return its CA fingerprint."""
        config = os.path.join(self.lab.workdir, "wow-ca.toml")
        with open(config, "w") as f:
            f.write(
                f'[ca]\nstate_dir = "{self.state}"\n'
                f'[listen]\naddress = "{CA_IP}"\nport = {PORT}\n'
                f'[policy]\nkind = "{policy}"\nretry_after = {retry_after}\n'
                '[issue]\nnetworks = ["10.77.0.0/24"]\n' + extra
            )
        pid = os.path.join(self.lab.workdir, "ca.pid")
        self.ca = self.lab.spawn(
            self.ns_ca,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile", pid, "wow-ca", "--config", config],
            "ca",
        )
        self.lab.wait_for_log(self.ca, "wow-ca ready", timeout=30)
        match = re.search(r"fingerprint ([0-9a-f]{64})", self.lab.log_text(self.ca))
        assert match
        return match.group(1)

    def sh(
        self, script: str, ns: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        return self.lab.ns_run(
            ns or self.ns_node, "bash", "-eo", "pipefail", "-c", script, check=check
        )

    def test_openssl_and_curl_enrolment_renewal_and_revocation(self) -> None:
        fp = self.start_ca("auto")
        work = os.path.join(self.lab.workdir, "node")
        os.makedirs(work)
        script = readme_block()
        script = re.sub(r"^CA=\S+", f"CA={self.url}", script, flags=re.M)
        script = re.sub(r"^IP=\S+", f"IP={NODE_IP}", script, flags=re.M)
        out = self.sh(f"cd {work}\n{script}").stdout.decode()
        # The fingerprint the README tells the user to compare is the logged one.
        printed = re.search(r"Fingerprint=([0-9A-F:]+)", out)
        assert printed
        self.assertEqual(printed.group(1).replace(":", "").lower(), fp)
        ca = x509.load_pem_x509_certificate(open(os.path.join(work, "ca.pem"), "rb").read())
        host = x509.load_pem_x509_certificate(open(os.path.join(work, "host.pem"), "rb").read())
        new = x509.load_pem_x509_certificate(open(os.path.join(work, "new.pem"), "rb").read())
        for cert in (host, new):
            cert.verify_directly_issued_by(ca)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.assertEqual([str(i) for i in san.get_values_for_type(x509.IPAddress)], [NODE_IP])
        self.assertIn('"status": "ok"', out)

        # The CA's view: the first certificate was superseded by the renewal.
        listed = wow("ca", "--state-dir", self.state, "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        rows = {r["serial"]: r for r in json.loads(listed.stdout)}
        self.assertEqual(rows[f"{host.serial_number:032x}"]["state"], "revoked")
        self.assertEqual(rows[f"{new.serial_number:032x}"]["via"], "reenroll")
        self.assertEqual(rows[f"{new.serial_number:032x}"]["state"], "valid")

        # A request for NODE_IP sent from OTHER_IP is refused, with a sentence.
        spoof = self.sh(
            f"cd {work}\nopenssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            f"-keyout s.key -subj /CN=spoof -addext subjectAltName=IP:{NODE_IP} -outform DER "
            f"-out s.csr 2>/dev/null\nbase64 s.csr | curl -sS --cacert ca.pem --interface "
            f"{OTHER_IP} -H 'Content-Type: application/pkcs10' --data-binary @- "
            f"-w '\\n%{{http_code}}' {self.url}/.well-known/est/simpleenroll"
        )
        body, code = spoof.stdout.decode().strip().rsplit("\n", 1)
        self.assertEqual(code, "403")
        body = body.strip()
        self.assertEqual(
            body,
            f"the request's IP subjectAltName {NODE_IP} is not the address "
            f"it came from ({OTHER_IP}).",
        )

        # Revocation by IP reaches the CRL at once.
        revoked = wow("ca", "--state-dir", self.state, "revoke", NODE_IP)
        self.assertEqual(revoked.returncode, 0, revoked.stderr)
        self.assertIn(f"{new.serial_number:032x}", revoked.stdout)
        crl = self.sh(
            f"curl -sS --cacert {work}/ca.pem {self.url}/crl | openssl crl -inform DER -noout -text"
        ).stdout.decode()
        self.assertIn(f"{new.serial_number:032X}", crl)
        self.assertIn(f"{host.serial_number:032X}", crl)
        self.assertIn("Next Update:", crl)
        again = wow("ca", "--state-dir", self.state, "revoke", NODE_IP)
        self.assertEqual(again.returncode, 1)
        self.assertIn("no unrevoked certificate matches", again.stderr)
        # twistd re-raises SIGTERM after a clean shutdown.
        self.assertIn(self.lab.stop(self.ca), (0, -15))

    def test_wow_enroll_waits_for_manual_approval(self) -> None:
        fp = self.start_ca("manual", retry_after=1)
        node_state = os.path.join(self.lab.workdir, "node-state")
        enroll = self.lab.spawn(
            self.ns_node,
            [
                sys.executable,
                "-m",
                "wow",
                "enroll",
                "--ca",
                self.url,
                "--ip",
                NODE_IP,
                "--hostname",
                "node5",
                "--state-dir",
                node_state,
                "--ca-fingerprint",
                fp,
                "--wait",
                "60",
            ],
            "enroll",
        )
        pending: list[dict[str, object]] = []

        def queued() -> bool:
            result = wow("ca", "--state-dir", self.state, "pending", "--json")
            pending[:] = json.loads(result.stdout) if result.returncode == 0 else []
            return bool(pending)

        self.lab.wait_until(queued, timeout=30, what="a pending request")
        [request] = pending
        self.assertEqual((request["ip"], request["hostname"]), (NODE_IP, "node5"))
        human = wow("ca", "--state-dir", self.state, "pending")
        self.assertIn("node5", human.stdout)
        approved = wow("ca", "--state-dir", self.state, "approve", str(request["id"]))
        self.assertEqual(approved.returncode, 0, approved.stderr)
        self.assertEqual(enroll.wait(30), 0, self.lab.log_text(enroll))
        self.assertIn("waiting for approval", self.lab.log_text(enroll))
        cert = x509.load_pem_x509_certificate(
            open(os.path.join(node_state, "host.pem"), "rb").read()
        )
        self.assertIn(f"{cert.serial_number:032x}", approved.stdout)
        self.assertEqual(os.stat(os.path.join(node_state, "host.key")).st_mode & 0o777, 0o600)

        # Enrolling again is a no-op while the certificate is valid.
        again = wow(
            "enroll",
            "--ca",
            self.url,
            "--ip",
            NODE_IP,
            "--hostname",
            "node5",
            "--state-dir",
            node_state,
            ns=self.ns_node,
        )
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("already enrolled", again.stdout)
        self.assertEqual(
            wow("ca", "--state-dir", self.state, "pending", "--json").stdout.strip(), "[]"
        )
        # --renew renews at once with the installed certificate as TLS client certificate.
        renewed = wow(
            "enroll",
            "--ca",
            self.url,
            "--ip",
            NODE_IP,
            "--hostname",
            "node5",
            "--state-dir",
            node_state,
            "--renew",
            ns=self.ns_node,
        )
        self.assertEqual(renewed.returncode, 0, renewed.stderr)
        listed = json.loads(wow("ca", "--state-dir", self.state, "list", "--json").stdout)
        self.assertEqual(sorted(r["via"] for r in listed), ["manual", "reenroll"])

        # Clear errors from the admin commands.
        bad = wow("ca", "--state-dir", self.state, "reject", "999")
        self.assertEqual(
            (bad.returncode, bad.stderr.strip()), (1, "wow ca reject: there is no request 999")
        )
        gone = wow("ca", "--socket", "/nonexistent/ca.sock", "list")
        self.assertEqual(gone.returncode, 3)
        self.assertIn("no wow-ca is listening", gone.stderr)

    def test_curl_enrolment_against_ldap_directory(self) -> None:
        directory = self.lab.spawn(
            self.ns_ca, [sys.executable, "-m", "tests.ldap_server", "3389"], "ldap"
        )
        self.lab.wait_for_log(directory, "ldap directory ready", timeout=30)
        self.start_ca(
            "ldap",
            extra=(
                '[ldap]\nurl = "ldap://127.0.0.1:3389"\nbase_dn = "ou=people,dc=example,dc=org"\n'
                'group_dn = "cn=wow-nodes,ou=groups,dc=example,dc=org"\n'
            ),
        )
        work = os.path.join(self.lab.workdir, "node")
        os.makedirs(work)
        self.sh(
            f"cd {work}\ncurl -sSk {self.url}/.well-known/est/cacerts | base64 -d "
            "| openssl pkcs7 -inform DER -print_certs -out ca.pem"
        )

        def enrol(user: str) -> tuple[str, str]:
            auth = f"-u {user}" if user else ""
            out = self.sh(
                f"cd {work}\nopenssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                f"-nodes -keyout k.pem -subj /CN=node5 -addext subjectAltName=IP:{NODE_IP} "
                f"-outform DER -out r.csr 2>/dev/null\nbase64 r.csr | curl -sS {auth} "
                f"--cacert ca.pem --interface {NODE_IP} -H 'Content-Type: application/pkcs10' "
                f"--data-binary @- -o body -w '%{{http_code}}' "
                f"{self.url}/.well-known/est/simpleenroll"
            ).stdout.decode()
            with open(os.path.join(work, "body"), "rb") as f:
                return out, f.read().decode(errors="replace").strip()

        code, body = enrol("")
        self.assertEqual(code, "401")
        self.assertIn("user name and password", body)
        code, body = enrol("alice:wrong")
        self.assertEqual((code, body), ("403", "the password of directory user 'alice' is wrong."))
        code, body = enrol("bob:bob-secret")
        self.assertEqual(code, "403")
        self.assertIn("not a member", body)
        code, body = enrol("nobody:x")
        self.assertEqual((code, body), ("403", "the directory has no user named 'nobody'."))
        code, _ = enrol("alice:alice-secret")
        self.assertEqual(code, "200")
        # Options may also follow the sub-command.
        listed = json.loads(wow("ca", "list", "--json", "--state-dir", self.state).stdout)
        self.assertEqual([r["via"] for r in listed], ["ldap:alice"])
        # The directory goes away: a temporary refusal, not a crash.
        self.lab.stop(directory)
        code, body = enrol("alice:alice-secret")
        self.assertEqual(code, "503")
        self.assertIn("unreachable", body)


class StartupErrorTests(TestCase):
    def test_bad_config_is_one_sentence(self) -> None:
        result = subprocess.run(
            [sys.executable, "-c", TWISTD, "-n", "wow-ca", "--policy", "sometimes"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=HERE,
        )
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr.strip(),
            "wow-ca: policy.kind 'sometimes' is not one of auto, manual, ldap.",
        )

    def test_port_in_use_is_one_sentence(self) -> None:
        import socket

        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        state = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile",
                "",
                "wow-ca",
                "--state-dir",
                state,
                "--address",
                "127.0.0.1",
                "--listen",
                str(busy.getsockname()[1]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=HERE,
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("wow-ca: cannot listen on port", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
