"""
mxrecv: receive MX Telecom's SMS and MMS callbacks into a Maildir-like spool.

The path of a message: L{mxrecv.request} (the body, streamed) ->
L{mxrecv.params} (validation) -> L{mxrecv.spool} (durable, then the 200) ->
L{mxrecv.pending} (retrieval or unpacking of an MMS) -> C{new/}.
"""
