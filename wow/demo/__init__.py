"""
C{wow demo}: a WOW built in network namespaces on this machine.

L{wow.demo.topology} builds the pieces (a namespace per node, its wow-node,
the host's real DHCP client); L{wow.demo.clients} holds the scripts the real
DHCP clients run to apply their lease.  Later issues grow the topology into
several sites behind NATs.
"""
