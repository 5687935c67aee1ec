"""
WOW: a Wide-area Overlay of virtual Workstations.

Every Linux host that runs C{wow-node} joins a self-configuring peer-to-peer
overlay and gets a virtual network interface that its own, unmodified DHCP
client configures.
"""

__version__ = "0.1.0"
