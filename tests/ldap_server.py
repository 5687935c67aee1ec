"""
An in-memory ldaptor directory (the LDIF of L{tests.test_ca_ldap}) as a
process, for tests that run wow-ca for real:

    python -m tests.ldap_server PORT
"""

from __future__ import annotations

import sys
from io import BytesIO


def main(port: int) -> None:
    from ldaptor import inmemory
    from twisted.internet import defer, task

    from tests.test_ca_ldap import LDIF, _Factory

    async def serve(reactor: object) -> None:
        root = await inmemory.fromLDIFFile(BytesIO(LDIF))
        reactor.listenTCP(port, _Factory(root), interface="127.0.0.1")  # type: ignore[attr-defined]
        print(f"ldap directory ready on 127.0.0.1:{port}", flush=True)
        await defer.Deferred()  # serve until killed

    task.react(lambda reactor: defer.ensureDeferred(serve(reactor)))


if __name__ == "__main__":
    main(int(sys.argv[1]))
