"""
The IP router: virtual IP packets between the TAP and the overlay.

Outbound, a packet read from the TAP for virtual IP X goes to the node that
holds X's lease (X → overlay address through the DHT, cached); inbound, a
packet from the overlay is written to the TAP only if its source IP is leased
to the overlay address that sent it.
"""
