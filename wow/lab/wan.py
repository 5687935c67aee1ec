"""
A wide-area network on one machine: an "internet" bridge and sites behind NATs.

Address plan (all inside namespaces the lab creates):
  - the internet: 198.18.0.0/24 on a bridge in its own namespace;
    public hosts at 198.18.0.10+, router WAN sides at 198.18.0.100+;
  - site N's LAN: 198.19.N.0/24, router at .1, hosts at .10+;
  - a double NAT's middle network: 100.64.N.0/24.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wow.lab.nat import NatKind, ruleset
from wow.lab.netns import Lab

INTERNET_PREFIX = "198.18.0"


@dataclass
class Host:
    """One machine: a namespace with an underlay address."""

    name: str
    ns: str
    address: str
    site: Site | None = None


@dataclass
class Site:
    kind: NatKind
    index: int
    routers: list[str] = field(default_factory=list)  # router namespaces, outermost first
    public_address: str = ""  # the outermost router's WAN address
    hosts: list[Host] = field(default_factory=list)


class Internet:
    """The shared "internet": one namespace holding a bridge every WAN plugs into."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.ns = lab.netns("inet")
        self.bridge = "br0"
        lab.ns_run(self.ns, "ip", "link", "add", self.bridge, "type", "bridge")
        lab.ns_run(self.ns, "ip", "link", "set", self.bridge, "up")
        self._next_public = 10
        self._ports = 0
        self.sites: list[Site] = []
        self.public_hosts: list[Host] = []

    def _plug(self, ns: str, inside_name: str) -> None:
        """Connect C{ns} to the internet bridge with a device called C{inside_name}."""
        self._ports += 1
        a, b = self.lab.veth(self.ns, ns, f"p{self._ports}")
        self.lab.ns_run(self.ns, "ip", "link", "set", a, "master", self.bridge)
        self.lab.ns_run(ns, "ip", "link", "set", b, "down")
        self.lab.ns_run(ns, "ip", "link", "set", b, "name", inside_name)
        self.lab.ns_run(ns, "ip", "link", "set", inside_name, "up")

    def add_public_host(self, name: str) -> Host:
        ns = self.lab.netns(name)
        self._plug(ns, "eth0")
        address = f"{INTERNET_PREFIX}.{self._next_public}"
        self._next_public += 1
        self.lab.addr(ns, "eth0", f"{address}/24")
        host = Host(name, ns, address)
        self.public_hosts.append(host)
        return host

    def add_site(self, kind: NatKind, hosts: int = 2) -> Site:
        """A site of C{hosts} hosts behind a router of C{kind}."""
        index = len(self.sites) + 1
        site = Site(kind, index)
        self.sites.append(site)
        if kind is NatKind.PUBLIC:
            for h in range(hosts):
                host = self.add_public_host(f"s{index}h{h + 1}")
                host.site = site
                site.hosts.append(host)
            return site
        lab = self.lab
        wan_address = f"{INTERNET_PREFIX}.{100 + index}"
        outer = lab.netns(f"s{index}r")
        self._plug(outer, "wan")
        lab.addr(outer, "wan", f"{wan_address}/24")
        site.routers.append(outer)
        site.public_address = wan_address
        inner = outer
        if kind is NatKind.DOUBLE:
            # outer router's LAN is the 100.64.N.0/24 carrier network
            inner = lab.netns(f"s{index}q")
            a, b = lab.veth(outer, inner, f"m{index}")
            self._rename(outer, a, "lan")
            self._rename(inner, b, "wan")
            lab.addr(outer, "lan", f"100.64.{index}.1/24")
            lab.addr(inner, "wan", f"100.64.{index}.2/24")
            lab.ns_run(inner, "ip", "route", "add", "default", "via", f"100.64.{index}.1")
            self._nat(outer, NatKind.PORT_RESTRICTED)
            self._nat(inner, NatKind.PORT_RESTRICTED)
            site.routers.append(inner)
        else:
            self._nat(outer, kind)
        # the LAN: a bridge called "lan" inside the innermost router.  A
        # router switches its LAN without filtering it: with br_netfilter
        # loaded (per namespace), bridged frames would otherwise meet the
        # forward chain's drop policy and hosts of one site could not talk.
        lab.ns_run(inner, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)
        lab.ns_run(inner, "ip", "link", "add", "lan", "type", "bridge")
        lab.ns_run(inner, "ip", "link", "set", "lan", "up")
        lab.addr(inner, "lan", f"198.19.{index}.1/24")
        for h in range(hosts):
            name = f"s{index}h{h + 1}"
            ns = lab.netns(name)
            a, b = lab.veth(inner, ns, f"l{index}{h + 1}")
            lab.ns_run(inner, "ip", "link", "set", a, "master", "lan")
            self._rename(ns, b, "eth0")
            address = f"198.19.{index}.{10 + h}"
            lab.addr(ns, "eth0", f"{address}/24")
            lab.ns_run(ns, "ip", "route", "add", "default", "via", f"198.19.{index}.1")
            host = Host(name, ns, address, site)
            site.hosts.append(host)
        return site

    def _rename(self, ns: str, dev: str, name: str) -> None:
        self.lab.ns_run(ns, "ip", "link", "set", dev, "down")
        self.lab.ns_run(ns, "ip", "link", "set", dev, "name", name)
        self.lab.ns_run(ns, "ip", "link", "set", name, "up")

    def _nat(self, ns: str, kind: NatKind) -> None:
        self.lab.ns_run(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.lab.ns_run(ns, "nft", "-f", "-", input=ruleset(kind).encode())

    def flush_nat_state(self) -> None:
        """Forget every mapping (conntrack and cone maps), as a router restart does."""
        for site in self.sites:
            for ns in site.routers:
                self.lab.ns_run(ns, "nft", "flush", "ruleset")
                kind = site.kind if site.kind is not NatKind.DOUBLE else NatKind.PORT_RESTRICTED
                self.lab.ns_run(ns, "nft", "-f", "-", input=ruleset(kind).encode())
                self.lab.ns_run(ns, "conntrack", "-F", check=False)
