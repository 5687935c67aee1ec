"""
Packet codecs: pure parse/build functions and frozen dataclasses, no I/O.

  - L{wow.net.checksum} — the Internet checksum (RFC 1071).
  - L{wow.net.ethernet} — Ethernet II frames, one optional 802.1Q tag.
  - L{wow.net.arp} — ARP for Ethernet/IPv4 (RFC 826).
  - L{wow.net.ipv4} — IPv4 (RFC 791): header checksum, options, fragments
    recognised.
  - L{wow.net.udp} — UDP (RFC 768) with the pseudo-header checksum.
  - L{wow.net.dhcp} — DHCP/BOOTP (RFC 951, 2131, 2132) with option overload
    and long options (RFC 3396), relay agent information (RFC 3046).

Every C{parse_*} raises only its codec's subclass of
L{wow.net.errors.CodecError}, whose C{reason} is a short label for counters.
This package re-exports nothing: import the codec module you need.
"""
