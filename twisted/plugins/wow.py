"""twistd plugins for the WOW daemons (lazy: nothing is imported until used)."""

from twisted.application.service import ServiceMaker

wowNode = ServiceMaker(
    "WOW node",
    "wow.node.tap",
    "A WOW node: virtual NIC, DHCP for the host's own client, overlay membership.",
    "wow-node",
)

wowCA = ServiceMaker(
    "WOW CA",
    "wow.ca.tap",
    "A WOW community CA: EST enrolment bound to virtual IPs, auto/manual/LDAP approval, CRL.",
    "wow-ca",
)

wowDNS = ServiceMaker(
    "WOW DNS",
    "wow.dns.tap",
    "The WOW virtual domain over DNS: host names, derived names, PTR; forwards the rest.",
    "wow-dns",
)
