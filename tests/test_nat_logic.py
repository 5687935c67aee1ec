"""Tests for the sans-I/O NAT logic: classification and probe schedules."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from wow.nat import punch
from wow.nat.behaviour import Mapping, MappingChange, NatObserver
from wow.nat.punch import Probe, Puncher, Role, State, choose_role

LOCAL = ("198.19.1.10", 4789)


class ObserverTests(SynchronousTestCase):
    def test_unknown_until_two_destinations(self) -> None:
        o = NatObserver()
        self.assertEqual(o.mapping(0), Mapping.UNKNOWN)
        o.observe(1, ("198.18.0.10", 4789), ("198.18.0.101", 4789), LOCAL, 0)
        self.assertEqual(o.mapping(0), Mapping.UNKNOWN)

    def test_endpoint_independent(self) -> None:
        o = NatObserver()
        o.observe(1, ("198.18.0.10", 4789), ("198.18.0.101", 4789), LOCAL, 0)
        o.observe(2, ("198.18.0.11", 4789), ("198.18.0.101", 4789), LOCAL, 0)
        self.assertEqual(o.mapping(1), Mapping.ENDPOINT_INDEPENDENT)
        self.assertEqual(o.reflexive_endpoints(1), [("198.18.0.101", 4789)])

    def test_dependent(self) -> None:
        o = NatObserver()
        o.observe(1, ("198.18.0.10", 4789), ("198.18.0.101", 31000), LOCAL, 0)
        o.observe(2, ("198.18.0.11", 4789), ("198.18.0.101", 52011), LOCAL, 0)
        self.assertEqual(o.mapping(1), Mapping.DEPENDENT)

    def test_public(self) -> None:
        o = NatObserver()
        me = ("198.18.0.10", 4789)
        o.observe(1, ("198.18.0.11", 4789), me, me, 0)
        o.observe(2, ("198.18.0.12", 4789), me, me, 0)
        self.assertEqual(o.mapping(0), Mapping.NONE)

    def test_unauthenticated_claims_ignored(self) -> None:
        o = NatObserver()
        o.observe(1, ("198.18.0.10", 4789), ("198.18.0.101", 4789), LOCAL, 0)
        o.observe(2, ("198.18.0.11", 4789), ("6.6.6.6", 1), LOCAL, 0, authenticated=False)
        self.assertEqual(o.reflexive_endpoints(0), [("198.18.0.101", 4789)])
        self.assertEqual(o.ignored_unauthenticated, 1)

    def test_mapping_change_noticed(self) -> None:
        o = NatObserver()
        dest = ("198.18.0.10", 4789)
        self.assertIsNone(o.observe(1, dest, ("198.18.0.101", 4789), LOCAL, 0))
        change = o.observe(1, dest, ("198.18.0.101", 1234), LOCAL, 5)
        self.assertEqual(change, MappingChange(1, ("198.18.0.101", 4789), ("198.18.0.101", 1234)))

    def test_old_observations_expire(self) -> None:
        o = NatObserver()
        o.observe(1, ("198.18.0.10", 4789), ("198.18.0.101", 4789), LOCAL, 0)
        o.observe(2, ("198.18.0.11", 4789), ("198.18.0.101", 4789), LOCAL, 0)
        self.assertEqual(o.mapping(10_000), Mapping.UNKNOWN)

    def test_sequential_port_prediction(self) -> None:
        o = NatObserver()
        for i, port in enumerate((5000, 5002, 5004)):
            o.observe(i, (f"198.18.0.{10 + i}", 4789), ("198.18.0.101", port), LOCAL, i)
        self.assertEqual(o.predicted_ports(5, 2), [("198.18.0.101", 5006), ("198.18.0.101", 5008)])

    def test_random_ports_not_predicted(self) -> None:
        o = NatObserver()
        for i, port in enumerate((5000, 41234, 17)):
            o.observe(i, (f"198.18.0.{10 + i}", 4789), ("198.18.0.101", port), LOCAL, i)
        self.assertEqual(o.predicted_ports(5), [])


class PuncherTests(SynchronousTestCase):
    CANDIDATES = [("198.19.2.10", 4789), ("198.18.0.102", 4789)]

    def run_until(self, p: Puncher, until: float) -> list[tuple[float, list[Probe]]]:
        sent = []
        while True:
            t = p.next_wakeup()
            if t is None or t > until:
                return sent
            probes = p.poll(t)
            if probes:
                sent.append((t, probes))

    def test_rounds_back_off_then_relay(self) -> None:
        p = Puncher(self.CANDIDATES, now=100.0)
        sent = self.run_until(p, 100.0 + punch.DIRECT_PHASE_S)
        self.assertEqual([round(t - 100, 3) for t, _ in sent], list(punch.ROUNDS_S))
        self.assertTrue(all(len(probes) == 2 for _, probes in sent))
        self.assertEqual(p.state, State.RELAYED)
        self.assertEqual(p.next_wakeup(),
                         100.0 + punch.DIRECT_PHASE_S + punch.BACKGROUND_INTERVAL_S)

    def test_background_retry_while_relayed(self) -> None:
        p = Puncher(self.CANDIDATES, now=0.0)
        self.run_until(p, punch.DIRECT_PHASE_S)
        later = p.next_wakeup()
        assert later is not None
        self.assertEqual(len(p.poll(later)), 2)
        self.assertEqual(p.state, State.PUNCHING)

    def test_success_stops_probing(self) -> None:
        p = Puncher(self.CANDIDATES, now=0.0)
        p.poll(0.0)
        p.succeeded(self.CANDIDATES[1], 0.05)
        self.assertEqual(p.state, State.DIRECT)
        self.assertIsNone(p.next_wakeup())
        self.assertEqual(p.poll(1.0), [])
        self.assertEqual(p.endpoint, self.CANDIDATES[1])

    def test_hostile_candidates_bounded(self) -> None:
        claimed = [("224.0.0.1", 5), ("255.255.255.255", 1), ("0.0.0.0", 9), ("x", 1),
                   ("198.18.0.1", 0)] + [("198.18.0.5", 1000 + i) for i in range(100)]
        p = Puncher(claimed, now=0)
        self.assertEqual(len(p.candidates), punch.MAX_CANDIDATES)
        self.assertTrue(all(c[0] == "198.18.0.5" for c in p.candidates))
        total = sum(len(probes) for _, probes in self.run_until(p, punch.DIRECT_PHASE_S))
        self.assertEqual(total, punch.MAX_CANDIDATES * len(punch.ROUNDS_S))

    def test_roles(self) -> None:
        dep, eim = "address-and-port-dependent", "endpoint-independent"
        self.assertEqual(choose_role(dep, eim), Role.BIRTHDAY_OPENER)
        self.assertEqual(choose_role(eim, dep), Role.BIRTHDAY_PROBER)
        self.assertEqual(choose_role(dep, dep), Role.PLAIN)
        self.assertEqual(choose_role(eim, eim), Role.PLAIN)

    def test_birthday_opener_uses_fresh_sockets(self) -> None:
        p = Puncher([("198.18.0.102", 4789)], now=0, role=Role.BIRTHDAY_OPENER)
        probes = p.poll(0)
        sockets = {pr.socket for pr in probes}
        self.assertEqual(len(sockets), punch.BIRTHDAY_SOCKETS + 1)
        self.assertTrue(all(pr.endpoint == ("198.18.0.102", 4789) for pr in probes))

    def test_birthday_prober_rotates_ports(self) -> None:
        p = Puncher([("198.18.0.103", 31000)], now=0, role=Role.BIRTHDAY_PROBER,
                    rng=random.Random(7))
        rounds = [probes for _, probes in self.run_until(p, punch.DIRECT_PHASE_S)]
        birthday = [{pr.endpoint[1] for pr in r[1:]} for r in rounds[: punch.BIRTHDAY_ROUNDS]]
        for ports in birthday:
            self.assertEqual(len(ports), punch.BIRTHDAY_PROBES)
        self.assertFalse(birthday[0] & birthday[1])
        self.assertFalse(birthday[1] & birthday[2])
        # after the birthday rounds only the plain candidate is probed
        self.assertEqual(len(rounds[-1]), 1)

    def test_birthday_hit_probability(self) -> None:
        """The schedule's numbers give ≥ 90 % success against a random-port NAT."""
        rng = random.Random(1)
        hits = 0
        trials = 200
        for _ in range(trials):
            opened = set(rng.sample(range(*punch.EPHEMERAL), punch.BIRTHDAY_SOCKETS))
            p = Puncher([("198.18.0.103", 31000)], now=0, role=Role.BIRTHDAY_PROBER, rng=rng)
            probed = {pr.endpoint[1] for pr in p.poll(0)[1:]}
            hits += bool(opened & probed)
        self.assertGreaterEqual(hits / trials, 0.9)


class RelayChoiceTests(SynchronousTestCase):
    def test_common_neighbour_with_lowest_rtt(self) -> None:
        from wow.nat.relay import choose_relay

        mine = {1: 0.004, 2: 0.001, 3: None, 4: 0.0005}
        self.assertEqual(choose_relay(mine, [1, 2, 3, 9]), 2)
        self.assertEqual(choose_relay(mine, [3]), 3)
        self.assertEqual(choose_relay(mine, [2], exclude=[2]), None)
        self.assertIsNone(choose_relay(mine, [7, 8]))


class SameLanTests(SynchronousTestCase):
    def test_a_peer_on_our_lan_does_not_make_us_symmetric(self) -> None:
        nat = NatObserver()
        local = ("198.19.1.10", 4789)
        nat.observe(1, ("198.18.0.10", 4789), ("198.18.0.101", 4789), local, 0.0)
        nat.observe(2, ("198.18.0.11", 4789), ("198.18.0.101", 4789), local, 0.0)
        nat.observe(3, ("198.19.1.11", 4789), local, local, 0.0)  # same site, no NAT between
        self.assertEqual(nat.mapping(1.0), Mapping.ENDPOINT_INDEPENDENT)
        self.assertEqual(nat.reflexive_endpoints(1.0), [("198.18.0.101", 4789)])
        self.assertTrue(nat.behind_nat(1.0))
