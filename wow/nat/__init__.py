"""
NAT traversal logic (sans-I/O): knowing our own NAT, choosing candidates,
and scheduling hole-punching probes, birthday probing and relay fallback.

The overlay's link layer feeds these objects observations and events and
carries out the sends they ask for.
"""
