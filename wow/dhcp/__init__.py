"""
The DHCP server that answers the host's own, unmodified DHCP client on the
TAP, and the allocators it takes leases from.
"""
