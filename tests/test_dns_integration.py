"""
C{twistd -n wow-dns} for real, in network namespaces, asked by C{dig} and by
the OS resolver (C{getent hosts}) of a client namespace whose
C{/etc/resolv.conf} points at it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests.netns import HERE, Lab, skip_reason

#: twistd from this interpreter (C{python -m twisted} is the "twist" runner,
#: which knows no -n).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(lab: Lab, ns: str, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
    pidfile = os.path.join(lab.workdir, log_name + ".pid")
    return lab.spawn(ns, [*TWISTD, "-n", "--pidfile", pidfile, "wow-dns", *args], log_name)


BIG_TXT = "big TXT " + " ".join(["x" * 200] * 8)


class WowDnsInNamespaces(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = skip_reason("dig", "getent", "curl")
        if reason:
            raise self.skipTest(reason)
        self.lab = lab = Lab(tag="d")
        self.addCleanup(lab.teardown)
        self.server_ns = lab.netns("s")
        self.client_ns = lab.netns("c")
        a, b = lab.veth(self.server_ns, self.client_ns, "v")
        lab.addr(self.server_ns, a, "10.128.0.1/16")
        lab.addr(self.server_ns, a, "192.0.2.1/24")
        lab.addr(self.client_ns, b, "10.128.0.5/16")
        lab.addr(self.client_ns, b, "192.0.2.5/24")
        names = os.path.join(lab.workdir, "names.hosts")
        with open(names, "w") as f:
            f.write("# a names file\n10.128.0.5 alice\n10.128.0.6 bob bobby\n"
                    "10.128.0.7 a.lab\nnot-an-address carol\n")
            f.writelines(f"10.128.{i // 250 + 1}.{i % 250 + 1} host{i}\n" for i in range(2000))
        # The upstream: a second wow-dns serving another domain on 127.0.0.1:5353.
        upstream_conf = self.config("up.toml", listen="127.0.0.1", port=5353, domain="up",
                                    records=["other A 10.9.9.9"])
        self.upstream = twistd(lab, self.server_ns, ["--config", upstream_conf], "upstream")
        conf = self.config(
            "dns.toml", listen="10.128.0.1", port=53, names_file=names,
            records=["ca A 10.128.0.2", "www CNAME ca", BIG_TXT],
            upstreams=["127.0.0.1:5353"], nameserver_address="10.128.0.1",
            metrics_listen="10.128.0.1:9153")
        self.server = twistd(lab, self.server_ns, ["--config", conf], "server")
        lab.wait_for_log(self.upstream, "DNS answering on")
        lab.wait_for_log(self.server, "DNS answering on 10.128.0.1 port 53")

    def config(self, name: str, **values: object) -> str:
        path = os.path.join(self.lab.workdir, name)
        lines = ["[dns]"]
        for key, value in values.items():
            if isinstance(value, str):
                lines.append(f"{key} = {value!r}".replace("'", '"'))
            elif isinstance(value, list):
                items = ", ".join('"' + v.replace('"', '\\"') + '"' for v in value)
                lines.append(f"{key} = [{items}]")
            else:
                lines.append(f"{key} = {value}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def dig(self, *args: str) -> str:
        result = self.lab.ns_run(self.client_ns, "dig", "@10.128.0.1", "+time=2", "+tries=2",
                                 *args)
        return result.stdout.decode()

    def test_dig(self) -> None:
        self.assertEqual(self.dig("+short", "alice.wow").strip(), "10.128.0.5")
        self.assertEqual(self.dig("+short", "HOST1999.WOW").strip(), "10.128.8.250")
        self.assertEqual(self.dig("+short", "c10-128-0-6.wow").strip(), "10.128.0.6")
        self.assertEqual(self.dig("+short", "-x", "10.128.0.6").strip(), "bob.wow.")
        self.assertEqual(self.dig("+short", "+tcp", "bobby.wow").strip(), "10.128.0.6")
        self.assertEqual(self.dig("+short", "www.wow").split(), ["ca.wow.", "10.128.0.2"])
        out = self.dig("nobody.wow")
        self.assertIn("status: NXDOMAIN", out)
        self.assertIn("flags: qr aa rd ra", out)
        self.assertRegex(out, r"wow\.\s+60\s+IN\s+SOA\s+ns\.wow\. hostmaster\.wow\.")
        out = self.dig("alice.wow", "AAAA")
        self.assertIn("status: NOERROR", out)
        self.assertIn("ANSWER: 0, AUTHORITY: 1", out)
        self.assertIn("status: NOERROR", self.dig("lab.wow"))
        self.assertIn("status: NOTIMP", self.dig("alice.wow", "ANY"))
        self.assertIn("Transfer failed", self.dig("wow", "AXFR"))  # REFUSED over TCP

    def test_truncation_and_tcp_fallback(self) -> None:
        out = self.dig("+notcp", "+ignore", "+bufsize=1232", "big.wow", "TXT")
        self.assertIn("flags: qr aa tc rd ra", out)
        self.assertIn("ANSWER: 0", out)
        out = self.dig("big.wow", "TXT")  # dig retries over TCP by itself
        self.assertIn("Truncated, retrying in TCP mode", out)
        self.assertIn("ANSWER: 1", out)
        self.assertIn("x" * 200, out)

    def test_forwarding_and_access_control(self) -> None:
        out = self.dig("other.up")
        self.assertIn("status: NOERROR", out)
        self.assertIn("flags: qr rd ra", out)
        self.assertIn("10.9.9.9", out)
        self.assertIn("status: REFUSED", self.dig("+norecurse", "other.up"))
        # From an address outside the virtual network: REFUSED, no larger than the query.
        out = self.dig("-b", "192.0.2.5", "alice.wow")
        self.assertIn("status: REFUSED", out)
        self.assertIn("ANSWER: 0", out)
        out = self.dig("-b", "192.0.2.5", "other.up")
        self.assertIn("status: REFUSED", out)
        metrics = self.lab.ns_run(self.client_ns, "curl", "-sS",
                                  "http://10.128.0.1:9153/metrics").stdout.decode()
        self.assertIn('wow_dns_dns_queries_refused_total{reason="source-not-allowed"} 2.0',
                      metrics)
        self.assertIn('wow_dns_dns_queries_refused_total{reason="no-recursion-desired"} 1.0',
                      metrics)

    def test_os_resolver(self) -> None:
        netns_etc = os.path.join("/etc/netns", self.client_ns)
        self.addCleanup(shutil.rmtree, netns_etc, True)
        os.makedirs(netns_etc)
        with open(os.path.join(netns_etc, "resolv.conf"), "w") as f:
            f.write("nameserver 10.128.0.1\nsearch wow\noptions timeout:2 attempts:2\n")
        for name, expected in (("alice.wow", "10.128.0.5"), ("bob", "10.128.0.6"),
                               ("host1234", "10.128.5.235"), ("other.up", "10.9.9.9")):
            out = self.lab.ns_run(self.client_ns, "getent", "hosts", name).stdout.decode()
            self.assertEqual(out.split()[0], expected, name)
        missing = self.lab.ns_run(self.client_ns, "getent", "hosts", "nobody.wow", check=False)
        self.assertEqual(missing.returncode, 2)
        out = self.lab.ns_run(self.client_ns, "getent", "hosts", "10.128.0.5").stdout.decode()
        self.assertIn("alice.wow", out)

    def test_sighup_reloads_the_names_file(self) -> None:
        import signal

        self.assertIn("status: NXDOMAIN", self.dig("newcomer.wow"))
        with open(os.path.join(self.lab.workdir, "names.hosts"), "a") as f:
            f.write("10.128.9.9 newcomer\n")
        os.kill(self.server.pid, signal.SIGHUP)
        self.lab.wait_until(lambda: self.dig("+short", "newcomer.wow").strip() == "10.128.9.9",
                            timeout=20, what="the reloaded name")
        self.assertEqual(self.dig("+short", "alice.wow").strip(), "10.128.0.5")

    def test_bad_names_file_line_is_logged_not_fatal(self) -> None:
        self.assertIn("skipped", self.lab.log_text(self.server))
        self.assertIn("loaded 2004 names", self.lab.log_text(self.server))


class StartupErrors(TestCase):
    def test_bad_config_is_one_sentence(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[dns]\nsubnet = 'nonsense'\n")
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "wow-dns", "--config", path],
            capture_output=True, text=True, cwd=HERE, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("dns.subnet", result.stderr)

    def test_missing_names_file(self) -> None:
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "wow-dns", "--port", "0", "--names-file",
             "/nonexistent/names"], capture_output=True, text=True, cwd=HERE, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertIn("dns.names_file /nonexistent/names cannot be read", result.stderr)
