"""
mxrecv: receive MX Telecom's SMS and MMS callbacks into a Maildir-like spool.

The subpackages follow a message's path:

    web/      the HTTP edge: who may call, the body streamed, the answer
    message/  the callback's parameters validated into a L{Message}
    spool/    durable storage, then the 200; the seen-id index
    mms/      an MMS completed off the request path: retrieved, unpacked
    deliver/  each message in C{new/} handed to the application
    tls/      certificates, their checks and reloading
    ops/      the admin listener, metrics, logs, the C{mxrecv} command
    testing/  stand-ins for MX Telecom, for tests and benchmarks

L{mxrecv.tap} composes them into the twistd plugin's service;
L{mxrecv.interfaces} names the reactor interfaces that parts need together.
"""
