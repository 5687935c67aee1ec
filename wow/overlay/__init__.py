"""
The structured peer-to-peer overlay: a 160-bit ring of nodes over UDP.

Sans-I/O core (L{address}, L{identity}, L{wire}, L{ratelimit}, L{ring},
L{link}, L{node}, L{dht}) plus a thin Twisted adapter (L{service}) and an
in-memory simulator (L{sim}) that runs the same core for thousands of nodes.
"""
