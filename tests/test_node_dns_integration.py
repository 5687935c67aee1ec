"""
A node's own resolver, configured only by its DHCP client, resolves WOW names.

wow-node answers DNS on the virtual gateway address that DHCP option 6 hands
out; Debian's unmodified dhclient-script writes the namespace's
/etc/resolv.conf from the lease, and the OS resolver (getent) then finds the
node's host name, its derived name and the reverse name.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from wow.demo.topology import NodeSite
from wow.lab.netns import Lab, skip_reason


class NodeResolverTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = skip_reason("dhclient", "getent", "dig", "ping")
        if reason:
            raise self.skipTest(reason)
        self.lab = Lab(tag="N")
        self.addCleanup(self.lab.teardown)

    def test_os_resolver_finds_names(self) -> None:
        lab = self.lab
        site = NodeSite(lab)
        site.start()
        resolv = lab.resolv_conf(site.ns, "# empty until dhclient writes it\n")
        conf = os.path.join(site.workdir, "dhclient-real.conf")
        with open(conf, "w") as f:
            f.write('timeout 20;\nsend host-name = "alpha";\n'
                    "request subnet-mask, domain-name-servers, domain-name, host-name;\n")
        lab.spawn(site.ns, [
            "dhclient", "-d", "-1", "-4", "-cf", conf,
            "-pf", os.path.join(site.workdir, "real.pid"),
            "-lf", os.path.join(site.workdir, "real.leases"), site.tap,
        ], "dhclient-real")

        def configured() -> bool:
            with open(resolv) as f:
                return "nameserver 10.128.0.1" in f.read() and bool(site.addresses())

        lab.wait_until(configured, 30, what="dhclient-script writing resolv.conf")
        with open(resolv) as f:
            text = f.read()
        self.assertIn("search wow", text)
        [cidr] = site.addresses()
        ip = cidr.split("/")[0]

        def getent(name: str) -> str:
            out = lab.ns_run(site.ns, "getent", "hosts", name, check=False)
            return out.stdout.decode()

        lab.wait_until(lambda: ip in getent("alpha.wow"), 15, what="alpha.wow resolving")
        self.assertIn(ip, getent("alpha"))  # through the search domain
        derived = "c" + ip.replace(".", "-") + ".wow"
        self.assertIn(ip, getent(derived))
        self.assertIn("alpha.wow", getent(ip))  # PTR through the OS resolver
        self.assertEqual(getent("nobody-has-this.wow"), "")
        ptr = lab.ns_run(site.ns, "dig", "+short", "-x", ip, "@10.128.0.1")
        self.assertEqual(ptr.stdout.decode().strip(), "alpha.wow.")
        soa = lab.ns_run(site.ns, "dig", "nobody.wow", "@10.128.0.1")
        self.assertIn("NXDOMAIN", soa.stdout.decode())
        # the gateway answers ping too
        lab.ns_run(site.ns, "ping", "-c", "1", "-W", "2", "10.128.0.1")
