"""
C{wow-ca}: the community certificate authority.

Nodes enrol over EST (RFC 7030) on the virtual network; each certificate is
bound to the virtual IP the request came from.  Signing is decided by a
pluggable policy (automatic, manual approval queue, or LDAP bind).  The
modules are split by job: configuration, CSR validation (sans-I/O), the
signer, the durable store, policies, the CRL, the EST web resources, the
twistd plugin, and the node-side EST client.
"""
