"""
The errors the packet codecs raise.

Every parser in L{wow.net} raises only its own subclass of L{CodecError} for
bad input, so a receive handler can catch exactly one type per layer, count
the drop with L{CodecError.reason} as the label, and keep serving.  Builders
raise the same subclass when asked to encode a value that does not fit the
wire format.
"""

from __future__ import annotations


class CodecError(ValueError):
    """
    Bad bytes (parse) or an unencodable value (build).

    @ivar reason: a short, stable, kebab-case label for counters and logs
        (C{"bad-checksum"}, C{"truncated"}, ...); the message is the sentence
        for humans.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class EthernetError(CodecError):
    """Raised by L{wow.net.ethernet} for a frame that is not valid Ethernet II."""


class ArpError(CodecError):
    """Raised by L{wow.net.arp} for a packet that is not Ethernet/IPv4 ARP."""


class IPv4Error(CodecError):
    """Raised by L{wow.net.ipv4} for a packet that is not a valid IPv4 datagram."""


class UDPError(CodecError):
    """Raised by L{wow.net.udp} for a datagram that is not valid UDP."""


class DHCPError(CodecError):
    """Raised by L{wow.net.dhcp} for a message that is not valid DHCP/BOOTP."""
