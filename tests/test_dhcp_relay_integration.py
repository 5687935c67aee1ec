"""
Central DHCP for real: a wow-node in relay mode, the host's own dhclient on
its TAP, and a real dnsmasq as the DHCP server in another namespace reached
over plain UDP (C{dhcp.relay_transport = "udp"}).

    namespace A                                  namespace B
    dhclient ─TAP─ wow-node (relay agent) ─veth─ dnsmasq
                   192.0.2.1:67  ────UDP────►    192.0.2.2:67
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import Lab, skip_reason
from wow.demo.topology import NodeSite

SKIP = skip_reason("dhclient", "dnsmasq")
RELAY_ADDR, SERVER_ADDR = "192.0.2.1", "192.0.2.2"


class RelayToDnsmasqTests(SynchronousTestCase):
    if SKIP:
        skip = SKIP

    def test_dhclient_gets_a_lease_from_dnsmasq_through_the_relay(self) -> None:
        lab = Lab(tag="r")
        self.addCleanup(lab.teardown)
        site = NodeSite(lab, extra_config=(
            f'mode = "relay"\nserver = "{SERVER_ADDR}"\nrelay_transport = "udp"\n'))
        server_ns = lab.netns("srv")
        a, b = lab.veth(site.ns, server_ns, "u")
        lab.addr(site.ns, a, RELAY_ADDR + "/24")
        lab.addr(server_ns, b, SERVER_ADDR + "/24")
        leases = os.path.join(lab.workdir, "dnsmasq.leases")
        dnsmasq = lab.spawn(server_ns, [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
            "--pid-file=", f"--dhcp-leasefile={leases}", "--log-dhcp", "--no-ping",
            "--dhcp-range=10.128.0.50,10.128.0.99,255.255.0.0,600",
            # no router: the virtual subnet is on-link
            "--dhcp-option=3",
        ], "dnsmasq")
        lab.wait_for_log(dnsmasq, "DHCP, IP range 10.128.0.50", timeout=20)
        node = site.start()
        lab.wait_for_log(node, "relaying DHCP to 192.0.2.2 over udp (giaddr 192.0.2.1)")

        client = site.dhclient()
        event = site.wait_event("BOUND")
        lease = site.lease(event)
        ip = lease.ip
        first, last = (int(x.split(".")[3]) for x in ("10.128.0.50", "10.128.0.99"))
        self.assertTrue(ip.startswith("10.128.0.") and first <= int(ip.split(".")[3]) <= last,
                        ip)
        # dnsmasq's mask and lease time (it sends no DNS or domain here).
        self.assertEqual(event[2:], ["255.255.0.0", "600"])
        self.assertEqual(site.addresses(), [ip + "/16"])
        # dnsmasq saw a relayed request: giaddr and option 82 from our agent.
        log = lab.log_text(dnsmasq)
        self.assertIn(f"DHCPACK(", log)
        self.assertIn(ip, log)
        # Option 82 came back (circuit id = the client's MAC, 6 bytes) and the
        # server identifier is the overridden one (RFC 5107): the gateway.
        self.assertIn("option: 82 agent-id  01:06:", log)
        self.assertIn("server-identifier  10.128.0.1", log)
        with open(leases) as f:
            self.assertIn(ip, f.read())
        # The node knows its relayed client (ARP, routing, `wow leases`).
        (record,) = site.leases()
        self.assertEqual(record["ip"], ip)
        self.assertGreaterEqual(site.counter("dhcp_relayed", "direction=to-server"), 2)
        self.assertGreaterEqual(site.counter("dhcp_relayed", "direction=to-client"), 2)

        # Release: relayed to dnsmasq (the client sends it to the gateway, the
        # server identifier it was given), which frees the lease.
        site.dhclient_release()
        try:
            lab.wait_until(lambda: site.leases() == [], timeout=20, what="relayed lease forgotten")
        except AssertionError as e:
            raise AssertionError(f"{e}; counters {site.control('counters')}; node log:\n"
                                 f"{lab.log_text(node)[-3000:]}") from None
        lab.wait_until(lambda: "DHCPRELEASE(" in lab.log_text(dnsmasq), timeout=10,
                       what="dnsmasq saw the release")
        lab.stop(client)
        self.assertTrue(node.poll() is None)

        # Bound again; a restarted node still knows its relayed client (state dir).
        site.dhclient("dhclient2")
        again = site.lease(site.wait_event("BOUND", count=2)).ip
        site.stop()
        site.start()
        self.assertEqual([r["ip"] for r in site.leases()], [again])
