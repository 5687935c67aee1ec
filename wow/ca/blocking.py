"""
A minimal blocking EST client (stdlib C{http.client} + C{ssl}).

For the benchmark and the crash test, which drive a wow-ca process from
plain threads and want each request's latency without a reactor in the
measurement.  Nodes use the Twisted client in L{wow.ca.client}.
"""

from __future__ import annotations

import base64
import http.client
import ssl
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wow.ca.client import make_csr


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def request_for(ip: str, hostname: str) -> bytes:
    """A fresh EC P-256 key's DER request for C{ip} (the key is thrown away)."""
    return make_csr(ec.generate_private_key(ec.SECP256R1()), hostname, ip)


class BlockingEst:
    """One HTTPS connection per request, from the request's own source address."""

    def __init__(self, host: str, port: int, ca_pem: bytes, timeout: float = 10) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.context = ssl.create_default_context(cadata=ca_pem.decode())

    def post(self, operation: str, csr_der: bytes, source_ip: str) -> Reply:
        conn = http.client.HTTPSConnection(
            self.host,
            self.port,
            timeout=self.timeout,
            source_address=(source_ip, 0),
            context=self.context,
        )
        try:
            conn.request(
                "POST",
                f"/.well-known/est/{operation}",
                base64.encodebytes(csr_der),
                {"Content-Type": "application/pkcs10"},
            )
            response = conn.getresponse()
            return Reply(response.status, response.read())
        finally:
            conn.close()


def fetch_ca_pem(host: str, port: int, timeout: float = 10) -> bytes:
    """The CA certificate from /cacerts, without verification (bootstrap only)."""
    from wow.ca.issue import parse_est_certs

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        conn.request("GET", "/.well-known/est/cacerts")
        body = conn.getresponse().read()
    finally:
        conn.close()
    return parse_est_certs(body)[0].public_bytes(serialization.Encoding.PEM)
