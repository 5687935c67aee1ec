"""
Network laboratories on one machine: namespaces, bridges, NAT routers.

Used by C{wow demo}, by the integration tests and by the benchmarks.  Every
object made is recorded and removed by L{wow.lab.netns.Lab.teardown}.
"""
