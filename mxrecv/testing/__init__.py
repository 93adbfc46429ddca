"""
Stand-ins for MX Telecom, shipped as test doubles the way C{treq.testing} is,
and used by the tests and the benchmarks alike: L{sim} sends callbacks and
serves RetrieveMMS.
"""
