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
        self.assertIn("DHCPACK(", log)
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


OVERLAY_CONFIG = """
[dhcp]
mode = "relay"
server = "10.128.0.2"
relay_transport = "overlay"
[overlay]
interface = "{address}"
listen = {port}
bootstrap = ["udp://{peer}:{peer_port}"]
keepalive = 0.5
dead_after = 3.0
stabilize = 2.0
"""


class RelayOverOverlayTests(SynchronousTestCase):
    """
    The original system's mode for real: dnsmasq runs on the TAP of one WOW
    node (S, static address 10.128.0.2), another node (A) relays its host's
    dhclient to it over the overlay, and S routes dnsmasq's replies back.

        ns A: dhclient ─TAP─ wow-node A ══ overlay (veth) ══ wow-node S ─TAP─ dnsmasq :ns S
    """

    if SKIP:
        skip = SKIP

    def test_dhclient_on_one_node_dnsmasq_on_another(self) -> None:
        lab = Lab(tag="r")
        self.addCleanup(lab.teardown)
        sites = {}
        for name, address, peer in (("a", "192.0.2.1", "192.0.2.2"),
                                    ("s", "192.0.2.2", "192.0.2.1")):
            sites[name] = NodeSite(lab, suffix=name)
            with open(sites[name].config, "w") as f:
                f.write(OVERLAY_CONFIG.format(address=address, port=47400, peer=peer,
                                              peer_port=47400))
        a, s = sites["a"], sites["s"]
        va, vs = lab.veth(a.ns, s.ns, "u")
        lab.addr(a.ns, va, "192.0.2.1/24")
        lab.addr(s.ns, vs, "192.0.2.2/24")
        a.start()
        s.start()
        # S's host is the DHCP server: a static virtual address and dnsmasq on its TAP.
        lab.ns_run(s.ns, "ip", "addr", "add", "10.128.0.2/16", "dev", s.tap)
        lab.ns_run(s.ns, "ip", "link", "set", s.tap, "up")
        leases = os.path.join(lab.workdir, "dnsmasq.leases")
        dnsmasq = lab.spawn(s.ns, [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
            "--pid-file=", f"--dhcp-leasefile={leases}", "--log-dhcp", "--no-ping",
            f"--interface={s.tap}", "--dhcp-range=10.128.0.50,10.128.0.99,255.255.0.0,600",
            "--dhcp-option=3",
        ], "dnsmasq-s")
        lab.wait_for_log(dnsmasq, "DHCP, IP range 10.128.0.50", timeout=20)
        # S found its host to be the server (ARP) and published 10.128.0.2.
        lab.wait_for_log(s.node, "the DHCP server 10.128.0.2 is on this TAP")  # type: ignore[arg-type]
        lab.wait_until(lambda: s.counter("dhcp_relay_published", "result=ok") >= 1, timeout=30,
                       what="the server's address published in the DHT")

        client = a.dhclient()
        event = a.wait_event("BOUND", timeout=60)
        ip = event[1]
        self.assertTrue(ip.startswith("10.128.0.") and 50 <= int(ip.split(".")[3]) <= 99, ip)
        self.assertEqual(event[2:], ["255.255.0.0", "600"])
        self.assertEqual(a.addresses(), [ip + "/16"])
        self.assertEqual([r["ip"] for r in a.leases()], [ip])
        log = lab.log_text(dnsmasq)
        self.assertIn("server-identifier  10.128.0.1", log)
        self.assertIn("option: 82 agent-id  01:06:", log)
        # The relayed reply went S → A over the overlay, and the lease is
        # published for the IP router: any node's DHT names A.
        self.assertGreaterEqual(s.counter("dhcp_relayed", "direction=to-relaying-node"), 2)
        a_address = a.control("status")["overlay"]["address"]
        lab.wait_until(
            lambda: [v["owner"] for v in s.control(
                "dht.get", {"key": f"dhcp:10.128.0.0/16:{ip}"})] == [a_address],
            timeout=20, what="A's lease published in the DHT")

        # Release, relayed over the overlay to dnsmasq.
        a.dhclient_release()
        lab.wait_until(lambda: "DHCPRELEASE(" in lab.log_text(dnsmasq), timeout=20,
                       what="dnsmasq saw the release")
        lab.wait_until(lambda: a.leases() == [], timeout=10, what="A forgot the lease")
        lab.stop(client)
