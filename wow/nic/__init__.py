"""
The virtual NIC: the TAP device, the ARP responder and the frame dispatcher
that hands DHCP to the DHCP server and IP packets to the router.
"""
