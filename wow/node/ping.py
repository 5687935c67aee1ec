"""
The C{ping} control command behind C{wow ping NAME|IP|ADDRESS}.

Resolves what the operator typed the way the node's own traffic would be:
an overlay address as is, a virtual IP through its DHCP lease in the DHT
(L{wow.dhcp.dhtclient.lease_key}, the key the IP router uses), a name through
the node's DNS (the same answers hosts get on the gateway), then sends one
overlay echo (L{wow.overlay.echo}).
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.names import dns

from wow.control.server import CommandError
from wow.dhcp.dhtclient import IDhtClient, lease_key
from wow.overlay import address as A
from wow.overlay.echo import Echo


class PingCommand:
    """C{{"target": str, "timeout": float}} → the echo's result, with how the target resolved."""

    def __init__(self, echo: Echo, network: Any, dht: IDhtClient | None, dns_service: Any,
                 rng: random.Random | None = None) -> None:
        self.echo = echo
        self.network = network
        self.dht = dht
        self.dns = dns_service
        self.rng = rng or random.Random()

    def __call__(self, args: dict[str, Any]) -> Deferred[dict[str, Any]]:
        target = args.get("target")
        timeout = args.get("timeout", 2.0)
        if not isinstance(target, str) or not target or len(target) > 255:
            raise CommandError("ping takes a target: a name, a virtual IP or an overlay address")
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise CommandError("ping's timeout must be between 0 and 60 seconds")

        def send(resolved: tuple[int, str | None]) -> Deferred[dict[str, Any]]:
            address, ip = resolved

            def annotate(result: dict[str, Any]) -> dict[str, Any]:
                result.update({"target": target, "address": A.to_text(address), "ip": ip})
                return result

            return self.echo.ping(address, float(timeout)).addCallback(annotate)

        return maybeDeferred(self.resolve, target).addCallback(send)

    def resolve(self, target: str) -> Deferred[tuple[int, str | None]]:
        """C{(overlay address, virtual IP or None)}; fails with L{CommandError}."""
        try:
            return succeed((A.from_text(target), None))
        except ValueError:
            pass
        try:
            ip = ipaddress.IPv4Address(target)
        except ValueError:
            return self._resolve_name(target).addCallback(self._resolve_ip)
        return self._resolve_ip(ip)

    def _resolve_ip(self, ip: ipaddress.IPv4Address) -> Deferred[tuple[int, str | None]]:
        if self.dht is None:
            raise CommandError("this node has no DHT to find the owner of an IP")
        if ip not in self.network.network:
            raise CommandError(f"{ip} is not in the virtual network {self.network.network}")

        def owner(entries: list[Any]) -> tuple[int, str]:
            owners = [e for e in entries if len(e.value) == A.SIZE and e.value == e.owner]
            if not owners:
                raise CommandError(f"no node holds a lease for {ip}")
            best = max(owners, key=lambda e: e.ttl_left)
            return A.from_bytes(best.owner), str(ip)

        def failed(f: Any) -> None:
            if f.check(CommandError):
                return f  # type: ignore[no-any-return]
            raise CommandError(f"cannot look up the lease of {ip}: {f.getErrorMessage()}")

        return maybeDeferred(self.dht.get, lease_key(self.network.network, ip)).addCallbacks(
            owner, failed)

    def _resolve_name(self, name: str) -> Deferred[ipaddress.IPv4Address]:
        if self.dns is None:
            raise CommandError(f"cannot resolve {name!r}: this node serves no DNS")
        domain = self.network.domain.strip(".")
        fqdn = name.rstrip(".")
        if not fqdn.endswith("." + domain) and fqdn != domain:
            fqdn = f"{fqdn}.{domain}"
        query = dns.Message(id=self.rng.getrandbits(16), recDes=1)
        query.queries = [dns.Query(fqdn.encode(), dns.A, dns.IN)]

        def parse(response: bytes | None) -> ipaddress.IPv4Address:
            if response is None:
                raise CommandError(f"the node's DNS did not answer for {fqdn}")
            m = dns.Message()
            m.fromStr(response)
            for rr in m.answers:
                if rr.type == dns.A:
                    return ipaddress.IPv4Address(rr.payload.dottedQuad())
            raise CommandError(f"{fqdn} does not resolve")

        return maybeDeferred(self.dns.answer, query.toStr(), self.network.gateway).addCallback(
            parse)
