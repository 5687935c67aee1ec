"""
NAT routers of every RFC 4787 kind, built with nftables inside namespaces.

The recipes follow C{shared/reference/nat-lab.md}: every router drops
unsolicited packets arriving on its WAN side (otherwise a peer's early probe
creates a conntrack entry that steals the host's mapping and spoils hole
punching), forwards only LAN→WAN and established or DNATed flows, and
masquerades on the WAN.  Full and restricted cone add a timed map from the
mapped port to the internal endpoint, filled from outbound UDP after
masquerade has chosen the port; symmetric uses fully random masquerading.
"""

from __future__ import annotations

from enum import StrEnum


class NatKind(StrEnum):
    """The kinds of router a site can sit behind (RFC 4787 terms)."""

    PUBLIC = "public"  # no NAT: the host sits on the internet
    FULL_CONE = "full-cone"  # EIM / EIF
    RESTRICTED = "restricted-cone"  # EIM / ADF
    PORT_RESTRICTED = "port-restricted"  # EIM / APDF (plain Linux masquerade)
    SYMMETRIC = "symmetric"  # APDM / APDF
    DOUBLE = "double"  # two port-restricted routers in series

    @property
    def endpoint_independent_mapping(self) -> bool:
        return self is not NatKind.SYMMETRIC


#: How long the cone maps remember a mapping (independent of conntrack).
CONE_TIMEOUT_S = 300


def ruleset(kind: NatKind, wan: str = "wan", lan: str = "lan") -> str:
    """
    The nft script for one router of C{kind} (not L{NatKind.PUBLIC}; a double
    NAT is two L{NatKind.PORT_RESTRICTED} routers).
    """
    if kind in (NatKind.PUBLIC, NatKind.DOUBLE):
        raise ValueError(f"{kind.value} is not a single router kind")
    random = " fully-random" if kind is NatKind.SYMMETRIC else ""
    cone = kind in (NatKind.FULL_CONE, NatKind.RESTRICTED)
    lines = [
        "table ip wownat {",
    ]
    if cone:
        lines += [
            "  map cone {",
            "    type inet_service : ipv4_addr . inet_service",
            f"    flags timeout; timeout {CONE_TIMEOUT_S}s",
            "  }",
        ]
    if kind is NatKind.RESTRICTED:
        lines += [
            "  set allowed {",
            "    type ipv4_addr . inet_service",
            f"    flags timeout; timeout {CONE_TIMEOUT_S}s",
            "  }",
        ]
    lines += [
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f'    iifname "{wan}" ct state established,related accept',
        f'    iifname "{wan}" drop',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        f'    iifname "{lan}" oifname "{wan}" accept',
        "    ct status dnat accept",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "{wan}" masquerade{random}',
        "  }",
    ]
    if cone:
        # After masquerade (srcnat + 10) the reply tuple's destination port is
        # the external port chosen for this flow.
        lines += [
            "  chain learn {",
            "    type filter hook postrouting priority srcnat + 10; policy accept;",
            f'    oifname "{wan}" meta l4proto udp update @cone '
            "{ ct reply proto-dst : ct original ip saddr . ct original proto-src }",
        ]
        if kind is NatKind.RESTRICTED:
            lines.append(
                f'    oifname "{wan}" meta l4proto udp update @allowed '
                "{ ip daddr . ct reply proto-dst }"
            )
        lines += ["  }"]
        match = ""
        if kind is NatKind.RESTRICTED:
            match = " ip saddr . udp dport @allowed"
        lines += [
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f'    iifname "{wan}" ct state new{match} dnat ip to udp dport map @cone',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"
