"""C{wow security}: the node's certificate, CRL and the secured state of each peer."""

from __future__ import annotations

import argparse
import time
from typing import Any

from wow.cli.main import EXIT_OK, add_json_option, add_socket_option, print_json


def format_security(answer: dict[str, Any], now: float | None = None) -> list[str]:
    """The human-readable lines for the C{security} control command's answer."""
    now = time.time() if now is None else now
    status = answer.get("status", {})
    lines = [f"security: {'on' if status.get('enabled') else 'off'} ({status.get('state')})"]
    cert = status.get("certificate")
    if cert:
        days = (cert["not_after"] - now) / 86400
        revoked = "  REVOKED" if cert.get("revoked") else ""
        lines.append(
            f"certificate: serial {cert['serial']}  {cert['subject']}  "
            f"expires in {days:.1f} days{revoked}"
        )
    crl = status.get("crl", {})
    if crl.get("number") is not None:
        lines.append(f"CRL: number {crl['number']}, {crl['revoked']} revoked")
    elif crl.get("url"):
        lines.append(f"CRL: none yet from {crl['url']}")
    if crl.get("error"):
        lines.append(f"CRL problem: {crl['error']}")
    peers = answer.get("peers", [])
    if peers:
        lines.append(f"{'PEER':<42} {'IP':<16} {'SECURED':<8} {'CIPHER':<32} SERIAL")
        for p in peers:
            lines.append(
                f"{p['peer']:<42} {p.get('peer_ip') or '-':<16} "
                f"{'yes' if p.get('secured') else 'no (' + str(p.get('state')) + ')':<8} "
                f"{p.get('cipher') or '-':<32} {p.get('serial') or '-'}"
            )
    return lines


def cmd_security(args: argparse.Namespace) -> int:
    from wow.cli.node import query

    answer = query(args, "security")
    if args.json:
        print_json(answer)
    else:
        print("\n".join(format_security(answer)))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "security", help="show the node's certificate, CRL and which peers are secured"
    )
    add_socket_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_security)
